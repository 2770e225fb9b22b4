"""U-Net (Ronneberger, Fischer & Brox, 2015): an encoder-decoder with concatenated skips.

The contracting path repeats two 3x3 convolutions (ReLU) and a 2x2 / 2 max pool, doubling
the filters at each of ``depth`` steps (64 -> 1024 in the paper); the expanding path
upsamples with a 2x2 "up-convolution" (a stride-2 transposed conv halving the filters),
concatenates the encoder map of the same size (the fine, precise features: U-Net keeps them
whole where SegNet keeps only the pooling positions) and applies two 3x3 convolutions; a
1x1 conv gives the K class scores.

Unlike the paper, the convolutions are 'same'-padded, so the output has the input's size
(the paper's 'valid' convolutions shrink a 572 px tile to a 388 px prediction and crop the
skips to match); the input side must then be divisible by 2**depth. Batch norm after each
conv is optional (off in the paper).
"""

from __future__ import annotations

import keras
from keras import layers

from cnn_apps.backbones.layers import conv_unit
from cnn_apps.errors import ModelArgumentError
from cnn_apps.preprocessing import preprocessing_layer
from cnn_apps.registry import register
from cnn_apps.segmentation.segmenter import IGNORE_LABEL, Segmenter


@keras.saving.register_keras_serializable(package="cnn_apps")
class UNet(Segmenter):
    """U-Net.

    Args:
        num_classes: K, background included.
        image_size: the training input side (any multiple of 2**depth works).
        filters: the first level's filters (64 in the paper), doubled at each level down.
        depth: poolings (4 in the paper).
        batch_norm: batch norm after each conv.
        dropout: dropout before the deepest level's pooling and at the bottom (the paper
            mentions dropout "at the end of the contracting path"; 0 disables).
        preprocessing: ``unit`` or ``caffe``. class_names: K names, ``background`` first.
    Input (B, H, W, 3) pixels 0..255, H and W multiples of 2**depth; output logits (B, H, W, K).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        filters: int = 64,
        depth: int = 4,
        batch_norm: bool = True,
        dropout: float = 0.0,
        preprocessing: str = "unit",
        class_names=None,
        ignore_label: int = IGNORE_LABEL,
        **kwargs,
    ):
        if depth < 1:
            raise ModelArgumentError(f"depth must be >= 1, got {depth}")

        def double_conv(x, f, name):
            x = conv_unit(x, f, 3, f"{name}_conv1", batch_norm=batch_norm)
            return conv_unit(x, f, 3, f"{name}_conv2", batch_norm=batch_norm)

        # === Functional model ===
        inputs = keras.Input(shape=(None, None, 3), name="images")
        x = preprocessing_layer(preprocessing)(inputs)
        skips = []
        for level in range(depth):
            x = double_conv(x, filters * 2**level, f"down{level + 1}")
            if dropout and level == depth - 1:
                x = layers.Dropout(dropout, name=f"down{level + 1}_dropout")(x)
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"down{level + 1}_pool")(x)
        x = double_conv(x, filters * 2**depth, "bottom")
        if dropout:
            x = layers.Dropout(dropout, name="bottom_dropout")(x)
        for level in reversed(range(depth)):
            f = filters * 2**level
            x = layers.Conv2DTranspose(f, 2, strides=2, name=f"up{level + 1}_upconv")(x)
            x = layers.Concatenate(name=f"up{level + 1}_concat")([skips[level], x])
            x = double_conv(x, f, f"up{level + 1}")
        logits = layers.Conv2D(num_classes, 1, name="score")(x)
        outputs = layers.Activation("linear", dtype="float32", name="logits")(logits)
        kwargs.setdefault("name", "unet")
        super().__init__(
            inputs,
            outputs,
            num_classes=num_classes,
            image_size=image_size,
            stride=2**depth,
            class_names=class_names,
            ignore_label=ignore_label,
            **kwargs,
        )

        # === Config ===
        self._config = {
            "filters": filters,
            "depth": depth,
            "batch_norm": batch_norm,
            "dropout": dropout,
            "preprocessing": preprocessing,
        }

    def get_config(self):
        return {**self.base_config(), **self._config}


@register("segmenter", "unet")
def unet(num_classes: int, **kwargs) -> UNet:
    """U-Net: encoder-decoder with concatenated skips."""
    return UNet(num_classes, **kwargs)
