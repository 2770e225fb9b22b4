"""VGG-16 and VGG-19 (Simonyan & Zisserman, 2014) as one class: a list of repeats.

Five blocks of 3x3 'same' convs (64, 128, 256, 512, 512 filters; ``repeats`` convs per
block), each closed by a 2x2/2 max pool, then (``include_top``) FC 4096, 4096 and the
classes. Layer names are keras.applications' (``block1_conv1`` ... ``block5_pool``,
``fc1``, ``fc2``, ``predictions``) so its ImageNet weights load by name
(``cnn_apps.backbones.pretrained``). At 224 px with 1000 classes VGG-16 has 138,357,544
parameters and VGG-19 143,667,240, as keras.applications.

The building blocks shared with ``alexnet.py`` and ``resnet.py`` are in ``layers.py``.
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
from cnn_apps.errors import ModelArgumentError
from cnn_apps.registry import register

VGG_FILTERS = (64, 128, 256, 512, 512)


@keras.saving.register_keras_serializable(package="cnn_apps")
class VGG(Backbone):
    """VGG network: five blocks of ``repeats[i]`` 3x3 convs, each ending in a 2x2/2 max pool.

    Args:
        input_shape: (H, W, C); H, W >= 32 or None (include_top needs them fixed).
        repeats: convs per block, 5 entries: (2, 2, 3, 3, 3) is VGG-16, (2, 2, 4, 4, 4) VGG-19.
        width: multiplier of every conv's filters (FC widths are not scaled).
        include_top: add Flatten, fc1, fc2 (4096 each) and ``predictions``.
        num_classes: size of ``predictions``.
        pooling: without the top, None keeps (B, H/32, W/32, 512w); "avg" / "max" give (B, 512w).
        classifier_activation: activation of ``predictions`` ("softmax"; None for logits).
        batch_norm: None/False as published; True puts BN between each conv and its ReLU.
        block_dropout: spatial dropout rate after each block's pool (0 = none).
        l1, l2: L1L2 kernel regularizer on every Conv2D and Dense when either is > 0.
        dropout: rate after fc1 and fc2 (the paper's 0.5); only used with the top.
        ceil_pooling: pool with 'same' padding (Caffe's ceil mode), so an odd side rounds up
            (SSD300: 75 -> 38 at pool3); False is the paper's floor.

    Input (B, H, W, C) scaled pixels (ImageClassifier feeds [-1, 1]; keras.applications
    weights expect ``vgg16.preprocess_input``'s caffe scaling). Output: the top's
    (B, num_classes), or the features above. ``pyramid_outputs``: ``P1``..``P5`` (strides
    2..32; aliases ``pool1``..``pool5``) -> ``block1_pool``..``block5_pool``.
    """

    def __init__(
        self,
        input_shape=(None, None, 3),
        repeats=(2, 2, 3, 3, 3),
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
        ceil_pooling=False,
        **kwargs,
    ):
        # === Arguments (layers are made as the graph is traced) ===
        input_shape = check_input_shape(input_shape)
        check_pooling(pooling)
        if len(repeats) != len(VGG_FILTERS):
            raise ModelArgumentError(
                f"VGG repeats needs {len(VGG_FILTERS)} entries (one per block), got {tuple(repeats)}"
            )
        bn = bool(batch_norm)  # None = as published: no BN

        # === Functional model ===
        inputs = keras.Input(shape=input_shape, name="pixels")
        x, pyramid = inputs, {}
        for b, (filters, n) in enumerate(zip(VGG_FILTERS, repeats), start=1):
            for i in range(1, n + 1):
                x = conv_unit(
                    x, scale_filters(filters, width), 3, f"block{b}_conv{i}", batch_norm=bn, l1=l1, l2=l2
                )
            x = layers.MaxPooling2D(
                2, strides=2, padding="same" if ceil_pooling else pool_padding(x, 2), name=f"block{b}_pool"
            )(x)
            pyramid[f"pool{b}"] = f"block{b}_pool"
            x = block_dropout_layer(x, block_dropout, f"block{b}_dropout")
        outputs = head(
            x,
            include_top=include_top,
            num_classes=num_classes,
            pooling=pooling,
            classifier_activation=classifier_activation,
            fc=((4096, "fc1"), (4096, "fc2")),
            dropout=dropout,
            l1=l1,
            l2=l2,
        )

        # === Config ===
        config = {
            "input_shape": input_shape,
            "repeats": tuple(repeats),
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
            "ceil_pooling": ceil_pooling,
        }
        kwargs.setdefault("name", "vgg")
        super().__init__(inputs, outputs, pyramid=pyramid, config=config, **kwargs)


@register("backbone", "vgg16")
def vgg16(**kwargs) -> VGG:
    """VGG-16 (configuration D): 13 convs + 3 FC."""
    kwargs.setdefault("name", "vgg16")
    return VGG(repeats=(2, 2, 3, 3, 3), **kwargs)


@register("backbone", "vgg19")
def vgg19(**kwargs) -> VGG:
    """VGG-19 (configuration E): 16 convs + 3 FC."""
    kwargs.setdefault("name", "vgg19")
    return VGG(repeats=(2, 2, 4, 4, 4), **kwargs)
