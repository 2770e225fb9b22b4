"""Fast R-CNN's RoI head, shared by Fast R-CNN and Faster R-CNN: RoI sampling for
training, the head network, its multi-task loss and its post-processing.

RoIs and boxes are ``xyxy`` pixels. Shapes: features (B, h, w, C); rois (B, R, 4);
class logits (B, R, K + 1) with background at 0; box deltas (B, R, K, 4), one set per
object class (class-specific regression).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from cnn_apps.detection.boxes import BoxCoder, clip_to_image
from cnn_apps.detection.losses import smooth_l1
from cnn_apps.detection.matching import NEGATIVE, Matcher, gather_matched, sample_balanced
from cnn_apps.detection.nms import batched_nms
from cnn_apps.replicas import replica_share


def build_roi_head(
    feature_shape,
    num_classes: int,
    *,
    pool_size: int,
    spatial_scale: float,
    fc_units=(256, 256),
    dropout: float = 0.0,
    name: str = "roi_head",
) -> keras.Model:
    """(features (B, h, w, C), rois (B, R, 4)) -> (class logits (B, R, K + 1), deltas (B, R, K, 4)):
    RoI max pooling to ``pool_size`` x ``pool_size``, FC layers (the paper's fc6, fc7), then
    the two sibling outputs. A model of its own, so that training calls it on sampled RoIs
    and inference on proposals with the same weights."""
    from cnn_apps.detection.pooling import RoIPooling

    features = keras.Input(shape=tuple(feature_shape), name="features")
    rois = keras.Input(shape=(None, 4), name="rois")
    x = RoIPooling(pool_size=pool_size, spatial_scale=spatial_scale, name="roi_pool")(features, rois)
    x = layers.Reshape((-1, pool_size * pool_size * int(feature_shape[-1])), name="roi_flatten")(x)
    for i, units in enumerate(fc_units, start=6):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    logits = layers.Dense(
        num_classes + 1,
        name="class_logits",
        dtype="float32",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )(x)
    deltas = layers.Dense(
        4 * num_classes,
        name="box_deltas_flat",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
    )(x)
    deltas = layers.Reshape((-1, num_classes, 4), name="box_deltas", dtype="float32")(deltas)
    return keras.Model([features, rois], [logits, deltas], name=name)


def sample_rois(
    proposals,
    gt_boxes,
    gt_labels,
    *,
    matcher: Matcher,
    batch_size_per_image: int = 64,
    positive_fraction: float = 0.25,
    seed=None,
):
    """Fast R-CNN's mini-batch: per image, the proposals plus the ground-truth boxes, each
    labelled by its best overlap (foreground at IoU ≥ 0.5, background below), then
    ``batch_size_per_image`` of them with up to ``positive_fraction`` foreground.

    proposals (B, P, 4) (zero-area rows are padding), gt (B, N, 4)/(B, N) -> rois (B, S, 4),
    labels (B, S) (0 background, k + 1 class k), target boxes (B, S, 4), weights (B, S)
    (1 for sampled rows, 0 when an image has fewer candidates than S)."""
    candidates = ops.concatenate([ops.cast(proposals, "float32"), ops.cast(gt_boxes, "float32")], axis=1)
    valid = ops.concatenate(
        [
            (proposals[..., 2] - proposals[..., 0]) * (proposals[..., 3] - proposals[..., 1]) > 0,
            gt_labels >= 0,
        ],
        axis=1,
    )
    matched, _ = matcher(candidates, gt_boxes, gt_labels)
    positive = ops.logical_and(matched >= 0, valid)
    negative = ops.logical_and(matched == NEGATIVE, valid)
    pos, neg = sample_balanced(positive, negative, batch_size_per_image, positive_fraction, seed)
    chosen = ops.logical_or(pos, neg)
    # a fixed-size pick: sampled rows first (foreground before background), then the rest
    order = ops.cast(pos, "float32") * 2.0 + ops.cast(neg, "float32")
    _, idx = ops.top_k(
        order - ops.cast(ops.arange(ops.shape(order)[1]), "float32") * 1e-6,
        k=batch_size_per_image,
        sorted=True,
    )
    take = lambda t: ops.take_along_axis(t, idx, axis=1)  # noqa: E731
    take4 = lambda t: ops.take_along_axis(t, ops.broadcast_to(idx[..., None], ops.shape(idx) + (4,)), axis=1)  # noqa: E731,E501
    target_boxes, target_labels = gather_matched(gt_boxes, gt_labels, matched)
    labels = ops.where(take(pos), take(target_labels) + 1, 0)
    return (
        take4(candidates),
        ops.cast(labels, "int32"),
        take4(target_boxes),
        ops.cast(take(chosen), "float32"),
    )


def fast_rcnn_loss(class_logits, box_deltas, rois, labels, target_boxes, weights, *, coder: BoxCoder):
    """L = L_cls + λ [u ≥ 1] L_loc (λ = 1): softmax cross-entropy over K + 1 classes on the
    sampled RoIs, and smooth L1 on the deltas of the true class for foreground RoIs only
    (background RoIs contribute no box loss), both averaged over the sampled RoIs."""
    class_logits, box_deltas = ops.cast(class_logits, "float32"), ops.cast(box_deltas, "float32")
    count = ops.sum(weights)  # over the global batch (replica_share)
    ce = ops.sparse_categorical_crossentropy(labels, class_logits, from_logits=True)
    cls_loss = replica_share(ops.sum(ce * weights), count)
    num_classes = box_deltas.shape[-2]
    fg = ops.cast(labels > 0, "float32") * weights
    pick = ops.one_hot(ops.maximum(labels - 1, 0), num_classes)[..., None]  # (B, S, K, 1)
    deltas = ops.sum(box_deltas * pick, axis=-2)  # the true class's deltas
    target = coder.encode(target_boxes, rois)
    box = ops.sum(smooth_l1(deltas - target), axis=-1)
    return {"classification": cls_loss, "box": replica_share(ops.sum(box * fg), count)}


def detect_from_rois(class_logits, box_deltas, rois, *, coder: BoxCoder, image_size: int, postprocess: dict):
    """Per-class boxes (each RoI decoded with each class's deltas) scored by the softmax,
    then per-class NMS: the padded detections dict."""
    batch = ops.shape(rois)[0]
    num_rois, num_classes = box_deltas.shape[1], box_deltas.shape[2]
    probs = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[..., 1:]  # (B, R, K)
    anchors = ops.repeat(ops.cast(rois, "float32")[:, :, None, :], num_classes, axis=2)
    boxes = coder.decode(ops.cast(box_deltas, "float32"), anchors)  # (B, R, K, 4)
    size = float(image_size)
    boxes = clip_to_image(ops.reshape(boxes, (batch, num_rois * num_classes, 4)), size, size)
    valid = ((rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1]) > 0)[..., None]
    probs = ops.where(valid, probs, 0.0)
    # each flattened row (RoI r, class k) scores only class k
    scores = ops.reshape(
        probs[..., None] * ops.eye(num_classes)[None, None], (batch, num_rois * num_classes, num_classes)
    )
    p = postprocess
    return batched_nms(
        boxes,
        scores,
        max_detections=int(p["max_detections"]),
        iou_threshold=float(p["iou_threshold"]),
        score_threshold=float(p["score_threshold"]),
        pre_nms_top_k=int(p["pre_nms_top_k"]),
        implementation=p["nms"],
    )
