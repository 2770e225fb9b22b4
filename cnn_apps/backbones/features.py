"""A registered backbone built at a detector's or segmenter's input size, and a model of its
pyramid features (shared by :mod:`cnn_apps.detection` and :mod:`cnn_apps.segmentation`)."""

from __future__ import annotations

import json

import keras

import cnn_apps.backbones  # noqa: F401  (registers the built-in backbones)
from cnn_apps import registry
from cnn_apps.errors import ModelArgumentError


def build_backbone(name: str, image_size: int, backbone_args: dict | None):
    """The registered backbone at this input size (``backbone_args`` JSON-normalised)
    -> (backbone, the normalised args). Importing this module imports :mod:`cnn_apps.backbones`,
    which registers the built-in backbones."""
    args = json.loads(json.dumps(dict(backbone_args or {})))
    return registry.get("backbone", name)(input_shape=(image_size, image_size, 3), **args), args


def pyramid_features(backbone, levels):
    """A model from the backbone's input to the named ``pyramid_outputs`` levels (``P3``..``P5``
    at strides 8..32 in every family, or the family's names: ``C3``..``C5`` for ResNets,
    ``pool3``..``pool5`` for VGG) or layer names."""
    pyramid = backbone.pyramid_outputs
    names = []
    for level in levels:
        name = pyramid.get(level, level)
        try:
            backbone.get_layer(name)
        except ValueError as exc:
            known = pyramid.names() if hasattr(pyramid, "names") else list(pyramid)
            raise ModelArgumentError(
                f"backbone '{backbone.name}' has no feature level or layer {level!r}; "
                f"levels: {', '.join(known)}"
            ) from exc
        names.append(name)
    return keras.Model(
        backbone.inputs, [backbone.get_layer(n).output for n in names], name=f"{backbone.name}_features"
    )
