"""Detection losses, in ``keras.ops``: smooth L1, SSD's multibox loss, YOLO v1's loss.

Ground truth arrives as the library's padded batch: ``gt_boxes`` (B, N, 4) xyxy pixels,
``gt_labels`` (B, N) int with -1 on padded rows. Each loss returns a dict of scalar
components (``box``, ``classification``, ...) whose sum is the training loss, so the
parts are logged separately. An image without objects contributes zero box loss.
Normalizers (matched boxes, images) count over the global batch under a distribution
strategy (:func:`~cnn_apps.replicas.replica_share`), so R replicas train as one device.
"""

from __future__ import annotations

from keras import ops

from cnn_apps.detection.boxes import pairwise_iou, valid_mask
from cnn_apps.detection.matching import NEGATIVE, gather_matched, hard_negative_mining
from cnn_apps.replicas import replica_share


def smooth_l1(diff, beta: float = 1.0):
    """Fast R-CNN's robust loss, elementwise: 0.5 x² / beta if |x| < beta else |x| - 0.5 beta."""
    a = ops.abs(diff)
    return ops.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def ssd_multibox_loss(
    cls_logits,
    box_deltas,
    anchors,
    gt_boxes,
    gt_labels,
    *,
    matcher,
    coder,
    negative_ratio: float = 3.0,
    alpha: float = 1.0,
):
    """SSD's loss: ``(L_conf + alpha L_loc) / N`` with N the matched default boxes.

    cls_logits (B, A, C + 1) with background at index 0, box_deltas (B, A, 4),
    anchors (A, 4). Default boxes match ground truth at IoU ≥ the matcher's threshold
    (plus each object's best box); softmax cross-entropy on positives and on the
    ``negative_ratio`` x as many hardest negatives; smooth L1 on the positives' deltas.
    """
    matched, _ = matcher(anchors, gt_boxes, gt_labels)
    target_boxes, target_labels = gather_matched(gt_boxes, gt_labels, matched)
    positive = matched >= 0
    negative = matched == NEGATIVE
    target_cls = ops.where(positive, target_labels + 1, 0)
    ce = ops.sparse_categorical_crossentropy(target_cls, ops.cast(cls_logits, "float32"), from_logits=True)
    hard = hard_negative_mining(ops.stop_gradient(ce), positive, negative, negative_ratio)
    num_pos = ops.sum(ops.cast(positive, "float32"))  # over the global batch (replica_share)
    cls_loss = replica_share(ops.sum(ce * ops.cast(ops.logical_or(positive, hard), "float32")), num_pos)
    target_deltas = coder.encode(target_boxes, anchors)
    box = ops.sum(smooth_l1(ops.cast(box_deltas, "float32") - target_deltas), axis=-1)
    box_loss = replica_share(ops.sum(box * ops.cast(positive, "float32")), num_pos)
    return {"classification": cls_loss, "box": alpha * box_loss}


