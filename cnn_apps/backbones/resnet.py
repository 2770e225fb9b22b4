"""ResNet-18/34/50 (He et al., 2015) and the paper's plain baselines, as one class.

A variant is a list of blocks per stage plus a block type, not a copy:

* ``basic``: two 3x3 convs (ResNet-18 (2, 2, 2, 2), ResNet-34 (3, 4, 6, 3));
* ``bottleneck``: 1x1 reduce, 3x3, 1x1 expand x4 (ResNet-50 (3, 4, 6, 3)), stride on
  the first 1x1 as keras.applications.ResNet50 (v1), or on the 3x3 with
  ``stride_in_3x3=True`` as torchvision's ``resnet50`` (v1.5: the same 25,557,032 parameters,
  4.09 G multiply-adds instead of 3.86 G; ``resnet50_v1_5``, the same graph as torchvision's);
* ``shortcuts=False``: the same layers without the identity/projection shortcuts
  (plain-18, plain-34).

Layer names and structure follow keras.applications.ResNet50 (``conv1_pad``,
``conv1_conv``, ``conv1_bn``, ``conv1_relu``, ``pool1_pad``, ``pool1_pool``,
``conv2_block1_0_conv`` (projection), ``conv2_block1_1_conv`` ... ``conv5_block3_out``,
``avg_pool``, ``predictions``; BN epsilon 1.001e-5), so its weights load by name. A
shortcut is projected (1x1 conv + BN) on the first block of a stage when the shape
changes (always for bottlenecks; stages 3-5 for basic blocks, torchvision's rule).

Parameter counts at 224 px, 1000 classes: ``conv_bias=True`` ResNet-50 has 25,636,712
(keras.applications); ``conv_bias=False`` (the paper's, default) gives trainable
11,689,512 / 21,797,672 / 25,557,032 for ResNet-18/34/50 (torchvision's).
"""

from __future__ import annotations

import keras
from keras import layers

from cnn_apps.backbones.base import Backbone
from cnn_apps.backbones.batch_norm import FusedBatchNormalization
from cnn_apps.backbones.layers import (
    BN_EPSILON,
    block_dropout_layer,
    check_input_shape,
    check_pooling,
    head,
    kernel_regularizer,
    pointwise_subsample,
    scale_filters,
)
from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D
from cnn_apps.errors import ModelArgumentError
from cnn_apps.registry import register

STAGE_FILTERS = (64, 128, 256, 512)
BLOCKS = ("basic", "bottleneck")


class _Units:
    """Conv(+BN)(+ReLU) with the model-wide choices (bias, BN, regularizer) bound once."""

    def __init__(self, use_bias: bool, batch_norm: bool, l1: float, l2: float):
        self.use_bias, self.batch_norm, self.l1, self.l2 = use_bias, batch_norm, l1, l2

    def __call__(self, x, filters, kernel, name, strides=1, padding="same", relu=True):
        x, strides = pointwise_subsample(x, kernel, strides, name)
        x = MatmulGradConv2D(
            filters,
            kernel,
            strides=strides,
            padding=padding,
            use_bias=self.use_bias,
            kernel_initializer="he_normal",
            kernel_regularizer=kernel_regularizer(self.l1, self.l2),
            name=f"{name}_conv",
        )(x)
        if self.batch_norm:
            x = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def basic_block(unit, x, filters, strides, project, shortcut, name):
    """3x3 conv -> 3x3 conv (+ shortcut). (B, H, W, C) -> (B, H/s, W/s, filters)."""
    if strides > 1:  # symmetric padding as the paper/torchvision ('same' pads one side at stride 2)
        y = layers.ZeroPadding2D(1, name=f"{name}_1_pad")(x)
        y = unit(y, filters, 3, f"{name}_1", strides=strides, padding="valid")
    else:
        y = unit(x, filters, 3, f"{name}_1")
    y = unit(y, filters, 3, f"{name}_2", relu=not shortcut)
    return _merge(unit, x, y, filters, strides, project, shortcut, name)


