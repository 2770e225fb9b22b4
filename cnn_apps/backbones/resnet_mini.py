"""A compact ResNet for small images (28-128 px): the foundation's default backbone.

Stem: 3x3 conv (stride 2) + BN + ReLU; then stages of basic residual blocks (two
3x3 convs, identity shortcut, or a 1x1 projection when the shape changes), each
stage after the first halving the resolution. With the defaults (16-128 filters)
it has 0.3 M parameters and costs about 20 M multiply-adds per 64 px image, so it
trains on a 2-core CPU in minutes. The zoo's paper-sized ResNets share the block
idea at full scale.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from cnn_apps.backbones.base import Backbone
from cnn_apps.backbones.batch_norm import FusedBatchNormalization
from cnn_apps.backbones.layers import pointwise_subsample
from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D
from cnn_apps.errors import ModelArgumentError
from cnn_apps.registry import register


class _Conv:
    """Conv (+ BN) (+ ReLU) with the regularization switches of one backbone."""

    def __init__(self, batch_norm: bool, regularizer, bn_momentum: float):
        self.batch_norm = batch_norm
        self.regularizer = regularizer
        self.bn_momentum = bn_momentum

    def __call__(self, x, filters, kernel, strides, name, activation=True):
        x, strides = pointwise_subsample(x, kernel, strides, name)
        x = MatmulGradConv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=not self.batch_norm,
            kernel_initializer="he_normal",
            kernel_regularizer=self.regularizer,
            name=f"{name}_conv",
        )(x)
        if self.batch_norm:
            x = FusedBatchNormalization(momentum=self.bn_momentum, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if activation else x


def basic_block(x, filters: int, strides: int, name: str, conv: _Conv):
    """Two 3x3 conv layers plus a shortcut (projected when the shape changes)."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(x, filters, 1, strides, f"{name}_proj", activation=False)
    y = conv(x, filters, 3, strides, f"{name}_1")
    y = conv(y, filters, 3, 1, f"{name}_2", activation=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


@register("backbone", "resnet_mini")
@keras.saving.register_keras_serializable(package="cnn_apps")
class ResNetMini(Backbone):
    """Compact residual backbone.

    Args:
        input_shape: (H, W, C) of the (already scaled) input; H, W may be None.
        stage_filters: filters per stage, before ``width`` scaling.
        blocks_per_stage: basic blocks per stage (same length as ``stage_filters``).
        stem_filters: filters of the stem conv.
        stem_strides: stride of the stem conv (2 halves the input at once; 1 keeps detail).
        width: multiplier applied to every filter count (grow it against high bias).
        batch_norm: BN after every conv (None = True, this backbone's default).
        block_dropout: dropout rate after every stage (0 disables).
        l1, l2: kernel penalties on every conv (0 disables).
        bn_momentum: of the BN moving averages. 0.9, not Keras' 0.99: small datasets give
            few steps per epoch, and with 0.99 the inference-mode statistics lag far behind
            the weights for the first hundreds of steps (validation looks like chance).

    Output: the last stage's feature map (B, H/16, W/16, F). ``pyramid_outputs`` maps
    ``P{k}`` (stride 2**k; aliases ``C{k}``) to each stage's output layer name.
    """

    def __init__(
        self,
        input_shape=(None, None, 3),
        stage_filters=(16, 32, 64, 128),
        blocks_per_stage=(1, 1, 1, 1),
        stem_filters=16,
        stem_strides=2,
        width=1.0,
        batch_norm=None,
        block_dropout=0.0,
        l1=0.0,
        l2=0.0,
        bn_momentum=0.9,
        **kwargs,
    ):
        if len(stage_filters) != len(blocks_per_stage):
            raise ModelArgumentError(
                f"ResNetMini: stage_filters {tuple(stage_filters)} and blocks_per_stage "
                f"{tuple(blocks_per_stage)} must have the same length (one entry per stage)"
            )
        scale = lambda f: max(8, int(math.ceil(f * width / 8) * 8))  # noqa: E731 - multiple of 8
        regularizer = keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None
        conv = _Conv(True if batch_norm is None else bool(batch_norm), regularizer, bn_momentum)
        inputs = keras.Input(shape=tuple(input_shape), name="pixels")
        x = conv(inputs, scale(stem_filters), 3, stem_strides, "stem")
        stride, pyramid = stem_strides, {}
        for s, (filters, blocks) in enumerate(zip(stage_filters, blocks_per_stage)):
            for b in range(blocks):
                strides = 2 if (b == 0 and s > 0) else 1
                stride *= strides
                x = basic_block(x, scale(filters), strides, f"stage{s + 1}_block{b + 1}", conv)
            pyramid[f"C{int(math.log2(stride))}"] = f"stage{s + 1}_block{blocks}_out"
            if block_dropout > 0:
                x = layers.Dropout(block_dropout, name=f"stage{s + 1}_dropout")(x)
        config = {
            "input_shape": tuple(input_shape),
            "stage_filters": tuple(stage_filters),
            "blocks_per_stage": tuple(blocks_per_stage),
            "stem_filters": stem_filters,
            "stem_strides": stem_strides,
            "width": width,
            "batch_norm": batch_norm,
            "block_dropout": block_dropout,
            "l1": l1,
            "l2": l2,
            "bn_momentum": bn_momentum,
        }
        kwargs.setdefault("name", "resnet_mini")
        super().__init__(inputs, x, pyramid=pyramid, config=config, **kwargs)
