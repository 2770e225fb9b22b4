"""The backbone zoo at a glance: parameters and multiply-adds of every registered backbone."""

from __future__ import annotations

import gc
import inspect
import typing

import keras

import cnn_apps.backbones  # noqa: F401  (registers the built-in backbones)
from cnn_apps import registry
from cnn_apps.backbones.flops import count_macs

PAPER_SIZES = {"alexnet": 227}  # the paper size where it is not 224 (55-27-13-6 maps)


def _accepts(build, arg: str) -> bool:
    """Whether ``build`` takes ``arg``: its own signature, or, for a builder function that
    forwards ``**kwargs``, the signature of the class its return annotation names."""
    target = build
    if not inspect.isclass(build):
        params = inspect.signature(build).parameters
        if arg in params:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
        target = typing.get_type_hints(build).get("return")
        if not inspect.isclass(target):
            return False
    return arg in inspect.signature(target.__init__).parameters


def build_classifier(name: str, size: int, num_classes: int = 1000):
    """``name`` built at ``size`` px with a ``num_classes`` output.

    A zoo backbone builds its own top (``include_top=True``); one without a top
    (``resnet_mini``) gets global average pooling + a dense layer, as ImageClassifier adds.
    """
    build = registry.get("backbone", name)
    shape = (size, size, 3)
    if _accepts(build, "include_top"):
        return build(input_shape=shape, include_top=True, num_classes=num_classes)
    backbone = build(input_shape=shape)
    inputs = keras.Input(shape=shape)
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=f"{name}_top")


def zoo_table(image_size: int = 224, num_classes: int = 1000) -> list[dict]:
    """One row per registered backbone: ``{name, params, macs, input_size}``.

    Each is built with a ``num_classes`` top at ``image_size`` px; at the default 224 a
    backbone whose paper size differs uses that instead (AlexNet: 227). ``macs`` are
    multiply-adds per image (``flops.count_macs``). Builds one model at a time (VGG is
    140 M parameters) and frees it.
    """
    rows = []
    for name in registry.names("backbone"):
        size = PAPER_SIZES.get(name, image_size) if image_size == 224 else image_size
        model = build_classifier(name, size, num_classes)
        rows.append(
            {"name": name, "params": int(model.count_params()), "macs": count_macs(model), "input_size": size}
        )
        del model
        gc.collect()
    return rows
