"""Per-class non-maximum suppression with a fixed-size, padded output, inside the graph.

Two implementations with the same contract:

* :func:`tf_combined_nms` wraps TensorFlow's ``tf.image.combined_non_max_suppression``:
  the one TF-only op of the single-shot detectors, used under the TensorFlow backend
  (and so in every exported SavedModel). It wants ``yxyx`` boxes; the conversion
  happens here and nowhere else.
* :func:`portable_nms` is written with ``keras.ops`` (greedy NMS over the top-k
  candidates of each class, a fixed number of steps), so detectors also run under JAX.
* :func:`numpy_nms` is the same greedy NMS in NumPy, outside any graph: for the heads that
  post-process in NumPy (R-CNN's and SPP-net's SVMs) where TensorFlow is not installed.

Both return a dict: ``boxes`` (B, K, 4) xyxy pixels, ``scores`` (B, K), ``labels`` (B, K)
int32, ``num_detections`` (B,) int32, sorted by score, padded with boxes 0, scores 0 and
labels -1 after ``num_detections``.
"""

from __future__ import annotations

import keras
from keras import ops

from cnn_apps.detection.boxes import pairwise_iou


def batched_nms(
    boxes,
    scores,
    *,
    max_detections: int = 100,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    pre_nms_top_k: int = 400,
    implementation: str = "auto",
):
    """boxes (B, A, 4) xyxy pixels (shared by all classes), scores (B, A, C) per-class
    scores (no background column) -> padded detections (see the module docstring).
    ``implementation``: ``auto`` (``tf`` under the TensorFlow backend, else ``portable``),
    ``tf``, ``portable`` or ``numpy``."""
    if implementation == "auto":
        implementation = "tf" if keras.backend.backend() == "tensorflow" else "portable"
    impl = {"tf": tf_combined_nms, "portable": portable_nms, "numpy": numpy_nms}.get(implementation)
    if impl is not None:
        return impl(
            boxes,
            scores,
            max_detections=max_detections,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            pre_nms_top_k=pre_nms_top_k,
        )
    raise ValueError(f"unknown NMS implementation {implementation!r} (auto, tf, portable, numpy)")


def tf_combined_nms(boxes, scores, *, max_detections, iou_threshold, score_threshold, pre_nms_top_k):
    """TensorFlow's combined NMS (TF backend only). ``pre_nms_top_k`` caps the candidates
    each class keeps before suppression, as in the portable version."""
    import tensorflow as tf

    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    yxyx = tf.gather(boxes, [1, 0, 3, 2], axis=-1)[:, :, None, :]
    nboxes, nscores, nclasses, valid = tf.image.combined_non_max_suppression(
        yxyx,
        scores,
        max_output_size_per_class=min(pre_nms_top_k, max_detections),
        max_total_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,
    )
    keep = tf.range(max_detections)[None, :] < valid[:, None]
    return {
        "boxes": tf.where(keep[..., None], tf.gather(nboxes, [1, 0, 3, 2], axis=-1), 0.0),
        "scores": tf.where(keep, nscores, 0.0),
        "labels": tf.where(keep, tf.cast(nclasses, tf.int32), -1),
        "num_detections": tf.cast(valid, tf.int32),
    }


