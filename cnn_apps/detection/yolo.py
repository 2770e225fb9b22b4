"""YOLO v1: You Only Look Once (Redmon et al., CVPR 2016).

The image is divided into an S x S grid (S = 7). Each cell predicts B boxes (x, y
relative to the cell, sqrt w, sqrt h relative to the image, and a confidence that is
trained towards the IoU with the object) and one set of C class probabilities. As in the
paper the head is fully connected: the backbone's last feature map is flattened, passed
through a hidden FC layer (leaky ReLU, dropout) and a second FC layer with
S x S x (5B + C) outputs. One difference from the paper: outputs go through a sigmoid
(box terms, confidence) and a softmax (classes), so every target lies in [0, 1] and the
paper's warm-up epochs at a low learning rate are not needed. The loss is the paper's
(:func:`~cnn_apps.detection.losses.yolo_v1_loss`: λcoord = 5, λnoobj = 0.5).

At inference every one of the S·S·B boxes gets class-specific scores
``Pr(class | object) * confidence`` and goes through per-class NMS.
Boxes are xyxy pixels; images (B, S_img, S_img, 3) raw pixels.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from cnn_apps import registry
from cnn_apps.backbones.batch_norm import FusedBatchNormalization
from cnn_apps.backbones.features import build_backbone, pyramid_features
from cnn_apps.detection.anchors import yolo_cell_offsets
from cnn_apps.detection.boxes import clip_to_image
from cnn_apps.detection.detector import Detector
from cnn_apps.detection.losses import yolo_v1_decode_boxes, yolo_v1_loss
from cnn_apps.preprocessing import preprocessing_layer


@keras.saving.register_keras_serializable(package="cnn_apps")
class YOLOv1(Detector):
    """YOLO v1 on a registered backbone.

    Args:
        num_classes: C.
        image_size: the square input side (the paper: 448).
        backbone, backbone_args: a registered backbone and its arguments.
        feature_level: the backbone level the head reads (None: the backbone's output).
        grid: S (7). boxes_per_cell: B (2).
        head_filters: a 1x1 conv reducing the feature map's channels before flattening
            (0 keeps them; keeps the FC layer small on big maps).
        hidden_units: the hidden FC layer (the paper: 4096). dropout: after it (0.5).
        head: ``fc`` (the paper's: flatten, FC, FC to S x S x (5B + C)) or ``conv`` (a 3x3 and a
            1x1 convolution on a feature map that is already S x S, so each cell's prediction
            comes from its own neighbourhood; no warm start needed, which trains from scratch
            in a fraction of the epochs; the grid, outputs and loss are the paper's).
        lambda_coord, lambda_noobj: the loss weights (5, 0.5).
        preprocessing: ``unit`` or ``caffe``. postprocess: NMS settings.
    """

    loss_names = ("box", "object", "no_object", "classification")

    def __init__(
        self,
        num_classes: int,
        image_size: int = 112,
        backbone: str = "resnet_mini",
        backbone_args: dict | None = None,
        feature_level: str | None = None,
        grid: int = 7,
        boxes_per_cell: int = 2,
        head_filters: int = 64,
        hidden_units: int = 512,
        dropout: float = 0.5,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        preprocessing: str = "unit",
        head: str = "fc",
        class_names=None,
        postprocess: dict | None = None,
        **kwargs,
    ):
        if head not in ("fc", "conv"):
            raise ValueError(f"head must be 'fc' or 'conv', got {head!r}")
        # === Layers ===
        self.backbone, backbone_args = build_backbone(backbone, image_size, backbone_args)
        features = pyramid_features(self.backbone, [feature_level]) if feature_level else self.backbone
        scaling = preprocessing_layer(preprocessing)
        outputs_per_cell = 5 * boxes_per_cell + num_classes

        # === Functional model ===
        inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
        x = features(scaling(inputs))
        if isinstance(x, (list, tuple)):  # pyramid_features' model: a list of its one level
            x = x[0]
        if head == "conv" and tuple(x.shape[1:3]) != (grid, grid):
            raise ValueError(
                f"head='conv' needs a {grid}x{grid} feature map; the backbone gives "
                f"{tuple(x.shape[1:3])} at {image_size} px (pick image_size or feature_level)"
            )
        if head_filters:
            x = layers.Conv2D(head_filters, 1 if head == "fc" else 3, padding="same", name="head_reduce")(x)
            x = FusedBatchNormalization(momentum=0.9, name="head_reduce_bn")(x)
            x = layers.LeakyReLU(0.1, name="head_reduce_relu")(x)
        if head == "fc":
            x = layers.Flatten(name="head_flatten")(x)
            x = layers.Dense(hidden_units, name="head_fc1")(x)
            x = layers.LeakyReLU(0.1, name="head_fc1_relu")(x)
            if dropout:
                x = layers.Dropout(dropout, name="head_dropout")(x)
            x = layers.Dense(grid * grid * outputs_per_cell, name="head_fc2")(x)
            x = layers.Reshape((grid, grid, outputs_per_cell), name="grid")(x)
        else:
            if dropout:
                x = layers.SpatialDropout2D(dropout, name="head_dropout")(x)
            x = layers.Conv2D(outputs_per_cell, 1, name="grid")(x)
        boxes = layers.Activation("sigmoid", name="box_terms")(x[..., : 5 * boxes_per_cell])
        classes = layers.Softmax(name="class_probabilities")(x[..., 5 * boxes_per_cell :])
        outputs = layers.Concatenate(axis=-1, name="predictions", dtype="float32")([boxes, classes])
        kwargs.setdefault("name", f"yolo_v1_{backbone}")
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
        self.offsets = yolo_cell_offsets(grid)
        self._config = {
            "backbone": backbone,
            "backbone_args": backbone_args,
            "feature_level": feature_level,
            "grid": grid,
            "boxes_per_cell": boxes_per_cell,
            "head_filters": head_filters,
            "hidden_units": hidden_units,
            "dropout": dropout,
            "lambda_coord": lambda_coord,
            "lambda_noobj": lambda_noobj,
            "preprocessing": preprocessing,
            "head": head,
        }

    def detection_losses(self, y, y_pred):
        c = self._config
        return yolo_v1_loss(
            y_pred,
            ops.cast(y["boxes"], "float32"),
            y["labels"],
            image_size=float(self.image_size),
            grid=c["grid"],
            num_boxes=c["boxes_per_cell"],
            num_classes=self.num_classes,
            offsets=ops.convert_to_tensor(self.offsets),
            lambda_coord=c["lambda_coord"],
            lambda_noobj=c["lambda_noobj"],
        )

    def decode(self, y_pred):
        c = self._config
        s, nb = c["grid"], c["boxes_per_cell"]
        batch = ops.shape(y_pred)[0]
        p = ops.reshape(ops.cast(y_pred, "float32"), (batch, s * s, 5 * nb + self.num_classes))
        box_terms = ops.reshape(p[..., : 5 * nb], (batch, s * s, nb, 5))
        boxes = yolo_v1_decode_boxes(
            box_terms[..., :4], float(self.image_size), s, ops.convert_to_tensor(self.offsets)
        )
        boxes = clip_to_image(
            ops.reshape(boxes, (batch, s * s * nb, 4)), float(self.image_size), float(self.image_size)
        )
        scores = box_terms[..., 4:5] * p[:, :, None, 5 * nb :]  # (B, S², nb, C)
        return boxes, ops.reshape(scores, (batch, s * s * nb, self.num_classes))

    def get_config(self):
        return {**self.base_config(), **self._config}


@registry.register("detector", "yolo_v1")
def yolo_v1(num_classes: int, **kwargs) -> YOLOv1:
    """YOLO v1 (S = 7, B = 2) with the constructor's defaults."""
    return YOLOv1(num_classes, **kwargs)
