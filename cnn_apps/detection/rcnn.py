"""R-CNN (Girshick et al. 2014): selective search -> warp each proposal -> fine-tuned CNN
features -> class-specific linear SVMs (hard negative mining) + bounding-box ridge regression
-> per-class NMS.

Shorthand: N images, S image side, P proposals of an image, K classes, D feature length,
W warp side. Boxes are ``xyxy`` float32 pixels; labels are 0-based classes (the fine-tuned
classifier adds background as its class 0, so class ``k`` is its output ``k + 1``).

Part of the pipeline lives outside TensorFlow (OpenCV proposals, scikit-learn SVMs and
ridge regressors), so :class:`RCNN` is a Python object, not a Keras model: ``fit``,
``predict``, ``save``/``load`` (the classifier as ``.keras``, the SVM and regressor weights
as plain arrays in ``region_head.npz`` plus ``region_head.json``, never a pickle; an old
pickled ``region_head.joblib`` loads only with ``--unsafe-load``). It is evaluate-only: there
is no SavedModel export.

What is shared with SPP-net (:mod:`cnn_apps.detection.sppnet`) lives in their base modules:
:func:`~cnn_apps.detection.region_training.finetune_classifier`
(the backbone fine-tuned on warped proposals), :class:`~cnn_apps.detection.region_head.RegionHead`
(SVMs, hard negative mining, box regression, NMS) and
:class:`~cnn_apps.detection.region_detector.RegionDetector` (fit / predict / save / load); this
module only says how features of boxes are computed (``_box_features``).

Scores are SVM margins (``w . x + b``), not probabilities: they can be negative, and the
evaluator only ranks them. ``score_threshold`` (default -1, the margin's edge) keeps
weak detections, which helps mAP.
"""

from __future__ import annotations

import numpy as np

from cnn_apps import registry
from cnn_apps.detection.region_detector import RegionDetector
from cnn_apps.detection.region_geometry import warp_regions


@registry.register("region_detector", "rcnn")
class RCNN(RegionDetector):
    """R-CNN: each proposal warped (with context) to ``warp_size`` and passed through the
    fine-tuned classifier; its features are the pooled (penultimate) layer."""

    kind = "rcnn"

    def _after_finetune(self) -> None:
        import keras

        c = self.classifier
        self._feature_model = keras.Model(
            c.inputs[0], c.get_layer("probabilities").input, name="rcnn_features"
        )

    def _box_features(self, images, boxes_list) -> list[np.ndarray]:
        """Warps of several images go through the network together (``feature_batch_size``)."""
        dim = self._feature_model.output.shape[-1]
        counts = [len(np.asarray(b).reshape(-1, 4)) for b in boxes_list]
        feats, pending, pending_n = [], [], 0

        def flush():
            nonlocal pending, pending_n
            if pending:
                warps = np.concatenate(pending).astype(np.float32)
                # the compiled predict function, not an eager call: ~100 warps per image
                feats.append(np.asarray(self._feature_model.predict_on_batch(warps), np.float32))
            pending, pending_n = [], 0

        for image, boxes in zip(images, boxes_list):
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            if len(boxes):
                pending.append(warp_regions(image, boxes, self.warp_size, self.context_padding))
                pending_n += len(boxes)
            if pending_n >= self.feature_batch_size:
                flush()
        flush()
        flat = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        return np.split(flat, np.cumsum(counts)[:-1]) if counts else []
