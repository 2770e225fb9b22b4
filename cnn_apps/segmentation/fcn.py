"""Fully convolutional networks, FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer & Darrell, 2015).

A VGG classifier made fully convolutional: its FC layers become convolutions (``fc6``, a
7x7 conv with 4096 filters at paper size; ``fc7``, a 1x1 conv with 4096), so the network
maps an image of any size to a coarse grid of class scores (``score_fr``, 1/32 of the input).
The scores are upsampled back to the input by transposed convolutions initialised to
bilinear interpolation, and the finer variants fuse in predictions from shallower, more
precise layers before the last upsampling:

* FCN-32s: ``score_fr`` upsampled x32 in one step.
* FCN-16s: ``score_fr`` upsampled x2 (learned), added to ``score_pool4`` (a 1x1 conv on
  pool4, zero-initialised so training starts from FCN-32s' prediction), upsampled x16.
* FCN-8s: that sum upsampled x2 again, added to ``score_pool3``, upsampled x8.

As in the paper the last upsampling is fixed bilinear interpolation and the intermediate
x2 ones are initialised to it and learned. A trained VGG classifier's convolutions and FC
weights carry over: :func:`load_classifier_weights` copies its conv layers by name and
reshapes ``fc1`` / ``fc2``'s Dense kernels into ``fc6`` / ``fc7`` (``fc_kernel`` must be
the classifier's pool5 side: 7 at 224 px).

Differences from the Caffe reference, on purpose: no 100-pixel input padding and no crop
layers ('same' padding keeps every map an exact fraction of the input, so the input side
must be divisible by 32); optional batch norm and a width multiplier for small inputs
on a CPU.
"""

from __future__ import annotations

import json

import keras
import numpy as np
from keras import layers

from cnn_apps import registry
from cnn_apps.backbones.features import pyramid_features
from cnn_apps.errors import ModelArgumentError
from cnn_apps.preprocessing import preprocessing_layer
from cnn_apps.registry import register
from cnn_apps.segmentation.segmenter import IGNORE_LABEL, Segmenter
from cnn_apps.segmentation.upsampling import transposed_upsampler

VARIANTS = {"32s": (), "16s": ("pool4",), "8s": ("pool4", "pool3")}  # skips fused, deepest first
STRIDE = 32
VGG_BACKBONES = ("vgg16", "vgg19")


