"""Multiply-adds per image, counted as the papers count them ("FLOPs" in the ResNet paper).

Only convolutions and fully connected layers count; BN, activations, pooling, adds and
padding are ignored, and a bias is not a multiply-add. Per layer, for one image:

* Conv2D: H_out * W_out * C_out * kh * kw * C_in / groups
* DepthwiseConv2D: H_out * W_out * C_in * multiplier * kh * kw
* SeparableConv2D: the depthwise part + H_out * W_out * C_in * multiplier * C_out
* Conv2DTranspose: H_in * W_in * C_in * kh * kw * C_out
* Dense: (product of the leading non-batch dims) * in * out

At 224 px (include_top, 1000 classes): VGG-16 15.5 G, VGG-19 19.6 G, ResNet-18 1.81 G,
ResNet-34 3.66 G, plain-34 3.64 G, ResNet-50 3.86 G (the papers: 19.6, 1.8, 3.6, 3.6, 3.8);
AlexNet at 227 px 1.14 G, 0.72 G grouped.
"""

from __future__ import annotations

import math

import keras

from cnn_apps.errors import ModelError


def _spatial(shape, layer) -> int:
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ModelError(
            f"count_macs: layer '{layer.name}' has an unknown size {tuple(shape)}; "
            "build the model with a fixed input_shape (H, W known)"
        )
    return math.prod(dims)


def layer_macs(layer, unknown_rows: int | None = None) -> int:
    """Multiply-adds of one call of a (non-nested) layer on one image; ``unknown_rows`` stands
    for a Dense input's unknown leading dims (the RoIs of a two-stage detector's head)."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        c_in = layer.input.shape[-1]
        kh, kw = layer.kernel_size
        n = _spatial(layer.output.shape, layer)
        return n * c_in * layer.depth_multiplier * (kh * kw + layer.filters)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _spatial(layer.output.shape, layer) * layer.input.shape[-1] * layer.depth_multiplier * kh * kw
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return _spatial(layer.input.shape, layer) * layer.input.shape[-1] * kh * kw * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1]
        return _spatial(layer.output.shape, layer) * layer.filters * kh * kw * c_in // layer.groups
    if isinstance(layer, keras.layers.Dense):
        shape = layer.input.shape
        dims = shape[1:-1]
        if any(d is None for d in dims):
            if unknown_rows is None:
                raise ModelError(
                    f"count_macs: Dense layer '{layer.name}' has an unknown row count {tuple(shape)}; "
                    "pass unknown_rows (e.g. the RoIs per image)"
                )
            dims = [unknown_rows if d is None else d for d in dims]
        return math.prod(dims) * shape[-1] * layer.units
    return 0


def count_macs(model, unknown_rows: int | None = None) -> int:
    """Multiply-adds of one forward pass of ``model`` on one image (B = 1).

    Recurses into nested models (a classifier's backbone, a detector's RoI head). The model
    needs known spatial sizes: build it with a fixed ``input_shape``. A Dense layer applied to
    a variable number of rows (a RoI head on ``(None, 4)`` boxes) counts ``unknown_rows`` of
    them; without it such a layer raises.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer, unknown_rows)
        else:
            total += layer_macs(layer, unknown_rows)
    return int(total)
