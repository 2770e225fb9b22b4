"""The base of the two-stage detectors, Fast R-CNN and Faster R-CNN: what they share around
the RoI head (:mod:`~cnn_apps.detection.roi_head`).

Both cut a registered backbone at one feature map (``feature_level``; only the layers up to
it belong to the model), scale the raw pixels in the graph, and classify and refine regions
of that map with the RoI head: RoI max pooling, FC layers, softmax over K + 1 classes and
per-class box deltas. They differ only in where the regions come from (Fast R-CNN: an input
of proposals; Faster R-CNN: its RPN, which adds a loss). Shared here: building the map and
the head, the RoI part of the loss (sample RoIs, run the head on them, the multi-task loss),
post-processing (each RoI decoded per class, per-class NMS, in the graph) and the config.
"""

from __future__ import annotations

import json

import keras
from keras import ops

from cnn_apps.backbones.features import build_backbone, pyramid_features
from cnn_apps.detection.boxes import BoxCoder
from cnn_apps.detection.detector import Detector
from cnn_apps.detection.matching import Matcher
from cnn_apps.detection.roi_head import build_roi_head, detect_from_rois, fast_rcnn_loss, sample_rois
from cnn_apps.preprocessing import preprocessing_layer


class TwoStageDetector(Detector):
    """Base of Fast and Faster R-CNN. A subclass, in ``__init__``:

    1. collects every constructor argument except the :class:`Detector` ones in ``config``
       (the shared keys: ``backbone``, ``backbone_args``, ``feature_level``, ``roi_pool_size``,
       ``head_units``, ``head_dropout``, ``roi_fg_iou``, ``roi_batch_per_image``,
       ``roi_positive_fraction``, ``box_weights``, ``preprocessing``, ``seed``);
    2. calls :meth:`shared_map` for the feature map and the RoI head (``self.roi_head``) and
       builds its graph, whose outputs hold at least ``features``, ``rois``, ``class_logits``
       and ``box_deltas``;
    3. calls ``super().__init__(inputs, outputs, config=config, num_classes=..., ...)``, which
       stores the config (``get_config`` returns it with the Detector's) and makes the RoI
       head's box coder (``head_coder``), matcher (``roi_matcher``) and the samplers' seed.

    Its ``detection_losses`` returns :meth:`roi_losses` (plus its own parts).
    """

    def shared_map(self, num_classes: int, image_size: int, config: dict):
        """The backbone cut at ``config["feature_level"]`` behind the pixel scaling, and the
        RoI head on that map (set as ``self.roi_head``). -> (``features``: images (B, S, S, 3)
        -> map (B, h, w, C), the map's shape (h, w, C), its stride S / h)."""
        full_backbone, _ = build_backbone(config["backbone"], image_size, config["backbone_args"])
        extractor = pyramid_features(full_backbone, [config["feature_level"]])
        scaling = preprocessing_layer(config["preprocessing"])
        feature_shape = tuple(int(d) for d in extractor.outputs[0].shape[1:])
        stride = image_size / feature_shape[0]
        self.roi_head = build_roi_head(
            feature_shape,
            num_classes,
            pool_size=config["roi_pool_size"],
            spatial_scale=1.0 / stride,
            fc_units=config["head_units"],
            dropout=config["head_dropout"],
        )

        def features(images):
            out = extractor(scaling(images))
            return out[0] if isinstance(out, (list, tuple)) else out

        return features, feature_shape, stride

    def __init__(self, inputs, outputs, *, config: dict, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        # JSON-shaped (tuples -> lists) so get_config is the same before and after saving
        self._config = {
            **config,
            "backbone_args": json.loads(json.dumps(dict(config["backbone_args"] or {}))),
            "head_units": json.loads(json.dumps(list(config["head_units"]))),
            "box_weights": [float(w) for w in config["box_weights"]],
        }
        self.feature_shape = tuple(int(d) for d in outputs["features"].shape[1:])
        self.head_coder = BoxCoder(config["box_weights"])
        self.roi_matcher = Matcher(config["roi_fg_iou"], force_best=False)
        self.seed_generator = keras.random.SeedGenerator(config["seed"])

    def roi_losses(self, rois, y, y_pred) -> dict:
        """Fast R-CNN's multi-task loss on ``roi_batch_per_image`` RoIs per image sampled from
        ``rois`` (B, R, 4) and the ground truth -> ``{"classification", "box"}``."""
        c = self._config
        gt_boxes, gt_labels = ops.cast(y["boxes"], "float32"), y["labels"]
        rois, labels, targets, weights = sample_rois(
            rois,
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