@keras.saving.register_keras_serializable(package="cnn_apps")
class FCN(Segmenter):
    """FCN on a VGG backbone.

    Args:
        num_classes: K, background included.
        variant: ``32s``, ``16s`` or ``8s``.
        image_size: the training input side (any multiple of 32 works at inference).
        backbone: ``vgg16`` (the paper) or ``vgg19``; backbone_args: its arguments (``width``,
            ``batch_norm``, ...).
        fc_filters: filters of fc6 and fc7 (4096 in the paper).
        fc_kernel: fc6's kernel side (7 in the paper: the classifier's pool5 side).
        dropout: after fc6 and fc7 (0.5).
        learn_final_upsampling: False (the paper) keeps the last upsampling bilinear.
        preprocessing: ``unit`` or ``caffe`` (for ImageNet weights).
        class_names: K names, ``background`` first.
    Input (B, H, W, 3) pixels 0..255, H and W multiples of 32; output logits (B, H, W, K).
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "8s",
        image_size: int = 96,
        backbone: str = "vgg16",
        backbone_args: dict | None = None,
        fc_filters: int = 4096,
        fc_kernel: int = 7,
        dropout: float = 0.5,
        learn_final_upsampling: bool = False,
        preprocessing: str = "unit",
        class_names=None,
        ignore_label: int = IGNORE_LABEL,
        **kwargs,
    ):
        if variant not in VARIANTS:
            raise ModelArgumentError(f"FCN variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if backbone not in VGG_BACKBONES:
            raise ModelArgumentError(
                f"FCN is built on a VGG ({', '.join(VGG_BACKBONES)}: its pool3..pool5 and FC "
                f"layers), got backbone {backbone!r}"
            )
        # === Layers ===
        backbone_args = json.loads(json.dumps(dict(backbone_args or {})))
        self.backbone = registry.get("backbone", backbone)(input_shape=(None, None, 3), **backbone_args)
        skips = VARIANTS[variant]
        features = pyramid_features(self.backbone, ["pool5", *skips])
        fc6 = layers.Conv2D(fc_filters, fc_kernel, padding="same", activation="relu", name="fc6")
        fc7 = layers.Conv2D(fc_filters, 1, activation="relu", name="fc7")
        score_fr = layers.Conv2D(num_classes, 1, name="score_fr")
        # zero-initialised: a finer net starts from its coarser parent's prediction
        score_skips = [
            layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=f"score_{s}") for s in skips
        ]
        up2 = [transposed_upsampler(num_classes, 2, name=f"upscore_{s}") for s in skips]
        final_factor = STRIDE // 2 ** len(skips)
        final = transposed_upsampler(
            num_classes, final_factor, trainable=learn_final_upsampling, name=f"upscore{final_factor}"
        )

        # === Functional model ===
        inputs = keras.Input(shape=(None, None, 3), name="images")
        maps = features(preprocessing_layer(preprocessing)(inputs))
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        x = fc6(maps[0])
        if dropout:
            x = layers.Dropout(dropout, name="drop6")(x)
        x = fc7(x)
        if dropout:
            x = layers.Dropout(dropout, name="drop7")(x)
        x = score_fr(x)
        for skip_map, score, up, name in zip(maps[1:], score_skips, up2, skips):
            x = layers.Add(name=f"fuse_{name}")([up(x), score(skip_map)])
        outputs = layers.Activation("linear", dtype="float32", name="logits")(final(x))
        kwargs.setdefault("name", f"fcn{variant}")
        super().__init__(
            inputs,
            outputs,
            num_classes=num_classes,
            image_size=image_size,
            stride=STRIDE,
            class_names=class_names,
            ignore_label=ignore_label,
            **kwargs,
        )

        # === Config ===
        self._config = {
            "variant": variant,
            "backbone": backbone,
            "backbone_args": backbone_args,
            "fc_filters": fc_filters,
            "fc_kernel": fc_kernel,
            "dropout": dropout,
            "learn_final_upsampling": learn_final_upsampling,
            "preprocessing": preprocessing,
        }

    def get_config(self):
        return {**self.base_config(), **self._config}


def load_classifier_weights(fcn: FCN, classifier) -> list[str]:
    """Copy a VGG classifier's weights into an FCN: every backbone conv (and batch norm) by
    layer name, and its ``fc1`` / ``fc2`` Dense layers into the ``fc6`` / ``fc7`` convolutions
    (a Dense kernel (S*S*C, F) is the (S, S, C, F) conv kernel Flatten unrolled, row-major).
    ``classifier``: a VGG built with ``include_top=True`` (or a model containing one).
    Returns the names of the layers that were filled."""
    vgg = _find_vgg(classifier)
    if vgg is None:
        raise ValueError(f"{classifier.name} holds no VGG with fc1 / fc2 (build it with include_top=True)")
    loaded = []
    for layer in fcn.backbone.layers:
        try:
            source = vgg.get_layer(layer.name)
        except ValueError:
            continue
        if layer.weights and len(layer.weights) == len(source.weights):
            layer.set_weights(source.get_weights())
            loaded.append(layer.name)
    for dense_name, conv_name in (("fc1", "fc6"), ("fc2", "fc7")):
        conv, dense = fcn.get_layer(conv_name), vgg.get_layer(dense_name)
        kernel, bias = dense.get_weights()
        shape = tuple(conv.kernel.shape)
        if int(np.prod(shape[:3])) != kernel.shape[0] or shape[3] != kernel.shape[1]:
            raise ValueError(
                f"{dense_name} kernel {kernel.shape} does not fold into {conv_name} {shape}: set "
                "fc_kernel to the classifier's pool5 side and fc_filters to its FC width"
            )
        conv.set_weights([kernel.reshape(shape), bias])
        loaded.append(conv_name)
    return loaded


def _find_vgg(model):
    """``model`` itself when it has ``fc1`` and ``fc2``, else the first nested model that does,
    else None."""
    if {"fc1", "fc2"} <= {layer.name for layer in model.layers}:
        return model
    nested = (_find_vgg(layer) for layer in model.layers if isinstance(layer, keras.Model))
    return next((m for m in nested if m is not None), None)


def _variant(variant: str):
    def build(num_classes: int, **kwargs) -> FCN:
        return FCN(num_classes, variant=variant, **kwargs)

    build.__doc__ = f"FCN-{variant} on VGG-16."
    build.__name__ = f"fcn{variant}"
    return build


for _v in VARIANTS:
    register("segmenter", f"fcn{_v}")(_variant(_v))
