"""Building blocks shared by the zoo backbones (VGG, AlexNet, ResNet): filter scaling,
the kernel regularizer, the conv unit with its batch-norm switch, pooling padding for
small inputs, block dropout and the keras.applications-style top."""

from __future__ import annotations

import math

import keras
from keras import layers

from cnn_apps.backbones.batch_norm import FusedBatchNormalization
from cnn_apps.errors import ModelArgumentError, ModelError

MIN_SIZE = 32  # every zoo backbone builds from 32 px up
BN_EPSILON = 1.001e-5  # keras.applications' value, so ported BN statistics mean the same


def scale_filters(filters: int, width: float) -> int:
    """``filters * width`` rounded up to a multiple of 8 (exact at width=1 for the zoo)."""
    return max(8, int(math.ceil(filters * width / 8) * 8))


def kernel_regularizer(l1: float, l2: float):
    """A fresh L1L2 regularizer when either weight is > 0, else None (the default)."""
    return keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 > 0 or l2 > 0) else None


FEW_CHANNELS = 32  # below this, strided 1x1 convolutions subsample first (pointwise_subsample)


def pointwise_subsample(x, kernel, strides, name: str):
    """``(x, strides)`` for a convolution about to run on ``x``. A 1x1 convolution with stride
    ``s`` over fewer than :data:`FEW_CHANNELS` input channels (the tiny widths of tests and
    small models) takes every ``s``-th pixel first (``MaxPooling2D`` with a 1x1 window, no
    weights) and then runs at stride 1: the same numbers, and it avoids a oneDNN bug of
    TensorFlow 2.21 on CPU, whose filter gradient of such a convolution (measured at 4 and 8
    channels) corrupts the heap and kills the process when the batch size is odd (an epoch's
    last batch). Wider layers, where the bug was not seen, and other kernels pass through, so
    the full-size zoo stays layer for layer the published graphs."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    step = (strides, strides) if isinstance(strides, int) else tuple(strides)
    if kernel != (1, 1) or step == (1, 1) or (x.shape[-1] or 0) >= FEW_CHANNELS:
        return x, strides
    return layers.MaxPooling2D(pool_size=1, strides=step, padding="same", name=f"{name}_subsample")(x), 1


def check_input_shape(input_shape, min_size: int = MIN_SIZE) -> tuple:
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ModelArgumentError(f"input_shape must be (H, W, C), got {shape}")
    for side in shape[:2]:
        if side is not None and side < min_size:
            raise ModelArgumentError(
                f"input_shape {shape}: the zoo backbones need at least {min_size} px per side"
            )
    return shape


def check_pooling(pooling):
    if pooling not in (None, "avg", "max"):
        raise ModelArgumentError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    return pooling


def conv_unit(
    x, filters, kernel, name, *, strides=1, padding="same", groups=1, batch_norm=False, l1=0.0, l2=0.0
):
    """Conv + ReLU (VGG/AlexNet as published: one ``Conv2D(activation="relu")`` layer named
    ``name``), or with ``batch_norm`` conv (no bias: BN's beta replaces it) + ``name_bn`` +
    ``name_relu``. (B, H, W, C) -> (B, H', W', filters)."""
    conv = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        groups=groups,
        activation=None if batch_norm else "relu",
        use_bias=not batch_norm,
        kernel_initializer="he_normal",
        kernel_regularizer=kernel_regularizer(l1, l2),
        name=name,
    )
    x = conv(x)
    if batch_norm:
        x = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def pool_padding(x, window: int) -> str:
    """'valid' (the papers' pools) unless the map is already smaller than the window, where
    'same' keeps a 1-2 px map alive (small inputs, e.g. AlexNet at 32 px)."""
    sides = [s for s in x.shape[1:3] if s is not None]
    return "same" if any(s < window for s in sides) else "valid"


def block_dropout_layer(x, rate: float, name: str):
    """Spatial dropout (whole channels) after a block when ``rate`` > 0."""
    return layers.SpatialDropout2D(rate, name=name)(x) if rate > 0 else x


def head(x, *, include_top, num_classes, pooling, classifier_activation, fc=(), dropout=0.0, l1=0.0, l2=0.0):
    """The keras.applications top.

    ``include_top``: with ``fc`` [(units, name), ...] Flatten + ReLU FC layers (each followed
    by dropout when > 0) + ``predictions``; without ``fc`` global average pool (``avg_pool``)
    + ``predictions``. (B, H, W, C) -> (B, num_classes). Otherwise ``pooling`` None keeps
    the map, "avg"/"max" give (B, C).
    """
    if not include_top:
        if pooling == "avg":
            return layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if pooling == "max":
            return layers.GlobalMaxPooling2D(name="max_pool")(x)
        return x
    if fc:
        if any(s is None for s in x.shape[1:]):
            raise ModelError(
                "include_top=True with FC layers needs a fixed input_shape (H, W known), "
                f"got a feature map of shape {tuple(x.shape)}"
            )
        x = layers.Flatten(name="flatten")(x)
        for units, name in fc:
            x = layers.Dense(
                units, activation="relu", kernel_regularizer=kernel_regularizer(l1, l2), name=name
            )(x)
            if dropout > 0:
                x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # float32 so mixed precision keeps a stable softmax
    return layers.Dense(
        num_classes,
        activation=classifier_activation,
        dtype="float32",
        kernel_regularizer=kernel_regularizer(l1, l2),
        name="predictions",
    )(x)
