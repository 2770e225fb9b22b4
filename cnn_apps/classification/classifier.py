"""ImageClassifier: raw pixels in, class probabilities out.

The graph is ``pixels (0..255) -> scaling to [-1, 1] -> backbone -> global average
pool -> dropout -> dense softmax``, so an exported model needs no client-side
preprocessing. The backbone is picked by registry name and kept as the nested
model ``classifier.backbone`` (transfer learning freezes or swaps it).
"""

from __future__ import annotations

import json

import keras
from keras import layers

from cnn_apps import registry


@keras.saving.register_keras_serializable(package="cnn_apps")
class ImageClassifier(keras.Model):
    """Backbone + head.

    Args:
        num_classes: K, the size of the output.
        image_shape: (H, W, C) of the input pixels.
        backbone: a registered backbone name (``cnn-apps models`` lists them).
        width: the backbone's filter multiplier.
        dropout: rate before the dense layer (0 disables).
        backbone_args: extra keyword arguments for the backbone.
        class_names: K names, stored with the model (exports return them).
        backbone_trainable: False freezes the backbone (feature extraction).

    Input (B, H, W, C) float pixels 0..255; output ``probabilities`` (B, K).
    """

    def __init__(self, num_classes: int, image_shape=(64, 64, 3), backbone: str = "resnet_mini",
                 width: float = 1.0, dropout: float = 0.2, backbone_args: dict | None = None,
                 class_names=None, backbone_trainable: bool = True, **kwargs):
        # === Layers ===
        # JSON-shaped (tuples -> lists) so get_config is the same before and after saving
        backbone_args = json.loads(json.dumps(dict(backbone_args or {})))
        build = registry.get("backbone", backbone)
        self.backbone = build(input_shape=tuple(image_shape), width=width, **backbone_args)
        self.backbone.trainable = backbone_trainable
        scaling = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="pixel_scaling")
        pool = layers.GlobalAveragePooling2D(name="avg_pool")
        head_dropout = layers.Dropout(dropout, name="head_dropout") if dropout > 0 else None
        head = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")

        # === Functional model ===
        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = self.backbone(scaling(inputs))
        x = pool(x)
        if head_dropout is not None:
            x = head_dropout(x)
        outputs = head(x)
        kwargs.setdefault("name", f"{backbone}_classifier")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.backbone_name = backbone
        self.width = width
        self.dropout = dropout
        self.backbone_args = backbone_args
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")

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
        }
