"""The geometry R-CNN and SPP-net share (:mod:`cnn_apps.detection.rcnn`,
:mod:`cnn_apps.detection.sppnet`): the context window a proposal is warped from and the warp
itself (:func:`context_window`, :func:`warp_regions`), fine-tuning labels of proposals
(:func:`assign_labels`), and the box deltas between proposals and boxes
(:func:`encode_deltas`, :func:`decode_deltas`).

Shorthand: P proposals of an image, W warp side. Boxes are ``xyxy`` float32 pixels; labels
are 0-based classes (the fine-tuned classifier adds background as its class 0, so class
``k`` is its output ``k + 1``).
"""

from __future__ import annotations

import numpy as np

from cnn_apps.detection.proposals import box_iou

PAPER_WARP = 227  # R-CNN's warp size: the 16 px context padding is relative to it


# ------------------------------------------------------------------------------- geometry
def context_window(boxes, warp_size: int, context_padding: float = 16.0) -> np.ndarray:
    """The image window each box is warped from: the box dilated so that, once warped to
    ``warp_size``, exactly ``p = context_padding * warp_size / 227`` pixels of context
    surround it on every side (R-CNN's "p = 16" at its 227 px warp, scaled).
    boxes (P, 4) -> windows (P, 4) xyxy (may reach outside the image)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    p = float(context_padding) * warp_size / PAPER_WARP
    inner = max(warp_size - 2 * p, 1e-6)  # the box occupies the central `inner` pixels
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    dx, dy = p * w / inner, p * h / inner
    return np.stack([boxes[:, 0] - dx, boxes[:, 1] - dy, boxes[:, 2] + dx, boxes[:, 3] + dy], axis=-1)


def warp_regions(image, boxes, warp_size: int, context_padding: float = 16.0) -> np.ndarray:
    """Crop + anisotropic resize of every box (with context) to ``warp_size``, bilinear
    (OpenCV ``warpAffine``); pixels outside the image take the image's mean colour (R-CNN
    fills them with the mean). image (H, W, 3), boxes (P, 4) -> (P, W, W, 3) uint8."""
    import cv2

    image = np.ascontiguousarray(np.asarray(image, np.uint8))
    windows = context_window(boxes, warp_size, context_padding)
    fill = tuple(float(v) for v in image.reshape(-1, image.shape[-1]).mean(0))
    out = np.empty((len(windows), warp_size, warp_size, image.shape[-1]), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(windows):
        sx, sy = (x1 - x0) / warp_size, (y1 - y0) / warp_size
        # output pixel centre u + 0.5 -> image coordinate x0 + (u + 0.5) sx; OpenCV's pixel
        # centres sit at integers, hence the - 0.5 on both sides
        matrix = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
        out[i] = cv2.warpAffine(
            image,
            matrix,
            (warp_size, warp_size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=fill,
        ).reshape(out.shape[1:])
    return out


def assign_labels(proposals, gt_boxes, gt_labels, fg_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Fine-tuning labels: 1 + the class of the best-overlapping object where IoU >= ``fg_iou``,
    else 0 (background). -> (labels (P,) int64, max IoU (P,))."""
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    if len(gt_boxes) == 0:
        return np.zeros(len(proposals), np.int64), np.zeros(len(proposals), np.float32)
    iou = box_iou(proposals, gt_boxes)
    best = iou.argmax(1)
    overlap = iou.max(1)
    labels = np.where(overlap >= fg_iou, np.asarray(gt_labels, np.int64)[best] + 1, 0)
    return labels.astype(np.int64), overlap


def encode_deltas(boxes, proposals) -> np.ndarray:
    """The BoxCoder's (R-CNN) deltas turning ``proposals`` (P, 4) into ``boxes`` (P, 4) -> (P, 4)."""
    from cnn_apps.detection.boxes import BoxCoder

    if len(proposals) == 0:
        return np.zeros((0, 4), np.float32)
    return np.asarray(
        BoxCoder().encode(np.asarray(boxes, np.float32), np.asarray(proposals, np.float32)), np.float32
    )


def decode_deltas(deltas, proposals) -> np.ndarray:
    from cnn_apps.detection.boxes import BoxCoder

    if len(proposals) == 0:
        return np.zeros((0, 4), np.float32)
    return np.asarray(
        BoxCoder().decode(np.asarray(deltas, np.float32), np.asarray(proposals, np.float32)), np.float32
    )