def yolo_v1_targets(gt_boxes, gt_labels, image_size: float, grid: int):
    """The cell responsible for each object is the one holding its centre (one object per
    cell: the first listed). Returns has_object (B, S*S) float, boxes (B, S*S, 4) xyxy and
    labels (B, S*S) int32 of each cell's object."""
    cell = image_size / grid
    valid = valid_mask(gt_labels)
    cx = (gt_boxes[..., 0] + gt_boxes[..., 2]) / 2
    cy = (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2
    col = ops.clip(ops.floor(cx / cell), 0, grid - 1)
    row = ops.clip(ops.floor(cy / cell), 0, grid - 1)
    index = ops.cast(row * grid + col, "int32")
    assign = ops.one_hot(index, grid * grid) * ops.cast(valid, "float32")[..., None]  # (B, N, S²)
    has_obj = ops.max(assign, axis=1)
    which = ops.cast(ops.argmax(assign, axis=1), "int32")  # (B, S²)
    boxes = ops.take_along_axis(gt_boxes, ops.broadcast_to(which[..., None], ops.shape(which) + (4,)), axis=1)
    labels = ops.take_along_axis(ops.cast(gt_labels, "int32"), which, axis=1)
    return has_obj, boxes, labels


def yolo_v1_decode_boxes(pred_boxes, image_size: float, grid: int, offsets):
    """Cell-relative predictions (B, S*S, nb, 4) as (x, y, sqrt w, sqrt h) in [0, 1] ->
    xyxy pixels. ``offsets`` (S*S, 2): each cell's (column, row)."""
    cell = image_size / grid
    cx = (offsets[None, :, None, 0] + pred_boxes[..., 0]) * cell
    cy = (offsets[None, :, None, 1] + pred_boxes[..., 1]) * cell
    w = ops.square(pred_boxes[..., 2]) * image_size
    h = ops.square(pred_boxes[..., 3]) * image_size
    return ops.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def yolo_v1_loss(
    predictions,
    gt_boxes,
    gt_labels,
    *,
    image_size: float,
    grid: int,
    num_boxes: int,
    num_classes: int,
    offsets,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
):
    """YOLO v1's sum-squared loss (Redmon et al. 2016, eq. 3), averaged over the batch.

    predictions (B, S, S, 5 nb + C): per cell, nb boxes (x, y, sqrt w, sqrt h, confidence)
    in [0, 1] (x, y relative to the cell; w, h to the image), then C class probabilities.
    The predictor "responsible" for an object is the one of its cell whose box has the
    highest IoU with it; its confidence target is that IoU, every other predictor's is 0
    (weighted by ``lambda_noobj``); coordinates are weighted by ``lambda_coord``, with
    square roots of width and height so that a pixel matters more in a small box.
    """
    batch = ops.shape(predictions)[0]
    p = ops.reshape(ops.cast(predictions, "float32"), (batch, grid * grid, 5 * num_boxes + num_classes))
    boxes_p = ops.reshape(p[..., : 5 * num_boxes], (batch, grid * grid, num_boxes, 5))
    class_p = p[..., 5 * num_boxes :]
    has_obj, t_boxes, t_labels = yolo_v1_targets(gt_boxes, gt_labels, image_size, grid)

    cell = image_size / grid
    tcx = (t_boxes[..., 0] + t_boxes[..., 2]) / 2 / cell - offsets[None, :, 0]
    tcy = (t_boxes[..., 1] + t_boxes[..., 3]) / 2 / cell - offsets[None, :, 1]
    tw = ops.sqrt(ops.maximum(t_boxes[..., 2] - t_boxes[..., 0], 0.0) / image_size)
    th = ops.sqrt(ops.maximum(t_boxes[..., 3] - t_boxes[..., 1], 0.0) / image_size)
    target = ops.stack([tcx, tcy, tw, th], axis=-1)[:, :, None, :]  # (B, S², 1, 4)

    pred_xyxy = yolo_v1_decode_boxes(boxes_p[..., :4], image_size, grid, offsets)  # (B, S², nb, 4)
    iou = pairwise_iou(pred_xyxy, t_boxes[:, :, None, :])[..., 0]  # (B, S², nb)
    responsible = ops.one_hot(ops.argmax(iou, axis=-1), num_boxes) * has_obj[..., None]

    coord = lambda_coord * ops.sum(responsible * ops.sum(ops.square(boxes_p[..., :4] - target), axis=-1))
    conf = boxes_p[..., 4]
    obj = ops.sum(responsible * ops.square(conf - ops.stop_gradient(iou)))
    noobj = lambda_noobj * ops.sum((1.0 - responsible) * ops.square(conf))
    onehot = ops.one_hot(ops.maximum(t_labels, 0), num_classes)
    cls = ops.sum(has_obj * ops.sum(ops.square(class_p - onehot), axis=-1))
    n = ops.cast(batch, "float32")  # the global batch under a distribution strategy
    return {
        "box": replica_share(coord, n),
        "object": replica_share(obj, n),
        "no_object": replica_share(noobj, n),
        "classification": replica_share(cls, n),
    }
