"""Pixel scaling layers shared by classifiers, detectors and segmenters: a model's first layer
turns raw pixels (B, H, W, 3), 0..255, into what its backbone expects, so an exported model
needs no client-side preprocessing.

* ``unit``: pixels to [-1, 1] (``keras.layers.Rescaling``)
* ``caffe``: keras.applications' VGG/ResNet50 convention (:class:`CaffePreprocessing`), what
  ImageNet weights copied from keras.applications expect
"""

from __future__ import annotations

import keras
from keras import layers


# Registered as "cnn_apps>CaffePreprocessing", the name it had in cnn_apps.classification.classifier:
# .keras files saved before the move still load.
@keras.saving.register_keras_serializable(package="cnn_apps")
class CaffePreprocessing(layers.Layer):
    """RGB pixels 0..255 -> BGR minus the ImageNet channel means (keras.applications' "caffe"
    mode, what VGG16/19 and ResNet50 ImageNet weights expect). (B, H, W, 3) -> same."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, images):
        bgr = keras.ops.flip(keras.ops.cast(images, self.compute_dtype), axis=-1)
        return bgr - keras.ops.convert_to_tensor(self.MEAN_BGR, dtype=self.compute_dtype)


def preprocessing_layer(kind: str, name: str = "pixel_scaling") -> layers.Layer:
    """``unit``: pixels to [-1, 1]; ``caffe``: keras.applications' VGG/ResNet50 convention."""
    if kind == "unit":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)
    if kind == "caffe":
        return CaffePreprocessing(name=name)
    raise ValueError(f"preprocessing must be 'unit' or 'caffe', got {kind!r}")
