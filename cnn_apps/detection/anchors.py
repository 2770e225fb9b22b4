"""Anchors: SSD default boxes, Faster R-CNN's RPN anchors, and the YOLO grid.

All boxes are ``xyxy`` in absolute pixels, float32, returned as NumPy arrays (they are
constants of a model, baked into its graph). The order of anchors matches a head's
output reshaped from (B, H, W, k * D) to (B, H * W * k, D): row-major over the feature
map (y, then x), then the k boxes of a location.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def ssd_scales(
    num_maps: int, s_min: float = 0.2, s_max: float = 0.9, first: float | None = 0.1
) -> list[float]:
    """The paper's box scales: ``s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)``, one per map
    plus one more (the extra aspect-1 box of the last map uses ``sqrt(s_m s_{m+1})``).

    ``first``: SSD300 gives conv4_3 its own smaller scale (0.1) and spreads s_min..s_max
    over the other maps; None spreads them over all maps as in the paper's equation.
    """
    if num_maps < 1:
        raise ValueError("need at least one feature map")
    rest = num_maps - 1 if first is not None else num_maps
    if rest <= 1:
        spread = [s_min] * rest
    else:
        spread = [s_min + (s_max - s_min) * k / (rest - 1) for k in range(rest)]
    scales = ([first] if first is not None else []) + spread
    step = (s_max - s_min) / max(rest - 1, 1)
    return scales + [min(1.0, scales[-1] + step)]


def ssd_default_boxes(
    image_size: int,
    feature_sizes: Sequence[int],
    aspect_ratios: Sequence[Sequence[float]],
    scales: Sequence[float] | None = None,
    clip: bool = True,
) -> np.ndarray:
    """SSD default boxes for a square input: (A, 4) xyxy pixels.

    Each location of map k gets: aspect 1 at scale ``s_k``, aspect 1 at ``sqrt(s_k s_{k+1})``,
    then for every ``r`` in ``aspect_ratios[k]`` (r > 1) the pair ``r`` and ``1/r`` with width
    ``s_k sqrt(r)`` and height ``s_k / sqrt(r)``. ``aspect_ratios=[[2], [2, 3], ...]`` gives
    4 and 6 boxes per location as in SSD300. Centres sit at ``((j + 0.5) / f_k, (i + 0.5) / f_k)``.
    """
    if len(aspect_ratios) != len(feature_sizes):
        raise ValueError("one aspect-ratio list per feature map is needed")
    scales = list(scales) if scales is not None else ssd_scales(len(feature_sizes))
    if len(scales) != len(feature_sizes) + 1:
        raise ValueError(f"need {len(feature_sizes) + 1} scales (one per map plus one), got {len(scales)}")
    out = []
    for k, (f, ratios) in enumerate(zip(feature_sizes, aspect_ratios)):
        s, s_next = scales[k], scales[k + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in ratios:
            shapes += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        wh = np.asarray(shapes, np.float64)  # (k, 2) relative
        centres = (np.arange(f) + 0.5) / f
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        c = np.stack([cx, cy], -1).reshape(-1, 1, 2)  # (f*f, 1, 2)
        boxes = np.concatenate([c - wh / 2, c + wh / 2], -1).reshape(-1, 4)
        out.append(boxes)
    boxes = np.concatenate(out) * image_size
    if clip:
        boxes = np.clip(boxes, 0, image_size)
    return boxes.astype(np.float32)


def boxes_per_location(aspect_ratios: Sequence[float]) -> int:
    """SSD: 2 aspect-1 boxes plus 2 per ratio r > 1 (r and 1/r)."""
    return 2 + 2 * len(aspect_ratios)


class AnchorGenerator:
    """Faster R-CNN's RPN anchors: ``len(sizes) * len(aspect_ratios)`` per location.

    ``sizes`` are square roots of anchor areas in pixels (the paper's 128, 256, 512),
    ``aspect_ratios`` are height / width (0.5, 1, 2). Anchors are centred on each
    feature-map cell (``stride`` pixels apart) and not clipped (the RPN drops or clips
    them as it needs).
    """

    def __init__(
        self, sizes: Sequence[float] = (128, 256, 512), aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    ):
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)

    @property
    def num_anchors(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def cell_anchors(self) -> np.ndarray:
        """(k, 4) anchors centred on (0, 0)."""
        out = []
        for r in self.aspect_ratios:
            for s in self.sizes:
                w, h = s / math.sqrt(r), s * math.sqrt(r)
                out.append([-w / 2, -h / 2, w / 2, h / 2])
        return np.asarray(out, np.float32)

    def __call__(self, feature_height: int, feature_width: int, stride: float) -> np.ndarray:
        """(H * W * k, 4) xyxy pixels."""
        ys = (np.arange(feature_height) + 0.5) * stride
        xs = (np.arange(feature_width) + 0.5) * stride
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        shifts = np.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        return (shifts + self.cell_anchors()[None]).reshape(-1, 4).astype(np.float32)

    def get_config(self):
        return {"sizes": self.sizes, "aspect_ratios": self.aspect_ratios}


def yolo_cell_offsets(grid: int) -> np.ndarray:
    """(S * S, 2) top-left corners (x, y) of the grid cells, in cells, row-major."""
    cy, cx = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.stack([cx, cy], -1).reshape(-1, 2).astype(np.float32)
