"""ImageClassifier: raw pixels in, class probabilities out.

The graph is ``pixels (0..255) -> scaling to [-1, 1] (:mod:`cnn_apps.preprocessing`) -> backbone
-> global average pool -> [dropout -> dense ReLU] * len(head_units) -> dropout -> dense softmax``,
so an exported model needs no client-side preprocessing. The backbone is picked by registry
name and kept as the nested model ``classifier.backbone`` (transfer learning freezes or swaps it).
"""

from __future__ import annotations

import json

import keras
from keras import layers

import cnn_apps.backbones  # noqa: F401  (registers the backbones picked by name)
from cnn_apps import registry
from cnn_apps.classes import check_class_names
from cnn_apps.errors import ModelArgumentError
from cnn_apps.preprocessing import preprocessing_layer

DROPOUT_PLACEMENTS = ("dense", "conv", "both")


@keras.saving.register_keras_serializable(package="cnn_apps")
class ImageClassifier(keras.Model):
    """Backbone + head.

    Args:
        num_classes: K, the size of the output.
        image_shape: (H, W, C) of the input pixels.
        backbone: a registered backbone name (``cnn-apps models`` lists them).
        width: the backbone's filter multiplier.
        dropout: dropout rate (0 disables), placed by ``dropout_placement``: ``dense``
            (before each dense layer of the head), ``conv`` (after each conv block of
            the backbone) or ``both``.
        head_units: widths of hidden dense layers between pooling and the output.
        l1, l2: penalties on every conv and dense kernel (0 disables).
        batch_norm: None keeps the backbone's default; True/False forces BN on/off.
        preprocessing: ``unit`` scales pixels to [-1, 1]; ``caffe`` is keras.applications'
            VGG/ResNet50 convention (RGB -> BGR, ImageNet mean subtracted), for ImageNet weights.
        backbone_args: extra keyword arguments for the backbone.
        class_names: K names, stored with the model (exports return them).
        backbone_trainable: False freezes the backbone (feature extraction).

    Input (B, H, W, C) float pixels 0..255; output ``probabilities`` (B, K).
    """

    def __init__(
        self,
        num_classes: int,
        image_shape=(64, 64, 3),
        backbone: str = "resnet_mini",
        width: float = 1.0,
        dropout: float = 0.2,
        backbone_args: dict | None = None,
        class_names=None,
        backbone_trainable: bool = True,
        head_units=(),
        dropout_placement: str = "dense",
        l1: float = 0.0,
        l2: float = 0.0,
        batch_norm: bool | None = None,
        preprocessing: str = "unit",
        **kwargs,
    ):
        class_names = check_class_names(num_classes, class_names, owner="ImageClassifier")
        if dropout_placement not in DROPOUT_PLACEMENTS:
            raise ModelArgumentError(
                f"ImageClassifier: dropout_placement must be one of {DROPOUT_PLACEMENTS}, "
                f"got {dropout_placement!r}"
            )
        # === Layers ===
        # JSON-shaped (tuples -> lists) so get_config is the same before and after saving
        backbone_args = json.loads(json.dumps(dict(backbone_args or {})))
        head_units = [int(u) for u in head_units]
        conv_dropout = dropout if dropout_placement in ("conv", "both") else 0.0
        dense_dropout = dropout if dropout_placement in ("dense", "both") else 0.0
        regularizer = keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None
        build = registry.get("backbone", backbone)
        self.backbone = build(
            input_shape=tuple(image_shape),
            width=width,
            batch_norm=batch_norm,
            block_dropout=conv_dropout,
            l1=l1,
            l2=l2,
            **backbone_args,
        )
        self.backbone.trainable = backbone_trainable
        scaling = preprocessing_layer(preprocessing)
        pool = layers.GlobalAveragePooling2D(name="avg_pool")
        hidden = [
            layers.Dense(u, activation="relu", kernel_regularizer=regularizer, name=f"head_fc{i + 1}")
            for i, u in enumerate(head_units)
        ]
        head = layers.Dense(
            num_classes,
            activation="softmax",
            dtype="float32",
            kernel_regularizer=regularizer,
            name="probabilities",
        )

        # === Functional model ===
        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = pool(self.backbone(scaling(inputs)))
        for i, dense in enumerate(hidden):
            if dense_dropout > 0:
                x = layers.Dropout(dense_dropout, name=f"head_dropout{i + 1}")(x)
            x = dense(x)
        if dense_dropout > 0:
            x = layers.Dropout(dense_dropout, name="head_dropout")(x)
        outputs = head(x)
        kwargs.setdefault("name", f"{backbone}_classifier")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.backbone_name = backbone
        self.width = width
        self.dropout = dropout
        self.dropout_placement = dropout_placement
        self.head_units = head_units
        self.l1, self.l2 = l1, l2
        self.batch_norm = batch_norm
        self.preprocessing = preprocessing
        self.backbone_args = backbone_args
        self.class_names = class_names

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "image_shape": self.image_shape,
            "backbone": self.backbone_name,
            "width": self.width,
            "dropout": self.dropout,
            "backbone_args": self.backbone_args,
            "class_names": self.class_names,
            "backbone_trainable": self.backbone.trainable,  # a frozen backbone stays frozen on reload
            "head_units": self.head_units,
            "dropout_placement": self.dropout_placement,
            "l1": self.l1,
            "l2": self.l2,
            "batch_norm": self.batch_norm,
            "preprocessing": self.preprocessing,
        }

    def same_architecture(self, num_classes: int, class_names=None) -> ImageClassifier:
        """A new classifier like this one (backbone, head, regularization) for other classes."""
        config = {k: v for k, v in self.get_config().items() if k not in ("name", "trainable")}
        config.update(num_classes=num_classes, class_names=class_names, backbone_trainable=True)
        return ImageClassifier(**config)


def classifier_from_config(
    config, num_classes: int, image_shape, class_names=None, **overrides
) -> ImageClassifier:
    """Build the classifier a :class:`~cnn_apps.config.Config` describes (model + regularization);
    ``overrides`` replace constructor arguments (e.g. ``preprocessing="caffe"``)."""
    m, r = config.model, config.regularization
    args = dict(
        backbone=m.backbone,
        width=m.width,
        dropout=r.dropout,
        dropout_placement=r.dropout_placement,
        l1=r.l1,
        l2=r.l2,
        batch_norm=r.batch_norm,
        head_units=m.head_units,
        backbone_args=m.backbone_args,
        class_names=class_names,
    )
    args.update(overrides)
    return ImageClassifier(num_classes, tuple(image_shape), **args)
