"""Faster R-CNN (Ren et al., NeurIPS 2015): a region proposal network on the backbone's
feature map proposes boxes, and Fast R-CNN's RoI head classifies and refines them.

One functional graph: images -> backbone map (``feature_level``) -> RPN (3x3 conv, k
objectness logits and 4k deltas per position, k = len(anchor_sizes) x len(aspect_ratios))
-> :class:`~cnn_apps.detection.rpn.ProposalLayer` (decode, clip, top-N, NMS 0.7, top-N)
-> RoI head on the proposals. Training is the paper's approximate joint training: the
RPN loss (anchors positive at IoU ≥ 0.7 or as an object's best, negative < 0.3, 256
sampled per image, half positive at most) plus the Fast R-CNN loss on RoIs sampled from
the proposals and the ground truth (64 per image, 25% foreground at IoU ≥ 0.5), with no
gradient through the proposals' coordinates. Inference runs the whole path, per-class
NMS included, inside the graph.

Shared parts handed around, not copied: the anchor generator, the box coders, the
matchers and the sampler (:mod:`~cnn_apps.detection.matching`), the RoI head builder and
loss (:mod:`~cnn_apps.detection.roi_head`, also Fast R-CNN's; what the two detectors share
around it is :class:`~cnn_apps.detection.two_stage.TwoStageDetector`). Boxes are xyxy pixels.
"""

from __future__ import annotations

import keras
from keras import ops

from cnn_apps import registry
from cnn_apps.detection.anchors import AnchorGenerator
from cnn_apps.detection.boxes import BoxCoder
from cnn_apps.detection.matching import Matcher
from cnn_apps.detection.rpn import ProposalLayer, rpn_head, rpn_loss
from cnn_apps.detection.two_stage import TwoStageDetector


