"""SegNet (Badrinarayanan, Kendall & Cipolla, 2017): an encoder-decoder whose decoder
upsamples with the encoder's max-pooling indices.

The encoder is VGG-16's 13 convolutions (3x3, batch norm, ReLU) in five blocks, each closed
by a 2x2 / 2 max pool that also records where each maximum was
(:class:`~cnn_apps.segmentation.upsampling.MaxPoolingWithIndices2D`). The decoder mirrors it:
each block first max-unpools with the indices of its encoder twin (the value goes back to
where the maximum came from, zeros elsewhere: a sparse map that keeps boundary positions
without storing the encoder's features, unlike U-Net's skips), then densifies the sparse map
with the mirrored convolutions; the last decoder block's final 3x3 conv has filters equal to
the first encoder block's, and a 1x1 conv gives the K class scores (the paper then applies a
per-pixel softmax).
"""

from __future__ import annotations

import keras
from keras import layers

from cnn_apps.backbones.layers import conv_unit, scale_filters
from cnn_apps.backbones.vgg import VGG_FILTERS
from cnn_apps.errors import ModelArgumentError
from cnn_apps.preprocessing import preprocessing_layer
from cnn_apps.registry import register
from cnn_apps.segmentation.segmenter import IGNORE_LABEL, Segmenter
from cnn_apps.segmentation.upsampling import MaxPoolingWithIndices2D, MaxUnpooling2D


@keras.saving.register_keras_serializable(package="cnn_apps")
class SegNet(Segmenter):
    """SegNet with a VGG-16 encoder.

    Args:
        num_classes: K, background included.
        image_size: the training input side (any multiple of 2**len(repeats) works).
        repeats: convs per encoder block ((2, 2, 3, 3, 3): VGG-16's 13); the decoder mirrors them.
        width: multiplier of every conv's filters (64..512 at 1.0).
        batch_norm: after every conv (the paper: yes).
        dropout: spatial dropout after the three deepest encoder and decoder blocks (the
            Bayesian SegNet's 0.5; 0 is the original's none).
        pooling: the max pooling's ``implementation`` ("auto", "portable", "tf").
        preprocessing: ``unit`` or ``caffe``. class_names: K names, ``background`` first.
    Input (B, H, W, 3) pixels 0..255, H and W multiples of 2**len(repeats); output logits
    (B, H, W, K).
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        repeats=(2, 2, 3, 3, 3),
        width: float = 1.0,
        batch_norm: bool = True,
        dropout: float = 0.0,
        pooling: str = "auto",
        preprocessing: str = "unit",
        class_names=None,
        ignore_label: int = IGNORE_LABEL,
        **kwargs,
    ):
        repeats = [int(r) for r in repeats]
        if not 1 <= len(repeats) <= len(VGG_FILTERS) or min(repeats) < 1:
            raise ModelArgumentError(
                f"repeats needs 1..{len(VGG_FILTERS)} blocks of >= 1 conv, got {repeats}"
            )
        filters = [scale_filters(f, width) for f in VGG_FILTERS[: len(repeats)]]
        deep = set(range(max(len(repeats) - 3, 0), len(repeats)))  # blocks with dropout

        # === Functional model ===
        inputs = keras.Input(shape=(None, None, 3), name="images")
        x = preprocessing_layer(preprocessing)(inputs)
        indices = []
        for b, (f, n) in enumerate(zip(filters, repeats)):
            for i in range(n):
                x = conv_unit(x, f, 3, f"block{b + 1}_conv{i + 1}", batch_norm=batch_norm)
            x, where = MaxPoolingWithIndices2D(2, implementation=pooling, name=f"block{b + 1}_pool")(x)
            indices.append(where)
            if dropout and b in deep:
                x = layers.SpatialDropout2D(dropout, name=f"block{b + 1}_dropout")(x)
        for b in reversed(range(len(repeats))):
            x = MaxUnpooling2D(2, name=f"decoder{b + 1}_unpool")([x, indices[b]])
            for i in reversed(range(repeats[b])):
                # the block's last conv hands the next (shallower) block its filter count
                out = filters[max(b - 1, 0)] if i == 0 else filters[b]
                x = conv_unit(x, out, 3, f"decoder{b + 1}_conv{i + 1}", batch_norm=batch_norm)
            if dropout and b in deep:
                x = layers.SpatialDropout2D(dropout, name=f"decoder{b + 1}_dropout")(x)
        logits = layers.Conv2D(num_classes, 1, name="score")(x)
        outputs = layers.Activation("linear", dtype="float32", name="logits")(logits)
        kwargs.setdefault("name", "segnet")
        super().__init__(
            inputs,
            outputs,
            num_classes=num_classes,
            image_size=image_size,
            stride=2 ** len(repeats),
            class_names=class_names,
            ignore_label=ignore_label,
            **kwargs,
        )

        # === Config ===
        self._config = {
            "repeats": repeats,
            "width": width,
            "batch_norm": batch_norm,
            "dropout": dropout,
            "pooling": pooling,
            "preprocessing": preprocessing,
        }

    def get_config(self):
        return {**self.base_config(), **self._config}


@register("segmenter", "segnet")
def segnet(num_classes: int, **kwargs) -> SegNet:
    """SegNet: VGG-16 encoder, decoder upsampling with the pooling indices."""
    return SegNet(num_classes, **kwargs)
