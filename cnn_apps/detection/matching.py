"""Matching anchors to ground truth, and choosing which anchors train.

Boxes are ``xyxy`` pixels; ground truth arrives padded: ``gt_boxes`` (B, N, 4),
``gt_labels`` (B, N) with -1 on padded rows. Everything is ``keras.ops`` (TensorFlow
and JAX backends) and shape-static, so it runs inside a compiled train step.
"""

from __future__ import annotations

from keras import ops

from cnn_apps.detection.boxes import pairwise_iou, valid_mask
from cnn_apps.replicas import replica_rows

NEGATIVE = -1  # matched index of an anchor that is background
IGNORE = -2  # matched index of an anchor that is neither (between the thresholds): no loss


class Matcher:
    """IoU matcher (torchvision's ``Matcher``).

    Each anchor takes the ground-truth box it overlaps most. IoU ≥ ``high`` → that box;
    IoU < ``low`` → :data:`NEGATIVE`; in between → :data:`IGNORE` (``low=None`` means
    ``low = high``: no ignore band). ``force_best`` additionally gives every ground-truth
    box the anchor that overlaps it most, whatever the IoU (SSD's and Faster R-CNN's
    "low-quality" matches), so no object is left without a predictor.
    """

    def __init__(self, high: float = 0.5, low: float | None = None, force_best: bool = True):
        if low is not None and low > high:
            raise ValueError(f"low threshold {low} above high threshold {high}")
        self.high = float(high)
        self.low = float(high if low is None else low)
        self.force_best = bool(force_best)

    def __call__(self, anchors, gt_boxes, gt_labels):
        """anchors (A, 4) or (B, A, 4) -> (matched (B, A) int32, iou (B, A) of the match)."""
        valid = valid_mask(gt_labels)  # (B, N)
        if len(anchors.shape) == 2:
            anchors = ops.broadcast_to(anchors[None], (ops.shape(gt_boxes)[0],) + tuple(anchors.shape))
        iou = pairwise_iou(anchors, gt_boxes)  # (B, A, N)
        iou = ops.where(valid[:, None, :], iou, -1.0)
        best = ops.cast(ops.argmax(iou, axis=-1), "int32")  # (B, A)
        best_iou = ops.max(iou, axis=-1)
        matched = ops.where(best_iou >= self.high, best, ops.where(best_iou < self.low, NEGATIVE, IGNORE))
        if self.force_best:
            # (B, N): the anchor each ground-truth box overlaps most
            best_anchor = ops.argmax(iou, axis=1)
            hit = ops.one_hot(best_anchor, ops.shape(iou)[1], axis=1)  # (B, A, N)
            hit = (
                hit
                * ops.cast(valid[:, None, :], hit.dtype)
                * ops.cast(ops.max(iou, axis=1, keepdims=True) > 0, hit.dtype)
            )
            forced = ops.max(hit, axis=-1) > 0
            forced_gt = ops.cast(ops.argmax(hit, axis=-1), "int32")
            matched = ops.where(forced, forced_gt, matched)
            best_iou = ops.where(
                forced, ops.take_along_axis(iou, forced_gt[..., None], axis=-1)[..., 0], best_iou
            )
        matched = ops.where(ops.any(valid, axis=-1, keepdims=True), matched, NEGATIVE)
        return ops.cast(matched, "int32"), best_iou


def gather_matched(gt_boxes, gt_labels, matched):
    """Targets per anchor: boxes (B, A, 4) (zeros where unmatched) and labels (B, A)
    (the class for matches, -1 background, -2 ignore)."""
    idx = ops.maximum(matched, 0)
    boxes = ops.take_along_axis(gt_boxes, ops.broadcast_to(idx[..., None], ops.shape(idx) + (4,)), axis=1)
    labels = ops.take_along_axis(gt_labels, idx, axis=1)
    positive = matched >= 0
    boxes = ops.where(positive[..., None], boxes, 0.0)
    labels = ops.where(positive, ops.cast(labels, "int32"), ops.cast(matched, "int32"))
    return boxes, labels


def hard_negative_mining(loss, positive, negative, ratio: float = 3.0):
    """SSD's hard negative mining: per image, keep the ``ratio * num_positive`` negatives
    with the highest loss. loss, positive, negative: (B, A) -> (B, A) bool of negatives kept.
    An image without positives keeps no negatives (its loss is zero)."""
    num_pos = ops.sum(ops.cast(positive, "int32"), axis=-1, keepdims=True)
    num_neg = ops.cast(ops.cast(num_pos, "float32") * ratio, "int32")
    masked = ops.where(negative, loss, -1.0)  # losses are >= 0: non-negatives sort last
    order = ops.argsort(-masked, axis=-1)
    rank = ops.argsort(order, axis=-1)
    return ops.logical_and(negative, rank < num_neg)


def sample_balanced(positive, negative, batch_size_per_image: int, positive_fraction: float, seed=None):
    """Faster R-CNN's sampler: per image, up to ``positive_fraction * batch`` random positives,
    then random negatives to fill ``batch_size_per_image``. (B, A) bool masks -> (pos, neg) masks.
    ``seed``: a Keras ``SeedGenerator`` (or int) for the random choice."""
    import keras

    # the global batch's draw, this replica's rows: R replicas sample what one device samples
    noise = replica_rows(lambda shape: keras.random.uniform(shape, seed=seed), ops.shape(positive))
    num_pos_max = int(batch_size_per_image * positive_fraction)
    pos_rank = _rank(ops.where(positive, noise, -1.0))
    num_pos = ops.minimum(ops.sum(ops.cast(positive, "int32"), -1, keepdims=True), num_pos_max)
    pos = ops.logical_and(positive, pos_rank < num_pos)
    num_neg = batch_size_per_image - num_pos
    neg_rank = _rank(ops.where(negative, noise, -1.0))
    neg = ops.logical_and(negative, neg_rank < num_neg)
    return pos, neg


def _rank(values):
    """Rank of each entry in descending order along the last axis (0 = largest)."""
    return ops.argsort(ops.argsort(-values, axis=-1), axis=-1)
