"""Fast R-CNN (Girshick, ICCV 2015): one pass of the backbone over the whole image, then
RoI max pooling of each region proposal from the shared map into a fixed grid, FC
layers, and two sibling outputs: softmax over K + 1 classes and per-class box deltas.

One functional graph with two inputs: ``images`` (B, S, S, 3) raw pixels and
``proposals`` (B, P, 4) xyxy pixels at the model's size (selective search, computed
outside the graph: :mod:`cnn_apps.data.proposal_cache`; -1 / zero-area rows are
padding) -> backbone map (``feature_level``; only the layers up to it) -> the shared RoI
head (:func:`~cnn_apps.detection.roi_head.build_roi_head`). Training follows the paper's
hierarchical sampling: a batch holds N images and ``roi_batch_per_image`` RoIs of each,
drawn from the image's proposals plus its ground-truth boxes, up to 25 % foreground (IoU
≥ 0.5 with an object), the rest background (IoU < 0.5), and the multi-task loss
L = L_cls + λ [u ≥ 1] L_loc (:func:`~cnn_apps.detection.roi_head.fast_rcnn_loss`). The
paper uses N = 2 and 64 RoIs per image; the batch size is ``training.batch_size``.
Inference decodes every proposal with each class's deltas and runs per-class NMS inside
the graph (:func:`~cnn_apps.detection.roi_head.detect_from_rois`).

Differences from the paper: background RoIs are everything below IoU 0.5 (the paper
takes [0.1, 0.5) as a hard-example heuristic), one image scale, no truncated SVD.
"""

from __future__ import annotations

import json

import keras
from keras import layers, ops

from cnn_apps import registry
from cnn_apps.backbones.features import build_backbone, pyramid_features
from cnn_apps.detection.boxes import BoxCoder
from cnn_apps.detection.detector import Detector
from cnn_apps.detection.matching import Matcher
from cnn_apps.detection.roi_head import build_roi_head, detect_from_rois, fast_rcnn_loss, sample_rois
from cnn_apps.preprocessing import preprocessing_layer


@keras.saving.register_keras_serializable(package="cnn_apps")
class FastRCNN(Detector):
    """Fast R-CNN on a registered backbone, fed region proposals.

    Inputs: ``{"images": (B, S, S, 3), "proposals": (B, P, 4)}`` with P = ``max_proposals``.

    Args:
        num_classes: K object classes (background added internally).
        image_size: the square input side S.
        backbone, backbone_args, feature_level: the shared feature map (a pyramid level such
            as ``C3``/``C4``, or a layer name).
        max_proposals: P, the proposal rows per image (the best-ranked first; fewer are
            padded with -1 rows). proposal_mode: the selective search mode the data
            stages and the export check use to make them (``fast``, ``quality``, ``single``).
        roi_pool_size, head_units, head_dropout: the RoI head (7 x 7 pooling and two FC
            layers, fc6 and fc7, in the paper).
        roi_fg_iou, roi_batch_per_image, roi_positive_fraction: the RoI sampling (0.5, 64,
            0.25 in the paper). box_weights: the head's box coder (10, 10, 5, 5).
        seed: of the sampler's random choices.
    """

    loss_names = ("classification", "box")

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        backbone: str = "resnet_mini",
        backbone_args: dict | None = None,
        feature_level: str = "C3",
        max_proposals: int = 200,
        proposal_mode: str = "fast",
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
        from cnn_apps.detection.proposals import MODES
        from cnn_apps.errors import ConfigError

        if proposal_mode not in MODES:
            raise ConfigError(f"proposal_mode must be one of {MODES}, got {proposal_mode!r}")
        if int(max_proposals) < 1:
            raise ConfigError(f"max_proposals must be at least 1, got {max_proposals}")
        # === Layers ===
        # only the layers up to the shared map belong to the model (no idle deeper stages)
        full_backbone, backbone_args = build_backbone(backbone, image_size, backbone_args)
        extractor = pyramid_features(full_backbone, [feature_level])
        scaling = preprocessing_layer(preprocessing)
        feature_shape = tuple(int(d) for d in extractor.outputs[0].shape[1:])
        stride = image_size / feature_shape[0]
        self.roi_head = build_roi_head(
            feature_shape,
            num_classes,
            pool_size=roi_pool_size,
            spatial_scale=1.0 / stride,
            fc_units=head_units,
            dropout=head_dropout,
        )

        # === Functional model ===
        images = keras.Input(shape=(image_size, image_size, 3), name="images")
        proposals = keras.Input(shape=(int(max_proposals), 4), name="proposals")
        features = extractor(scaling(images))
        features = features[0] if isinstance(features, (list, tuple)) else features
        rois = layers.Identity(name="rois", dtype="float32")(proposals)
        class_logits, box_deltas = self.roi_head([features, rois])
        outputs = {"features": features, "rois": rois, "class_logits": class_logits, "box_deltas": box_deltas}
        kwargs.setdefault("name", f"fast_rcnn_{backbone}")
        super().__init__(
            {"images": images, "proposals": proposals},
            outputs,
            num_classes=num_classes,
            image_size=image_size,
            class_names=class_names,
            postprocess=postprocess,
            **kwargs,
        )

        # === Config ===
        self.feature_shape = feature_shape
        self.head_coder = BoxCoder(box_weights)
        self.roi_matcher = Matcher(roi_fg_iou, force_best=False)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._config = {
            "backbone": backbone,
            "backbone_args": backbone_args,
            "feature_level": feature_level,
            "max_proposals": int(max_proposals),
            "proposal_mode": proposal_mode,
            "roi_pool_size": roi_pool_size,
            "head_units": json.loads(json.dumps(list(head_units))),
            "head_dropout": head_dropout,
            "roi_fg_iou": roi_fg_iou,
            "roi_batch_per_image": roi_batch_per_image,
            "roi_positive_fraction": roi_positive_fraction,
            "box_weights": [float(w) for w in box_weights],
            "preprocessing": preprocessing,
            "seed": seed,
        }

    @property
    def proposal_settings(self) -> dict:
        """How the data stages and the export check make this model's proposals."""
        return {"mode": self._config["proposal_mode"], "count": self._config["max_proposals"]}

    def detection_losses(self, y, y_pred):
        # y_pred["rois"] is the proposals input passed through, so the loss needs no `x`
        c = self._config
        gt_boxes, gt_labels = ops.cast(y["boxes"], "float32"), y["labels"]
        rois, labels, targets, weights = sample_rois(
            y_pred["rois"],
            gt_boxes,
            gt_labels,
            matcher=self.roi_matcher,
            batch_size_per_image=c["roi_batch_per_image"],
            positive_fraction=c["roi_positive_fraction"],
            seed=self.seed_generator,
        )
        class_logits, box_deltas = self.roi_head([y_pred["features"], rois], training=True)
        return fast_rcnn_loss(class_logits, box_deltas, rois, labels, targets, weights, coder=self.head_coder)

    def postprocess_outputs(self, y_pred, **postprocess):
        return detect_from_rois(
            y_pred["class_logits"],
            y_pred["box_deltas"],
            y_pred["rois"],
            coder=self.head_coder,
            image_size=self.image_size,
            postprocess={**self.postprocess, **postprocess},
        )

    def get_config(self):
        return {**self.base_config(), **self._config}


@registry.register("detector", "fast_rcnn")
def fast_rcnn(num_classes: int, **kwargs) -> FastRCNN:
    """Fast R-CNN with the constructor's defaults (compact ResNet, C3 map, 200 proposals)."""
    return FastRCNN(num_classes, **kwargs)