@keras.saving.register_keras_serializable(package="cnn_apps")
class FasterRCNN(TwoStageDetector):
    """Faster R-CNN on a registered backbone.

    Args:
        num_classes: K object classes (background added internally).
        image_size: the square input side.
        backbone, backbone_args, feature_level: the shared feature map (a pyramid level such
            as ``P3``/``P4``, stride 8/16, or the family's ``C3``/``C4``, or a layer name).
        anchor_sizes, aspect_ratios: the anchors (the paper: 128, 256, 512 and 0.5, 1, 2 on
            ~600 px images; scaled down for small images).
        rpn_filters: the RPN's 3x3 conv. rpn_pre_nms_top_k, rpn_post_nms_top_k, rpn_nms_iou:
            the proposal layer. rpn_fg_iou, rpn_bg_iou, rpn_batch_per_image,
            rpn_positive_fraction: the RPN's anchor labels and sampling.
        roi_pool_size, head_units, head_dropout: the RoI head (7 x 7 pooling and two FC
            layers in the paper). roi_fg_iou, roi_batch_per_image, roi_positive_fraction:
            its RoI sampling. box_weights: the head's coder (10, 10, 5, 5).
        seed: of the samplers' random choices.
    """

    loss_names = ("rpn_objectness", "rpn_box", "classification", "box")

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        backbone: str = "resnet_mini",
        backbone_args: dict | None = None,
        feature_level: str = "C3",
        anchor_sizes=(16.0, 32.0, 64.0),
        aspect_ratios=(0.5, 1.0, 2.0),
        rpn_filters: int = 128,
        rpn_pre_nms_top_k: int = 600,
        rpn_post_nms_top_k: int = 100,
        rpn_nms_iou: float = 0.7,
        rpn_fg_iou: float = 0.7,
        rpn_bg_iou: float = 0.3,
        rpn_batch_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        roi_pool_size: int = 7,
        head_units=(256, 256),
        head_dropout: float = 0.0,
        roi_fg_iou: float = 0.5,
        roi_batch_per_image: int = 64,
        roi_positive_fraction: float = 0.25,
        box_weights=(10.0, 10.0, 5.0, 5.0),
        preprocessing: str = "unit",
        seed: int = 0,
        class_names=None,
        postprocess: dict | None = None,
        **kwargs,
    ):
        config = {
            "backbone": backbone,
            "backbone_args": backbone_args,
            "feature_level": feature_level,
            "anchor_sizes": [float(s) for s in anchor_sizes],
            "aspect_ratios": [float(r) for r in aspect_ratios],
            "rpn_filters": rpn_filters,
            "rpn_pre_nms_top_k": rpn_pre_nms_top_k,
            "rpn_post_nms_top_k": rpn_post_nms_top_k,
            "rpn_nms_iou": rpn_nms_iou,
            "rpn_fg_iou": rpn_fg_iou,
            "rpn_bg_iou": rpn_bg_iou,
            "rpn_batch_per_image": rpn_batch_per_image,
            "rpn_positive_fraction": rpn_positive_fraction,
            "roi_pool_size": roi_pool_size,
            "head_units": head_units,
            "head_dropout": head_dropout,
            "roi_fg_iou": roi_fg_iou,
            "roi_batch_per_image": roi_batch_per_image,
            "roi_positive_fraction": roi_positive_fraction,
            "box_weights": box_weights,
            "preprocessing": preprocessing,
            "seed": seed,
        }
        # === Layers === (the backbone up to the shared map, the RoI head: self.roi_head)
        features_of, feature_shape, stride = self.shared_map(num_classes, image_size, config)
        generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        anchors = generator(feature_shape[0], feature_shape[1], stride)
        proposals = ProposalLayer(
            anchors,
            image_size,
            pre_nms_top_k=rpn_pre_nms_top_k,
            post_nms_top_k=rpn_post_nms_top_k,
            nms_iou=rpn_nms_iou,
            nms=dict(postprocess or {}).get("nms", "auto"),
            name="proposals",
        )

        # === Functional model ===
        inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
        features = features_of(inputs)
        logits, deltas = rpn_head(features, generator.num_anchors, rpn_filters)
        rois, _ = proposals(logits, deltas)
        class_logits, box_deltas = self.roi_head([features, rois])
        outputs = {
            "features": features,
            "rpn_objectness": logits,
            "rpn_deltas": deltas,
            "rois": rois,
            "class_logits": class_logits,
            "box_deltas": box_deltas,
        }

        # === Config === (stored by the base, with the RoI head's coder, matcher and seed)
        kwargs.setdefault("name", f"faster_rcnn_{backbone}")
        super().__init__(
            inputs,
            outputs,
            config=config,
            num_classes=num_classes,
            image_size=image_size,
            class_names=class_names,
            postprocess=postprocess,
            **kwargs,
        )
        self.anchors = anchors
        self.rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.rpn_matcher = Matcher(rpn_fg_iou, rpn_bg_iou, force_best=True)

    def detection_losses(self, y, y_pred):
        c = self._config
        parts = rpn_loss(
            y_pred["rpn_objectness"],
            y_pred["rpn_deltas"],
            ops.convert_to_tensor(self.anchors),
            ops.cast(y["boxes"], "float32"),
            y["labels"],
            matcher=self.rpn_matcher,
            coder=self.rpn_coder,
            batch_size_per_image=c["rpn_batch_per_image"],
            positive_fraction=c["rpn_positive_fraction"],
            seed=self.seed_generator,
        )
        # approximate joint training: no gradient through the proposals' coordinates
        parts.update(self.roi_losses(ops.stop_gradient(y_pred["rois"]), y, y_pred))
        return parts


@registry.register("detector", "faster_rcnn")
def faster_rcnn(num_classes: int, **kwargs) -> FasterRCNN:
    """Faster R-CNN with the constructor's defaults (compact ResNet, C3 map, small anchors)."""
    return FasterRCNN(num_classes, **kwargs)
