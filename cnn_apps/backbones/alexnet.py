"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012), single tower or the paper's two-GPU grouping.

conv1 96@11x11/4 (valid) -> pool1 -> conv2 256@5x5 -> pool2 -> conv3 384@3x3 -> conv4
384@3x3 -> conv5 256@3x3 -> pool5, pools overlapping 3x3/2, then (``include_top``) FC
4096, 4096 (dropout 0.5 each) and the classes. At the paper's 227 px (55-27-13-6 maps),
1000 classes: 62,378,344 parameters, or 60,965,224 with ``grouped=True`` (conv2, conv4,
conv5 see only their own GPU's half of the channels: ``Conv2D(groups=2)``). No local
response normalization (later work found it adds little; ``batch_norm=True`` is the
modern replacement).

Small inputs: a pool whose input map is smaller than its 3x3 window uses 'same' padding
instead of 'valid' (the map stays 1x1 instead of vanishing), so 32 px builds:
32 -> conv1 6 -> pool1 2 -> pool2 1 -> pool5 1. From 67 px up every pool is as published.
"""

from __future__ import annotations

import keras
from keras import layers

from cnn_apps.backbones.base import Backbone
from cnn_apps.backbones.layers import (
    block_dropout_layer,
    check_input_shape,
    check_pooling,
    conv_unit,
    head,
    pool_padding,
    scale_filters,
)
from cnn_apps.registry import register


@register("backbone", "alexnet")
@keras.saving.register_keras_serializable(package="cnn_apps")
class AlexNet(Backbone):
    """AlexNet.

    Args:
        input_shape: (H, W, C); H, W >= 32 or None (include_top needs them fixed); 227 is the paper's.
        grouped: the paper's two-tower split of conv2, conv4 and conv5 (``groups=2``).
        width: multiplier of every conv's filters (FC widths are not scaled).
        include_top: add Flatten, fc6, fc7 (4096 each) and ``predictions``.
        num_classes: size of ``predictions``.
        pooling: without the top, None keeps (B, h, w, 256w); "avg" / "max" give (B, 256w).
        classifier_activation: activation of ``predictions`` ("softmax"; None for logits).
        batch_norm: None/False as published; True puts BN between each conv and its ReLU.
        block_dropout: spatial dropout rate after each pool (0 = none).
        l1, l2: L1L2 kernel regularizer on every Conv2D and Dense when either is > 0.
        dropout: rate after fc6 and fc7 (the paper's 0.5); only used with the top.

    Input (B, H, W, C) scaled pixels. Output: the top's (B, num_classes) or the features
    above (h = w = 6 at 227 px). ``pyramid_outputs``: ``P3``, ``P4``, ``P5`` (strides 8, 16,
    32; aliases ``pool1``, ``pool2``, ``pool5``, the only pools AlexNet has, Caffe's names)
    -> layer names.
    """

    def __init__(
        self,
        input_shape=(None, None, 3),
        grouped=False,
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
        bn, groups = bool(batch_norm), 2 if grouped else 1
        f = lambda n: scale_filters(n, width)  # noqa: E731
        conv = lambda x, n, k, name, **kw: conv_unit(x, f(n), k, name, batch_norm=bn, l1=l1, l2=l2, **kw)  # noqa: E731

        def pool(x, name):
            x = layers.MaxPooling2D(3, strides=2, padding=pool_padding(x, 3), name=name)(x)
            pyramid[name] = name
            return block_dropout_layer(x, block_dropout, f"{name}_dropout")

        # === Functional model ===
        pyramid = {}
        inputs = keras.Input(shape=input_shape, name="pixels")
        x = conv(inputs, 96, 11, "conv1", strides=4, padding="valid")
        x = pool(x, "pool1")
        x = conv(x, 256, 5, "conv2", groups=groups)
        x = pool(x, "pool2")
        x = conv(x, 384, 3, "conv3")  # conv3 reads both towers in the paper
        x = conv(x, 384, 3, "conv4", groups=groups)
        x = conv(x, 256, 3, "conv5", groups=groups)
        x = pool(x, "pool5")
        outputs = head(
            x,
            include_top=include_top,
            num_classes=num_classes,
            pooling=pooling,
            classifier_activation=classifier_activation,
            fc=((4096, "fc6"), (4096, "fc7")),
            dropout=dropout,
            l1=l1,
            l2=l2,
        )

        # === Config ===
        config = {
            "input_shape": input_shape,
            "grouped": grouped,
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
        kwargs.setdefault("name", "alexnet")
        super().__init__(inputs, outputs, pyramid=pyramid, config=config, **kwargs)
