"""Region proposals by selective search (OpenCV contrib), for R-CNN, SPP-net and Fast R-CNN.

Shorthand: H W image, P proposals, N images. Boxes are ``xyxy`` float32 pixels (OpenCV's
``x, y, w, h`` rectangles become ``x, y, x + w, y + h``: pixel ``i`` covers ``[i, i + 1)``).
Proposals keep OpenCV's order, which is its ranking: each region gets
``rank = random * hierarchy level`` and the lowest ranks come first, so the first boxes
mix small and large regions and truncating to the top K is meaningful. The random numbers
come from C's ``rand()``; :func:`selective_search` seeds it (``seed``) so the same image
gives the same list (on Linux and macOS, where ``srand`` is reachable through ctypes; the
seed is process-wide, so searches in parallel Python threads are not repeatable).

Measured on shapes images (``make_scene(0, "test", i, size, "detection")``, i = 0..19:
1-4 objects of 8-20 % of the side, 47 ground-truth boxes in all; one OpenCV thread on a
2-core CPU shared with other jobs, so times are rough; ``min_size=2``, ``seed=0``,
``max_proposals=None``):

===========================  =========  =========  ==================  ==================
image, mode                  s / image  proposals  recall@0.5 top 100  recall@0.7 top 100
                                        (mean)     / 500 / 2000        / 500 / 2000
===========================  =========  =========  ==================  ==================
96 x 96, fast                0.04         89       0.94 / 0.94 / 0.94  0.94 / 0.94 / 0.94
96 x 96, quality             0.12        191       0.96 / 0.98 / 0.98  0.91 / 0.96 / 0.96
96 x 96, fast, scale=2       0.15        175       1.00 / 1.00 / 1.00  0.98 / 0.98 / 0.98
300 x 300, fast              0.45        366       0.98 / 1.00 / 1.00  0.96 / 1.00 / 1.00
300 x 300, quality           1.54        979       0.98 / 1.00 / 1.00  0.94 / 1.00 / 1.00
300 x 300, fast, scale=0.5   0.09        118       0.98 / 0.98 / 0.98  0.98 / 0.98 / 0.98
===========================  =========  =========  ==================  ==================

(:func:`proposal_recall` computes these; the figures come from running it on those 20
images per setting.) ``scale`` < 1 shrinks the image before the search (faster, coarser
boxes, scaled back); ``scale`` > 1 can help tiny images.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterable

import numpy as np

from cnn_apps.errors import ConfigError, DataError

MODES = ("fast", "quality", "single")
FIX = (
    "pip install opencv-contrib-python-headless (and uninstall opencv-python / opencv-python-headless, "
    "which provide cv2 without the contrib modules)"
)


def _opencv():
    """cv2 with the contrib ``ximgproc`` module, or a ConfigError naming the fix."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - cv2 is a dependency
        raise ConfigError(f"selective search needs OpenCV with the contrib modules: {FIX}") from exc
    segmentation = getattr(getattr(cv2, "ximgproc", None), "segmentation", None)
    if segmentation is None or not hasattr(segmentation, "createSelectiveSearchSegmentation"):
        raise ConfigError(
            f"selective search needs cv2.ximgproc (OpenCV contrib), but cv2 {cv2.__version__} "
            f"from {getattr(cv2, '__file__', '?')} has no ximgproc module: {FIX}"
        )
    return cv2


