"""Fast R-CNN (Girshick, ICCV 2015): one pass of the backbone over the whole image, then
RoI max pooling of each region proposal from the shared map into a fixed grid, FC
layers, and two sibling outputs: softmax over K + 1 classes and per-class box deltas.

One functional graph with two inputs: ``images`` (B, S, S, 3) raw pixels and
``proposals`` (B, P, 4) xyxy pixels at the model's size (selective search, computed
outside the graph: :mod:`cnn_apps.data.proposal_cache`; -1 / zero-area rows are
padding) -> backbone map (``feature_level``; only the layers up to it) -> the shared RoI
head (:func:`~cnn_apps.detection.roi_head.build_roi_head`; the parts shared with Faster
R-CNN are in :class:`~cnn_apps.detection.two_stage.TwoStageDetector`). Training follows the paper's
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

import keras
from keras import layers

from cnn_apps import registry
from cnn_apps.detection.two_stage import TwoStageDetector


@keras.saving.register_keras_serializable(package="cnn_apps")
class FastRCNN(TwoStageDetector):
    """Fast R-CNN on a registered backbone, fed region proposals.

    Inputs: ``{"images": (B, S, S, 3), "proposals": (B, P, 4)}`` with P = ``max_proposals``.

    Args:
        num_classes: K object classes (background added internally).
        image_size: the square input side S.
        backbone, backbone_args, feature_level: the shared feature map (a pyramid level such
            as ``P3``/``P4``, stride 8/16, or the family's ``C3``/``C4``, or a layer name).
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
        from cnn_apps.errors import ModelArgumentError

        if proposal_mode not in MODES:
            raise ModelArgumentError(f"proposal_mode must be one of {MODES}, got {proposal_mode!r}")
        if int(max_proposals) < 1:
            raise ModelArgumentError(f"max_proposals must be at least 1, got {max_proposals}")
        config = {
            "backbone": backbone,
            "backbone_args": backbone_args,
            "feature_level": feature_level,
            "max_proposals": int(max_proposals),
            "proposal_mode": proposal_mode,
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
        features_of, _, _ = self.shared_map(num_classes, image_size, config)

        # === Functional model ===
        images = keras.Input(shape=(image_size, image_size, 3), name="images")
        proposals = keras.Input(shape=(int(max_proposals), 4), name="proposals")
        features = features_of(images)
        rois = layers.Identity(name="rois", dtype="float32")(proposals)
        class_logits, box_deltas = self.roi_head([features, rois])
        outputs = {"features": features, "rois": rois, "class_logits": class_logits, "box_deltas": box_deltas}

        # === Config === (stored by the base)
        kwargs.setdefault("name", f"fast_rcnn_{backbone}")
        super().__init__(
            {"images": images, "proposals": proposals},
            outputs,
            config=config,
            num_classes=num_classes,
            image_size=image_size,
            class_names=class_names,
            postprocess=postprocess,
            **kwargs,
        )

    @property
    def proposal_settings(self) -> dict:
        """How the data stages and the export check make this model's proposals."""
        return {"mode": self._config["proposal_mode"], "count": self._config["max_proposals"]}

    def detection_losses(self, y, y_pred):
        # y_pred["rois"] is the proposals input passed through, so the loss needs no `x`
        return self.roi_losses(y_pred["rois"], y, y_pred)


@registry.register("detector", "fast_rcnn")
def fast_rcnn(num_classes: int, **kwargs) -> FastRCNN:
    """Fast R-CNN with the constructor's defaults (compact ResNet, C3 map, 200 proposals)."""
    return FastRCNN(num_classes, **kwargs)