def portable_nms(boxes, scores, *, max_detections, iou_threshold, score_threshold, pre_nms_top_k):
    """Greedy per-class NMS in ``keras.ops``: per class the ``pre_nms_top_k`` best candidates
    above ``score_threshold``, suppressed in score order, then the best ``max_detections``
    over all classes."""
    batch = ops.shape(scores)[0]
    num_anchors, num_classes = scores.shape[1], scores.shape[2]
    k = int(min(pre_nms_top_k, num_anchors))
    per_class = ops.transpose(scores, (0, 2, 1))  # (B, C, A)
    top_scores, top_idx = ops.top_k(per_class, k=k, sorted=True)  # (B, C, k)
    flat_idx = ops.reshape(top_idx, (batch, num_classes * k))
    cand = ops.take_along_axis(
        boxes, ops.broadcast_to(flat_idx[..., None], ops.shape(flat_idx) + (4,)), axis=1
    )
    cand = ops.reshape(cand, (batch, num_classes, k, 4))
    iou = pairwise_iou(cand, cand)  # (B, C, k, k)
    alive = top_scores > score_threshold
    later = ops.triu(ops.ones((k, k), "bool"), k=1)  # j after i
    overlaps = ops.logical_and(iou > iou_threshold, later)

    def step(i, keep):
        # candidate i survives if it is alive and not suppressed by an earlier kept one
        row = ops.take(overlaps, i, axis=2)  # (B, C, k): does i suppress j?
        keep_i = ops.take(keep, i, axis=2)  # (B, C)
        suppress = ops.logical_and(row, keep_i[..., None])
        return ops.logical_and(keep, ops.logical_not(suppress))

    keep = ops.fori_loop(0, k, step, alive)
    final = ops.where(keep, top_scores, -1.0)
    final = ops.reshape(final, (batch, num_classes * k))
    labels = ops.reshape(
        ops.broadcast_to(ops.arange(num_classes, dtype="int32")[:, None], (num_classes, k)), (-1,)
    )
    out_scores, out_idx = ops.top_k(final, k=min(max_detections, num_classes * k), sorted=True)
    out_boxes = ops.take_along_axis(
        ops.reshape(cand, (batch, num_classes * k, 4)),
        ops.broadcast_to(out_idx[..., None], ops.shape(out_idx) + (4,)),
        axis=1,
    )
    out_labels = ops.take(labels, out_idx)
    valid = out_scores > 0
    pad = max_detections - out_scores.shape[1]
    out = {
        "boxes": ops.where(valid[..., None], out_boxes, 0.0),
        "scores": ops.where(valid, out_scores, 0.0),
        "labels": ops.where(valid, out_labels, -1),
    }
    if pad > 0:
        out = {
            "boxes": ops.pad(out["boxes"], [[0, 0], [0, pad], [0, 0]]),
            "scores": ops.pad(out["scores"], [[0, 0], [0, pad]]),
            "labels": ops.pad(out["labels"], [[0, 0], [0, pad]], constant_values=-1),
        }
    out["num_detections"] = ops.sum(ops.cast(out["labels"] >= 0, "int32"), axis=-1)
    return out


def numpy_nms(boxes, scores, *, max_detections, iou_threshold, score_threshold, pre_nms_top_k):
    """Greedy per-class NMS in NumPy with TensorFlow's combined-NMS contract: per class the
    candidates above ``score_threshold`` in score order, each suppressed by an earlier kept one
    of IoU above ``iou_threshold``, at most ``min(pre_nms_top_k, max_detections)`` kept per
    class, then the best ``max_detections`` over all classes."""
    import numpy as np

    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    batch, _, num_classes = scores.shape
    per_class = min(pre_nms_top_k, max_detections)
    out = {
        "boxes": np.zeros((batch, max_detections, 4), np.float32),
        "scores": np.zeros((batch, max_detections), np.float32),
        "labels": np.full((batch, max_detections), -1, np.int32),
        "num_detections": np.zeros(batch, np.int32),
    }
    for b in range(batch):
        kept_scores, kept_labels, kept_idx = [], [], []
        for c in range(num_classes):
            s = scores[b, :, c]
            order = np.flatnonzero(s > score_threshold)
            order = order[np.argsort(-s[order], kind="stable")]
            keep = _greedy(boxes[b], order, iou_threshold, per_class)
            kept_scores.append(s[keep])
            kept_labels.append(np.full(len(keep), c, np.int32))
            kept_idx.append(keep)
        all_scores = np.concatenate(kept_scores)
        best = np.argsort(-all_scores, kind="stable")[:max_detections]
        n = len(best)
        out["scores"][b, :n] = all_scores[best]
        out["labels"][b, :n] = np.concatenate(kept_labels)[best]
        out["boxes"][b, :n] = boxes[b, np.concatenate(kept_idx)[best]]
        out["num_detections"][b] = n
    return out


def _greedy(boxes, order, iou_threshold: float, limit: int):
    """Indices from ``order`` (score order) that no earlier kept box overlaps above the threshold."""
    import numpy as np

    from cnn_apps.detection.proposals import box_iou

    keep = []
    remaining = order
    while len(remaining) and len(keep) < limit:
        i, rest = remaining[0], remaining[1:]
        keep.append(i)
        remaining = rest[box_iou(boxes[i], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, np.int64)
