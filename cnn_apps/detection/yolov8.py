"""YOLOv8 (Ultralytics, 2023) from keras-cv, wrapped in our detector contract.

keras-cv 0.9.0 gives the network: ``keras_cv.models.YOLOV8Backbone`` (CSPDarkNet with C2f
blocks and SPPF; built here from its constructor arguments, never ``from_preset``, which
downloads) and ``keras_cv.models.YOLOV8Detector`` (PA-FPN neck, decoupled anchor-free head:
per anchor point 64 box-distribution logits, 4 sides x 16 bins (DFL), and C sigmoid class
scores at strides 8, 16, 32). Training assigns targets with its task-aligned
``YOLOV8LabelEncoder`` (TOOD) and adds CIoU (x 7.5) and binary cross-entropy (x 0.5), both
divided by the sum of the soft class targets, exactly as ``YOLOV8Detector.compute_loss``.

Composition, not subclassing: :class:`YOLOv8KerasCV` is one of our :class:`Detector` s whose
functional graph calls the keras-cv detector as a layer (``self.yolo``). Subclassing
``YOLOV8Detector`` would mean its ``compile(box_loss=, classification_loss=)`` signature
(our trainer compiles with an optimizer only), its target dict (``classes``), its loss
logging through compiled per-output losses (outputs ``box`` and ``class``), its
``predict_step`` (padding with -1 boxes and scores) and its nested ``get_config`` with a
serialised backbone, all of which we would have to undo. Composed, the keras-cv pieces keep
their maths (network, label encoder, CIoU, anchors and ``dist2bbox``, ``NonMaxSuppression``)
and our base class gives the contract: targets ``{"boxes", "labels"}`` (-1 padding),
``box_loss`` and ``classification_loss`` metrics, ``detect``/``predict`` returning padded
``boxes, scores, labels, num_detections`` (boxes 0, scores 0, labels -1 after
``num_detections``), a flat ``get_config`` mirroring the constructor and a ``.keras`` round
trip that rebuilds from it.

Inputs: raw pixels 0..255; the backbone is always built with ``include_rescaling=True``,
its first layer being ``Rescaling(1/255)`` (keras-cv's convention, and ours: scaling is
inside the model). The image side must be a multiple of 32 (the neck concatenates P5
upsampled x2 with P4).

Decoding: ``decoder="keras_cv"`` (default) is keras-cv's ``NonMaxSuppression``, which is
class-agnostic (one NMS over each anchor's best class: an anchor yields at most one
detection, as in keras-cv's own ``predict``) and ignores ``pre_nms_top_k`` and ``nms``;
``decoder="per_class"`` uses our :func:`~cnn_apps.detection.nms.batched_nms` over all class
scores, like the rest of the zoo (use it when comparing mAP with SSD / YOLO v1).

Backend: TensorFlow only (keras-cv imports TensorFlow, its NMS runs
``tf.image.non_max_suppression_padded``); tested under the TensorFlow backend only.
Shapes: images (B, S, S, 3); head outputs ``box_distribution`` (B, A, 64) and
``class_scores`` (B, A, C) probabilities, A = (S/8)² + (S/16)² + (S/32)².
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from cnn_apps import registry
from cnn_apps.detection.boxes import clip_to_image
from cnn_apps.detection.detector import POSTPROCESS_DEFAULTS, Detector

BOX_BINS = 16  # DFL bins per box side (keras-cv's BOX_REGRESSION_CHANNELS // 4)
STRIDES = (8, 16, 32)
# keras-cv's "yolo_v8_xs_backbone" preset, written out (1,277,680 parameters)
XS_CHANNELS = (32, 64, 128, 256)
XS_DEPTH = (1, 2, 2, 1)


def _keras_cv():
    try:
        import keras_cv
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the yolov8_keras_cv detector needs keras-cv (pip install keras-cv)") from exc
    return keras_cv


def decode_distribution(box_distribution):
    """(B, A, 64) DFL logits -> (B, A, 4) left, top, right, bottom distances in strides:
    the expectation of a softmax over 16 bins (keras-cv's ``decode_regression_to_boxes``,
    written with ``ops.reshape`` so no layer is created inside a traced step)."""
    num_anchors = box_distribution.shape[1]
    logits = ops.reshape(box_distribution, (-1, num_anchors, 4, BOX_BINS))
    return ops.sum(ops.softmax(logits, axis=-1) * ops.arange(BOX_BINS, dtype="float32"), axis=-1)


def distances_to_boxes(distances, points):
    """ltrb distances (B, A, 4) around anchor points (A, 2) xy -> xyxy (keras-cv's ``dist2bbox``)."""
    return ops.concatenate([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


@keras.saving.register_keras_serializable(package="cnn_apps")
class YOLOv8KerasCV(Detector):
    """keras-cv's YOLOv8 as a zoo detector (see the module docstring).

    Args:
        num_classes: C.
        image_size: S, a multiple of 32 (YOLOv8's default: 640).
        stackwise_channels, stackwise_depth, activation: the ``YOLOV8Backbone`` (defaults:
            the xs preset; s: channels (64, 128, 256, 512), depth (1, 2, 2, 1); m: (96, 192,
            384, 576), (2, 4, 4, 2)).
        fpn_depth: C2f depth in the neck (keras-cv: 1 to 3 by model size).
        box_loss_weight, classification_loss_weight: keras-cv's 7.5 and 0.5.
        max_anchor_matches, alpha, beta: the task-aligned assigner's top-k, score and IoU exponents.
        decoder: ``keras_cv`` (class-agnostic NonMaxSuppression) or ``per_class`` (our batched NMS).
        class_names, postprocess: as every detector (``score_threshold`` is keras-cv's
            ``confidence_threshold``).
    """

    loss_names = ("box", "classification")

    def __init__(
        self,
        num_classes: int,
        image_size: int = 640,
        stackwise_channels=XS_CHANNELS,
        stackwise_depth=XS_DEPTH,
        activation: str = "swish",
        fpn_depth: int = 1,
        box_loss_weight: float = 7.5,
        classification_loss_weight: float = 0.5,
        max_anchor_matches: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        decoder: str = "keras_cv",
        class_names=None,
        postprocess: dict | None = None,
        **kwargs,
    ):
        kcv = _keras_cv()
        if image_size % STRIDES[-1]:
            raise ValueError(
                f"yolov8_keras_cv needs an image_size divisible by {STRIDES[-1]}, got {image_size}"
            )
        if decoder not in ("keras_cv", "per_class"):
            raise ValueError(f"decoder must be 'keras_cv' or 'per_class', got {decoder!r}")
        stackwise_channels = [int(c) for c in stackwise_channels]
        stackwise_depth = [int(d) for d in stackwise_depth]

        # === Layers ===
        self.backbone = kcv.models.YOLOV8Backbone(
            stackwise_channels=stackwise_channels,
            stackwise_depth=stackwise_depth,
            include_rescaling=True,
            activation=activation,
            input_shape=(image_size, image_size, 3),
            name="yolo_v8_backbone",
        )
        self.label_encoder = kcv.models.yolov8.LabelEncoder(
            num_classes=num_classes, max_anchor_matches=max_anchor_matches, alpha=alpha, beta=beta
        )
        self.label_encoder.built = True  # weightless and never built by keras-cv: Keras 3 warns otherwise
        self.yolo = kcv.models.YOLOV8Detector(
            num_classes=num_classes,
            bounding_box_format="xyxy",
            backbone=self.backbone,
            fpn_depth=fpn_depth,
            label_encoder=self.label_encoder,
            name="yolo_v8_detector",
            prediction_decoder=self._nms_layer({**POSTPROCESS_DEFAULTS, **(postprocess or {})}),
        )  # for self.yolo.predict

        # === Functional model ===
        inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
        raw = self.yolo(inputs)
        outputs = {
            "box_distribution": layers.Activation("linear", dtype="float32", name="box_distribution")(
                raw["boxes"]
            ),
            "class_scores": layers.Activation("linear", dtype="float32", name="class_scores")(raw["classes"]),
        }
        kwargs.setdefault("name", "yolov8_keras_cv")
        super().__init__(
            inputs,
            outputs,
            num_classes=num_classes,
            image_size=image_size,
            class_names=class_names,
            postprocess=postprocess,
            **kwargs,
        )

        # === Config ===
        from keras_cv.src.models.object_detection.yolo_v8.yolo_v8_detector import get_anchors  # not exported

        points, strides = get_anchors((image_size, image_size), strides=list(STRIDES))
        self.anchor_points = np.asarray(points, np.float32)  # (A, 2) xy, in strides
        self.anchor_strides = np.asarray(strides, np.float32)[:, None]  # (A, 1)
        self._config = {
            "stackwise_channels": stackwise_channels,
            "stackwise_depth": stackwise_depth,
            "activation": activation,
            "fpn_depth": int(fpn_depth),
            "box_loss_weight": float(box_loss_weight),
            "classification_loss_weight": float(classification_loss_weight),
            "max_anchor_matches": int(max_anchor_matches),
            "alpha": float(alpha),
            "beta": float(beta),
            "decoder": decoder,
        }

    @staticmethod
    def _nms_layer(p: dict):
        return _keras_cv().layers.NonMaxSuppression(
            bounding_box_format="xyxy",
            from_logits=False,  # the head already ends in a sigmoid
            iou_threshold=float(p["iou_threshold"]),
            confidence_threshold=float(p["score_threshold"]),
            max_detections=int(p["max_detections"]),
        )

    # ------------------------------------------------------------------ training
    def detection_losses(self, y, y_pred):
        """keras-cv's YOLOV8Detector.compute_loss on our targets; returns the two weighted terms."""
        from keras_cv.src.bounding_box.iou import compute_ciou

        from cnn_apps.replicas import replica_share

        c = self._config
        points = ops.convert_to_tensor(self.anchor_points)
        strides = ops.convert_to_tensor(self.anchor_strides)
        scores = ops.cast(y_pred["class_scores"], "float32")
        pred_boxes = distances_to_boxes(
            decode_distribution(ops.cast(y_pred["box_distribution"], "float32")), points
        )
        gt_labels = ops.cast(y["labels"], "int32")
        gt_mask = (gt_labels >= 0)[..., None]  # (B, N, 1): keras-cv broadcasts it over anchors
        gt_boxes = ops.where(gt_mask, ops.cast(y["boxes"], "float32"), -1.0)  # keras-cv's padding
        target_boxes, target_scores, fg_mask = self.label_encoder(
            scores, pred_boxes * strides, points * strides, gt_labels, gt_boxes, gt_mask
        )
        target_boxes = target_boxes / strides
        target_sum = ops.sum(target_scores)  # over the global batch (replica_share), at least 1
        box_weight = ops.sum(target_scores, axis=-1) * fg_mask  # (B, A): 0 for unmatched anchors
        # unmatched anchors carry -1 targets; a dummy valid box keeps their (zero-weighted) CIoU
        # gradient finite
        positive = (box_weight > 0)[..., None]
        target_boxes = ops.where(positive, target_boxes, ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0]))
        ciou_loss = 1.0 - compute_ciou(target_boxes, pred_boxes, bounding_box_format="xyxy")
        box = c["box_loss_weight"] * replica_share(ops.sum(ciou_loss * box_weight), target_sum)
        bce = keras.losses.binary_crossentropy(target_scores, scores)  # mean over classes, as keras-cv
        classification = c["classification_loss_weight"] * replica_share(ops.sum(bce), target_sum)
        return {"box": box, "classification": classification}

    # ------------------------------------------------------------------ inference
    def decode(self, y_pred):
        points = ops.convert_to_tensor(self.anchor_points)
        strides = ops.convert_to_tensor(self.anchor_strides)
        distances = decode_distribution(ops.cast(y_pred["box_distribution"], "float32"))
        boxes = clip_to_image(
            distances_to_boxes(distances, points) * strides, float(self.image_size), float(self.image_size)
        )
        return boxes, ops.cast(y_pred["class_scores"], "float32")

    def postprocess_outputs(self, y_pred, **postprocess):
        """Head outputs -> padded detections (``detect`` and ``predict`` both come here);
        ``postprocess`` overrides this call's thresholds."""
        if self._config["decoder"] == "per_class":
            return super().postprocess_outputs(y_pred, **postprocess)
        p = {**self.postprocess, **postprocess}
        boxes, scores = self.decode(y_pred)
        out = self._nms_layer(p)(boxes, scores)
        num = ops.cast(out["num_detections"], "int32")
        keep = ops.arange(int(p["max_detections"]), dtype="int32")[None, :] < num[:, None]
        return {
            "boxes": ops.where(keep[..., None], ops.cast(out["boxes"], "float32"), 0.0),
            "scores": ops.where(keep, ops.cast(out["confidence"], "float32"), 0.0),
            "labels": ops.where(keep, ops.cast(out["classes"], "int32"), -1),
            "num_detections": num,
        }

    def get_config(self):
        return {**self.base_config(), **self._config}


@registry.register("detector", "yolov8_keras_cv")
def yolov8_keras_cv(num_classes: int, **kwargs) -> YOLOv8KerasCV:
    """keras-cv's YOLOv8 (xs backbone, fpn_depth 1 by default). Its backbone is fixed: the
    factory passes no ``backbone``/``backbone_args``; set ``stackwise_channels``,
    ``stackwise_depth``, ``activation`` and ``fpn_depth`` as model arguments instead."""
    return YOLOv8KerasCV(num_classes, **kwargs)


yolov8_keras_cv.fixed_backbone = True