def bottleneck_block(unit, x, filters, strides, project, shortcut, name, stride_in_3x3=False):
    """1x1 (stride here in v1) -> 3x3 (stride here in v1.5) -> 1x1 x4 (+ shortcut).
    (B, H, W, C) -> (B, H/s, W/s, 4 filters)."""
    if not stride_in_3x3:
        y = unit(x, filters, 1, f"{name}_1", strides=strides)
        y = unit(y, filters, 3, f"{name}_2")
    else:
        y = unit(x, filters, 1, f"{name}_1")
        if strides > 1:  # symmetric padding, as torchvision's padding=1
            y = layers.ZeroPadding2D(1, name=f"{name}_2_pad")(y)
            y = unit(y, filters, 3, f"{name}_2", strides=strides, padding="valid")
        else:
            y = unit(y, filters, 3, f"{name}_2")
    y = unit(y, 4 * filters, 1, f"{name}_3", relu=not shortcut)
    return _merge(unit, x, y, 4 * filters, strides, project, shortcut, name)


def _merge(unit, x, y, out_filters, strides, project, shortcut, name):
    if not shortcut:  # plain net: the block ends with its last conv's ReLU
        return layers.Identity(name=f"{name}_out")(y)
    if project:
        x = unit(x, out_filters, 1, f"{name}_0", strides=strides, relu=False)
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