@contextlib.contextmanager
def opencv_threads(num_threads: int | None):
    """Run OpenCV with ``num_threads`` threads (None: leave its setting; 0 or 1: no threading)
    and restore the previous count afterwards."""
    cv2 = _opencv()
    if num_threads is None:
        yield
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(int(num_threads))
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _seed_c_rand(seed: int) -> None:
    """OpenCV's selective search ranks regions with C's rand(); seed it for repeatable output."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.srand(ctypes.c_uint(int(seed) & 0xFFFFFFFF))
    except (OSError, AttributeError, TypeError):  # pragma: no cover - no reachable libc (Windows)
        pass


def _as_rgb_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 2:
        raise DataError(f"selective search needs an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def selective_search(
    image,
    mode: str = "fast",
    max_proposals: int | None = 2000,
    min_size: float = 2.0,
    scale: float = 1.0,
    num_threads: int | None = None,
    seed: int | None = 0,
    base_k: int = 150,
    inc_k: int = 150,
    sigma: float = 0.8,
) -> np.ndarray:
    """Selective search proposals of one image.

    image (H, W, 3) RGB (uint8, or 0..255 floats; gray (H, W) or (H, W, 1) is repeated)
    -> (P, 4) float32 xyxy pixels in OpenCV's ranked order, P <= ``max_proposals``.

    ``mode``: OpenCV's ``fast`` (HSV and Lab, k = base_k, +inc_k, +2 inc_k, 2 strategies),
    ``quality`` (5 colour spaces, 5 values of k, 4 strategies) or ``single`` (one
    segmentation with k = base_k). Boxes narrower or shorter than ``min_size`` pixels (in
    the original image) are dropped, as are duplicates (after scaling back). ``scale``
    resizes the image before the search; the boxes are scaled back and clipped to the
    image. ``num_threads`` is OpenCV's thread count for the call (see :func:`opencv_threads`).
    ``seed`` seeds the ranking's random numbers (None: leave them alone).
    """
    if mode not in MODES:
        raise ConfigError(f"selective search mode must be one of {MODES}, got {mode!r}")
    if scale <= 0:
        raise ConfigError(f"selective search scale must be positive, got {scale}")
    cv2 = _opencv()
    rgb = _as_rgb_uint8(image)
    height, width = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale != 1.0:
        size = (max(int(round(width * scale)), 2), max(int(round(height * scale)), 2))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    with opencv_threads(num_threads):
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(bgr)
        if mode == "fast":
            search.switchToSelectiveSearchFast(base_k, inc_k, sigma)
        elif mode == "quality":
            search.switchToSelectiveSearchQuality(base_k, inc_k, sigma)
        else:
            search.switchToSingleStrategy(base_k, sigma)
        if seed is not None:
            _seed_c_rand(seed)
        rects = np.asarray(search.process(), np.float64).reshape(-1, 4)
    sx, sy = bgr.shape[1] / width, bgr.shape[0] / height
    boxes = np.stack(
        [
            rects[:, 0] / sx,
            rects[:, 1] / sy,
            (rects[:, 0] + rects[:, 2]) / sx,
            (rects[:, 1] + rects[:, 3]) / sy,
        ],
        axis=-1,
    )
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= max(min_size, 1e-6)) & (
        (boxes[:, 3] - boxes[:, 1]) >= max(min_size, 1e-6)
    )
    boxes = boxes[keep]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]  # dedupe, keeping the first (best-ranked) copy
    if max_proposals is not None:
        boxes = boxes[:max_proposals]
    return np.ascontiguousarray(boxes, np.float32)


def proposals_for_dataset(images: Iterable, num_threads: int | None = None, **kwargs) -> list[np.ndarray]:
    """Selective search over images (any iterable of (H, W, 3) arrays or tensors) ->
    a list of (P_i, 4) float32 arrays; ``kwargs`` go to :func:`selective_search`."""
    with opencv_threads(num_threads):
        return [selective_search(np.asarray(image), **kwargs) for image in images]


def pad_proposals(proposals: list[np.ndarray], max_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-image proposals into (N, max_count, 4) float32, padded with -1 (the
    library's padding) and truncated to the best ``max_count``, plus counts (N,) int32."""
    out = np.full((len(proposals), max_count, 4), -1.0, np.float32)
    counts = np.zeros(len(proposals), np.int32)
    for i, boxes in enumerate(proposals):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)[:max_count]
        out[i, : len(boxes)] = boxes
        counts[i] = len(boxes)
    return out, counts


def box_iou(a, b) -> np.ndarray:
    """(N, 4), (M, 4) xyxy -> (N, M) IoU, float32 (NumPy; the graph's is boxes.pairwise_iou)."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def proposal_recall(
    proposals: list[np.ndarray],
    gt_boxes: list[np.ndarray],
    iou_threshold: float = 0.5,
    top_k: int | None = None,
) -> float:
    """Fraction of ground-truth boxes (all images together) that some proposal among the
    first ``top_k`` of its image overlaps with IoU >= ``iou_threshold``."""
    found = total = 0
    for boxes, gt in zip(proposals, gt_boxes):
        gt = np.asarray(gt, np.float32).reshape(-1, 4)
        gt = gt[(gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])]  # drop -1 padding
        total += len(gt)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)[:top_k]
        if len(gt) and len(boxes):
            found += int((box_iou(gt, boxes).max(1) >= iou_threshold).sum())
    return found / total if total else 1.0
