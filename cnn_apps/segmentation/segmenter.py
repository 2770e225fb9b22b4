"""The contract every semantic segmenter follows.

A :class:`Segmenter` is a Keras functional model from raw pixels (B, H, W, 3), 0..255, to
per-pixel class scores (logits) (B, H, W, K) at the input resolution, class 0 being the
background. Its input side is free (``None``) but must be divisible by ``stride`` (the
deepest pooling's: 32 for the VGG-based FCNs and SegNet, 2**depth for U-Net); ``image_size``
is the size it is trained at. Training: ``fit(images, masks (B, H, W[, 1]) int)`` with the
loss from :func:`segmentation_loss` (pixels labelled ``ignore_label``, 255 by default, count
for nothing). Inference: :meth:`segment` returns ``class_map`` (B, H, W) int32 and
``probabilities`` (B, H, W, K), the exported SavedModel's outputs.
"""

from __future__ import annotations

import keras
from keras import ops

from cnn_apps.classes import check_class_names
from cnn_apps.errors import ModelArgumentError

IGNORE_LABEL = 255


@keras.saving.register_keras_serializable(package="cnn_apps", name="PixelCrossEntropy")
class PixelCrossEntropy(keras.losses.Loss):
    """Per-pixel softmax cross-entropy on logits (B, H, W, K) against masks (B, H, W[, 1]):
    the mean over the pixels not labelled ``ignore_label``. Under a distribution strategy the
    mean is over the counted pixels of the global batch (:func:`~cnn_apps.replicas.replica_share`;
    Keras' own ``ignore_class`` divides by each replica's count, which is not the same)."""

    def __init__(self, ignore_label: int = IGNORE_LABEL, name: str = "pixel_cross_entropy", **kwargs):
        kwargs.pop("reduction", None)  # the mean is computed here; Keras only adds it up
        super().__init__(name=name, reduction="sum", **kwargs)
        self.ignore_label = int(ignore_label)

    def call(self, y_true, y_pred):
        from cnn_apps.replicas import replica_share

        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):  # (B, H, W, 1)
            labels = labels[..., 0]
        valid = ops.not_equal(labels, self.ignore_label)
        ce = ops.sparse_categorical_crossentropy(
            ops.where(valid, labels, 0), ops.cast(y_pred, "float32"), from_logits=True
        )
        weight = ops.cast(valid, "float32")
        return replica_share(ops.sum(ce * weight), ops.sum(weight))

    def get_config(self):
        return {"name": self.name, "ignore_label": self.ignore_label}


def segmentation_loss(ignore_label: int = IGNORE_LABEL) -> PixelCrossEntropy:
    """Per-pixel softmax cross-entropy on logits, the ignored pixels left out of the mean."""
    return PixelCrossEntropy(ignore_label)


def check_divisible(image_size: int, stride: int, name: str) -> None:
    if image_size % stride:
        raise ModelArgumentError(
            f"{name} needs an input side divisible by {stride} (its total stride), got {image_size}; "
            f"try {max(stride, round(image_size / stride) * stride)}"
        )


class Segmenter(keras.Model):
    """Base class: subclasses build the graph and call ``super().__init__(inputs, outputs,
    num_classes=..., image_size=..., stride=...)``; ``get_config`` returns
    ``base_config()`` plus their own arguments."""

    def __init__(
        self,
        inputs,
        outputs,
        *,
        num_classes: int,
        image_size: int,
        stride: int,
        class_names=None,
        ignore_label: int = IGNORE_LABEL,
        **kwargs,
    ):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.class_names = check_class_names(
            num_classes, class_names, background=True, owner=type(self).__name__
        )
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.stride = int(stride)
        self.ignore_label = int(ignore_label)

    def segment(self, images) -> dict:
        """Raw-pixel images (B, H, W, 3), sides divisible by ``stride`` -> ``class_map`` (B, H, W)
        int32 and ``probabilities`` (B, H, W, K)."""
        logits = self(images, training=False)
        return {
            "class_map": ops.cast(ops.argmax(logits, axis=-1), "int32"),
            "probabilities": ops.softmax(logits, axis=-1),
        }

    def base_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "class_names": self.class_names,
            "ignore_label": self.ignore_label,
        }
