"""The contract every in-graph detector follows (after torchvision and keras-cv): the
single-shot ones (SSD, YOLO, YOLOv8) and the two-stage ones (Fast and Faster R-CNN, through
:class:`~cnn_apps.detection.two_stage.TwoStageDetector`). R-CNN and SPP-net, which fit and
predict outside one Keras graph, follow :mod:`~cnn_apps.detection.region_detector` instead.

A :class:`Detector` is a Keras functional model from raw pixels (B, H, W, 3), 0..255 (Fast
R-CNN adds its proposals input), to its heads' raw outputs. Training:
``fit(images, {"boxes": (B, N, 4), "labels": (B, N)})`` with xyxy pixel boxes padded with -1;
:meth:`compute_loss` turns the targets into the heads' terms and logs every loss component
(``box_loss``, ``classification_loss``, ...). Inference: :meth:`detect` (also ``predict``)
decodes and runs per-class NMS in the graph and returns fixed-size padded detections
``boxes`` (B, K, 4) xyxy pixels, ``scores`` (B, K), ``labels`` (B, K) int32 (-1 padding),
``num_detections`` (B,).
"""

from __future__ import annotations

import keras
from keras import ops

from cnn_apps.classes import check_class_names
from cnn_apps.detection.nms import batched_nms
from cnn_apps.errors import ModelArgumentError

POSTPROCESS_DEFAULTS = {
    "score_threshold": 0.05,
    "iou_threshold": 0.5,
    "max_detections": 100,
    "pre_nms_top_k": 400,
    "nms": "auto",
}


class Detector(keras.Model):
    """Base class: subclasses build the graph, then call ``super().__init__(inputs, outputs,
    num_classes=..., image_size=..., class_names=..., postprocess=...)`` and implement
    ``detection_losses`` and ``decode`` (or, like the two-stage detectors, override
    ``postprocess_outputs``). Bad class names or postprocess keys raise
    :class:`~cnn_apps.errors.ModelArgumentError`."""

    loss_names: tuple = ()

    def __init__(
        self,
        inputs,
        outputs,
        *,
        num_classes: int,
        image_size: int,
        class_names=None,
        postprocess: dict | None = None,
        **kwargs,
    ):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.class_names = check_class_names(num_classes, class_names, owner=type(self).__name__)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        unknown = set(postprocess or {}) - set(POSTPROCESS_DEFAULTS)
        if unknown:
            raise ModelArgumentError(
                f"{type(self).__name__}: unknown postprocess keys {sorted(unknown)}; "
                f"valid: {sorted(POSTPROCESS_DEFAULTS)}"
            )
        self.postprocess = {**POSTPROCESS_DEFAULTS, **(postprocess or {})}
        self.loss_trackers = [keras.metrics.Mean(name=f"{n}_loss") for n in self.loss_names]

    # ------------------------------------------------------------------ subclass API
    def detection_losses(self, y, y_pred) -> dict:  # pragma: no cover - abstract
        """Padded targets and head outputs -> {part name: scalar loss}; their sum is trained."""
        raise NotImplementedError(f"{type(self).__name__} must implement detection_losses(y, y_pred)")

    def decode(self, y_pred):  # pragma: no cover - abstract
        """Head outputs -> (boxes (B, A, 4) xyxy pixels, scores (B, A, C) per class)."""
        raise NotImplementedError(f"{type(self).__name__} must implement decode(y_pred)")

    # ------------------------------------------------------------------ training
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The sum of the parts, each this replica's share of the global batch's value under a
        distribution strategy (:mod:`cnn_apps.replicas`; Keras' convention), plus the kernel
        penalties; the trackers record each part's global value."""
        from cnn_apps.replicas import global_value, scale_for_replicas

        parts = self.detection_losses(y, y_pred)
        total = 0.0
        for tracker, name in zip(self.loss_trackers, self.loss_names):
            tracker.update_state(global_value(parts[name]))
            total = total + parts[name]
        if self.losses:  # kernel regularizers
            total = total + scale_for_replicas(
                ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
            )
        return total

    @property
    def metrics(self):
        base = list(super().metrics)
        known = {id(m) for m in base}
        return base + [t for t in self.loss_trackers if id(t) not in known]

    # ------------------------------------------------------------------ inference
    def detect(self, images, **postprocess):
        """Padded detections for raw-pixel images (B, H, W, 3) at the model's size;
        ``postprocess`` overrides this call's thresholds."""
        return self.postprocess_outputs(self(images, training=False), **postprocess)

    def postprocess_outputs(self, y_pred, **postprocess):
        """Head outputs -> decoded boxes -> per-class NMS -> padded detections."""
        p = {**self.postprocess, **postprocess}
        boxes, scores = self.decode(y_pred)
        return batched_nms(
            boxes,
            scores,
            max_detections=int(p["max_detections"]),
            iou_threshold=float(p["iou_threshold"]),
            score_threshold=float(p["score_threshold"]),
            pre_nms_top_k=int(p["pre_nms_top_k"]),
            implementation=p["nms"],
        )

    def predict_step(self, *args):
        # The backends' predict_step differ (JAX's is stateless: (state, data) -> (outputs,
        # state)); wrap it rather than replace it, as keras-cv does.
        outputs = super().predict_step(*args)
        if isinstance(outputs, tuple):
            return self.postprocess_outputs(outputs[0]), outputs[1]
        return self.postprocess_outputs(outputs)

    def base_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "class_names": self.class_names,
            "postprocess": self.postprocess,
        }
