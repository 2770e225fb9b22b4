"""Faster R-CNN's region proposal network: the head, the proposal layer and the loss.

Anchors are ``xyxy`` pixels from :class:`~cnn_apps.detection.anchors.AnchorGenerator`, in
the head's order (feature map row-major, then the k anchors of a location). Shapes:
features (B, h, w, C); objectness logits (B, A); deltas (B, A, 4) with A = h * w * k.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from cnn_apps.detection.boxes import BoxCoder, clip_to_image
from cnn_apps.detection.losses import smooth_l1
from cnn_apps.detection.matching import NEGATIVE, Matcher, gather_matched, sample_balanced
from cnn_apps.detection.nms import batched_nms
from cnn_apps.replicas import replica_share


def rpn_head(features, num_anchors: int, filters: int, name: str = "rpn"):
    """The paper's "mini-network" slid over the shared map: a 3x3 conv (ReLU), then two
    sibling 1x1 convs, k objectness logits (a sigmoid per anchor, as torchvision; the paper's
    2k-way softmax is equivalent) and 4k box deltas. -> (logits (B, A), deltas (B, A, 4))."""
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv")(features)
    logits = layers.Conv2D(
        num_anchors,
        1,
        name=f"{name}_objectness",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )(x)
    deltas = layers.Conv2D(
        4 * num_anchors,
        1,
        name=f"{name}_deltas",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )(x)
    logits = layers.Reshape((-1,), name=f"{name}_objectness_flat", dtype="float32")(logits)
    deltas = layers.Reshape((-1, 4), name=f"{name}_deltas_flat", dtype="float32")(deltas)
    return logits, deltas


@keras.saving.register_keras_serializable(package="cnn_apps")
class ProposalLayer(layers.Layer):
    """RPN outputs -> proposals: decode the deltas on the anchors, clip to the image, keep
    the ``pre_nms_top_k`` best by objectness, NMS at ``nms_iou`` (class-agnostic), keep
    ``post_nms_top_k``. Inputs logits (B, A), deltas (B, A, 4); outputs proposals
    (B, post_nms_top_k, 4) xyxy pixels (padding rows are zeros) and their objectness
    (B, post_nms_top_k) (0 on padding). Proposals carry no gradient (approximate joint
    training, as the paper's end-to-end variant)."""

    def __init__(
        self,
        anchors,
        image_size: int,
        box_weights=(1.0, 1.0, 1.0, 1.0),
        pre_nms_top_k: int = 600,
        post_nms_top_k: int = 100,
        nms_iou: float = 0.7,
        nms: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)
        self.image_size = int(image_size)
        self.coder = BoxCoder(box_weights)
        self.pre_nms_top_k, self.post_nms_top_k = int(pre_nms_top_k), int(post_nms_top_k)
        self.nms_iou = float(nms_iou)
        self.nms = nms

    def call(self, logits, deltas):
        logits = ops.stop_gradient(ops.cast(logits, "float32"))
        deltas = ops.stop_gradient(ops.cast(deltas, "float32"))
        boxes = self.coder.decode(deltas, ops.convert_to_tensor(self.anchors))
        size = float(self.image_size)
        boxes = clip_to_image(boxes, size, size)
        out = batched_nms(
            boxes,
            ops.sigmoid(logits)[..., None],
            max_detections=self.post_nms_top_k,
            iou_threshold=self.nms_iou,
            score_threshold=0.0,
            pre_nms_top_k=self.pre_nms_top_k,
            implementation=self.nms,
        )
        return out["boxes"], out["scores"]

    def compute_output_shape(self, logits_shape, deltas_shape):
        return (logits_shape[0], self.post_nms_top_k, 4), (logits_shape[0], self.post_nms_top_k)

    def get_config(self):
        return {
            **super().get_config(),
            "anchors": self.anchors.tolist(),
            "image_size": self.image_size,
            "box_weights": list(self.coder.weights),
            "pre_nms_top_k": self.pre_nms_top_k,
            "post_nms_top_k": self.post_nms_top_k,
            "nms_iou": self.nms_iou,
            "nms": self.nms,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["anchors"] = np.asarray(config["anchors"], np.float32)
        return cls(**config)


def rpn_loss(
    logits,
    deltas,
    anchors,
    gt_boxes,
    gt_labels,
    *,
    matcher: Matcher,
    coder: BoxCoder,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    seed=None,
):
    """The RPN's loss: anchors labelled positive at IoU ≥ the matcher's high threshold (0.7)
    or as an object's best anchor, negative below its low one (0.3), the rest ignored;
    ``batch_size_per_image`` sampled anchors (up to half positive) per image; binary
    cross-entropy on objectness and smooth L1 (beta 1/9) on the positives' deltas, both
    divided by the sampled count. An image without objects trains objectness only."""
    logits, deltas = ops.cast(logits, "float32"), ops.cast(deltas, "float32")  # under mixed precision too
    matched, _ = matcher(anchors, gt_boxes, gt_labels)
    target_boxes, _ = gather_matched(gt_boxes, gt_labels, matched)
    pos, neg = sample_balanced(
        matched >= 0, matched == NEGATIVE, batch_size_per_image, positive_fraction, seed
    )
    sampled = ops.cast(ops.logical_or(pos, neg), "float32")
    count = ops.sum(sampled)  # over the global batch (replica_share)
    bce = ops.binary_crossentropy(ops.cast(pos, "float32"), logits, from_logits=True)  # elementwise (B, A)
    objectness = replica_share(ops.sum(bce * sampled), count)
    target = coder.encode(target_boxes, anchors)
    box = ops.sum(smooth_l1(deltas - target, beta=1.0 / 9), axis=-1)
    return {
        "rpn_objectness": objectness,
        "rpn_box": replica_share(ops.sum(box * ops.cast(pos, "float32")), count),
    }
