"""Boxes: format conversion, IoU, and the box coder (encode/decode regression deltas).

The library's canonical box is ``xyxy`` in absolute pixels, float32: pixel ``i`` covers
``[i, i + 1)``, so width = ``x2 - x1`` (no +1). Batched targets are
``{"boxes": (B, N, 4), "labels": (B, N)}`` padded with -1. Conversion and IoU come from
Keras 3 (``keras.utils.bounding_boxes``); this module adds what it lacks: validity masks
for padded boxes, clipped decoding and a coder object that detectors share. Everything
is written with ``keras.ops`` and runs under the TensorFlow and the JAX backend.
"""

from __future__ import annotations

import math

import keras
from keras import ops
from keras.utils import bounding_boxes as kbb

# Largest log-scale delta applied when decoding (torchvision's log(1000 / 16)): keeps
# exp() finite for a badly trained regressor.
DEFAULT_SCALE_CLIP = math.log(1000.0 / 16)


def convert(boxes, source: str, target: str):
    """Convert ``(..., 4)`` boxes between Keras' formats (``xyxy``, ``yxyx``, ``xywh``,
    ``center_xywh``, ``center_yxhw``), all in absolute pixels."""
    if source == target:
        return boxes
    return kbb.convert_format(boxes, source=source, target=target)


def pairwise_iou(boxes1, boxes2):
    """IoU of every pair: boxes1 (..., N, 4), boxes2 (..., M, 4) xyxy -> (..., N, M).

    Any number of leading (batch) axes; Keras' ``compute_iou`` takes at most one, so this
    is written out. Padded (all -1) or empty boxes have zero area and give IoU 0.
    """
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    iw = ops.maximum(ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = ops.maximum(ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    union = area(boxes1)[..., :, None] + area(boxes2)[..., None, :] - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1e-9), 0.0)


def area(boxes):
    """(..., 4) xyxy -> (...,); negative extents count as zero."""
    w = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def valid_mask(labels):
    """(B, N) labels padded with -1 -> (B, N) bool, True for real boxes."""
    return ops.greater_equal(labels, 0)


def clip_to_image(boxes, height, width):
    """Clip (..., 4) xyxy pixel boxes to ``[0, width] x [0, height]``."""
    x1 = ops.clip(boxes[..., 0], 0.0, width)
    y1 = ops.clip(boxes[..., 1], 0.0, height)
    x2 = ops.clip(boxes[..., 2], 0.0, width)
    y2 = ops.clip(boxes[..., 3], 0.0, height)
    return ops.stack([x1, y1, x2, y2], axis=-1)


@keras.saving.register_keras_serializable(package="cnn_apps")
class BoxCoder:
    """Encode boxes as deltas relative to anchors, and back (R-CNN parameterisation).

    ``t_x = w_x (x - x_a) / w_a``, ``t_y = w_y (y - y_a) / h_a``, ``t_w = w_w log(w / w_a)``,
    ``t_h = w_h log(h / h_a)`` on box centres and sizes; ``weights`` (w_x, w_y, w_w, w_h)
    are Fast R-CNN's (10, 10, 5, 5) or SSD's "variances" (0.1, 0.1, 0.2, 0.2) inverted.
    Decoding clips ``t_w, t_h`` at ``scale_clip`` before the exponential.

    anchors (A, 4) or (B, A, 4), boxes (B, A, 4) or (A, 4): xyxy pixels.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), scale_clip: float = DEFAULT_SCALE_CLIP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clip = float(scale_clip)

    @property
    def _variance(self):
        return [1.0 / w for w in self.weights]

    def encode(self, boxes, anchors):
        """Deltas (..., A, 4) that turn ``anchors`` into ``boxes``."""
        return kbb.encode_box_to_deltas(
            anchors,
            boxes,
            anchor_format="xyxy",
            box_format="xyxy",
            encoding_format="center_xywh",
            variance=self._variance,
        )

    def decode(self, deltas, anchors):
        """Boxes (..., A, 4) xyxy pixels from ``deltas`` applied to ``anchors``."""
        # clip the size deltas in weighted units, i.e. log-scale <= scale_clip after unweighting
        limit = ops.convert_to_tensor(
            [math.inf, math.inf, self.scale_clip * self.weights[2], self.scale_clip * self.weights[3]],
            dtype=deltas.dtype,
        )
        deltas = ops.minimum(deltas, limit)
        return kbb.decode_deltas_to_boxes(
            anchors,
            deltas,
            anchor_format="xyxy",
            box_format="xyxy",
            encoded_format="center_xywh",
            variance=self._variance,
        )

    def get_config(self):
        return {"weights": self.weights, "scale_clip": self.scale_clip}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