@keras.saving.register_keras_serializable(package="cnn_apps")
class ResNet(Backbone):
    """Residual (or plain) network, v1.

    Args:
        input_shape: (H, W, C); H, W >= 32 or None.
        blocks_per_stage: blocks in stages conv2..conv5 (4 entries).
        block: "basic" (two 3x3) or "bottleneck" (1x1-3x3-1x1, x4 expansion).
        shortcuts: False drops every shortcut (the paper's plain nets).
        conv_bias: biases on the convs before BN (keras.applications has them; the
            paper and torchvision do not). Without BN convs always get biases.
        stride_in_3x3: bottleneck blocks downsample in their 3x3 conv (ResNet v1.5,
            torchvision's layout) instead of their first 1x1 (v1, the paper's and
            keras.applications').
        width: multiplier of every conv's filters.
        include_top: add global average pooling (``avg_pool``) and ``predictions``.
        num_classes: size of ``predictions``.
        pooling: without the top, None keeps (B, H/32, W/32, F); "avg" / "max" give (B, F).
        classifier_activation: activation of ``predictions`` ("softmax"; None for logits).
        batch_norm: None/True as published (BN after every conv); False removes BN.
        block_dropout: spatial dropout rate after each stage (0 = none).
        l1, l2: L1L2 kernel regularizer on every Conv2D and Dense when either is > 0.
        dropout: accepted for a uniform backbone interface; unused (ResNet has no hidden FC).

    Input (B, H, W, C) scaled pixels (for keras.applications weights: as
    ``resnet.preprocess_input`` makes them). Output: the top's (B, num_classes) or the
    features above; F = 512w (basic) or 2048w (bottleneck). ``pyramid_outputs``: ``P2``..``P5``
    (strides 4..32; aliases ``C2``..``C5``) -> each stage's last ``_out`` layer.
    """

    def __init__(
        self,
        input_shape=(None, None, 3),
        blocks_per_stage=(2, 2, 2, 2),
        block="basic",
        shortcuts=True,
        conv_bias=False,
        stride_in_3x3=False,
        width=1.0,
        include_top=False,
        num_classes=1000,
        pooling=None,
        classifier_activation="softmax",
        batch_norm=None,
        block_dropout=0.0,
        l1=0.0,
        l2=0.0,
        dropout=0.5,
        **kwargs,
    ):
        # === Arguments (layers are made as the graph is traced) ===
        input_shape = check_input_shape(input_shape)
        check_pooling(pooling)
        if block not in BLOCKS:
            raise ModelArgumentError(f"ResNet block must be one of {BLOCKS}, got {block!r}")
        if len(blocks_per_stage) != len(STAGE_FILTERS):
            raise ModelArgumentError(
                f"blocks_per_stage needs {len(STAGE_FILTERS)} entries (conv2..conv5), "
                f"got {tuple(blocks_per_stage)}"
            )
        bn = batch_norm is None or bool(batch_norm)
        unit = _Units(use_bias=conv_bias or not bn, batch_norm=bn, l1=l1, l2=l2)
        if stride_in_3x3 and block != "bottleneck":
            raise ModelArgumentError(
                "stride_in_3x3 applies to bottleneck blocks (basic blocks stride in a 3x3)"
            )
        if block == "basic":
            block_fn = basic_block
        else:

            def block_fn(*args):
                return bottleneck_block(*args, stride_in_3x3=stride_in_3x3)

        expansion = 1 if block == "basic" else 4

        # === Functional model ===
        inputs = keras.Input(shape=input_shape, name="pixels")
        x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
        x = unit(x, scale_filters(64, width), 7, "conv1", strides=2, padding="valid")
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        channels, pyramid = scale_filters(64, width), {}
        for s, (filters, n) in enumerate(zip(STAGE_FILTERS, blocks_per_stage)):
            filters, stage = scale_filters(filters, width), f"conv{s + 2}"
            for b in range(n):
                strides = 2 if (b == 0 and s > 0) else 1
                project = strides != 1 or channels != filters * expansion
                x = block_fn(unit, x, filters, strides, project, shortcuts, f"{stage}_block{b + 1}")
                channels = filters * expansion
            pyramid[f"C{s + 2}"] = f"{stage}_block{n}_out"
            x = block_dropout_layer(x, block_dropout, f"{stage}_dropout")
        outputs = head(
            x,
            include_top=include_top,
            num_classes=num_classes,
            pooling=pooling,
            classifier_activation=classifier_activation,
            l1=l1,
            l2=l2,
        )

        # === Config ===
        config = {
            "input_shape": input_shape,
            "blocks_per_stage": tuple(blocks_per_stage),
            "block": block,
            "shortcuts": shortcuts,
            "conv_bias": conv_bias,
            "stride_in_3x3": stride_in_3x3,
            "width": width,
            "include_top": include_top,
            "num_classes": num_classes,
            "pooling": pooling,
            "classifier_activation": classifier_activation,
            "batch_norm": batch_norm,
            "block_dropout": block_dropout,
            "l1": l1,
            "l2": l2,
            "dropout": dropout,
        }
        kwargs.setdefault("name", "resnet")
        super().__init__(inputs, outputs, pyramid=pyramid, config=config, **kwargs)


def _variant(name, blocks_per_stage, block, shortcuts, **fixed):
    def build(**kwargs) -> ResNet:
        kwargs.setdefault("name", name)
        return ResNet(blocks_per_stage=blocks_per_stage, block=block, shortcuts=shortcuts, **fixed, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{name}: {block} blocks {blocks_per_stage}, "
        f"{'with' if shortcuts else 'without'} shortcuts"
        + "".join(f", {k}={v!r}" for k, v in fixed.items())
        + ". Keyword arguments: ``ResNet``'s."
    )
    return register("backbone", name)(build)


resnet18 = _variant("resnet18", (2, 2, 2, 2), "basic", True)
resnet34 = _variant("resnet34", (3, 4, 6, 3), "basic", True)
resnet50 = _variant("resnet50", (3, 4, 6, 3), "bottleneck", True)
resnet50_v1_5 = _variant("resnet50_v1_5", (3, 4, 6, 3), "bottleneck", True, stride_in_3x3=True)
plain18 = _variant("plain18", (2, 2, 2, 2), "basic", False)
plain34 = _variant("plain34", (3, 4, 6, 3), "basic", False)
