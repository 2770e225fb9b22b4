"""Batch norm folded into the convolution before it, for inference.

In inference a batch norm is a per-channel affine map, ``y = x * s + (beta - mean * s)`` with
``s = gamma / sqrt(moving_variance + epsilon)``; after a convolution without an activation it
folds into that convolution's kernel (``kernel * s`` per output channel) and bias
(``(bias - mean) * s + beta``), the same function with one layer fewer. TensorFlow's graph
optimizer does this itself for float32 models on a CPU, but not under ``mixed_bfloat16``, where
ResNet-50's separate batch norms (and the ReLUs it then cannot fuse into the convolutions) made
inference about 2x slower than folded (``benchmarks/fold_batch_norm.py``).

:func:`fold_batch_norm` returns a copy of a functional model (nested models included, so an
``ImageClassifier`` with its backbone) in which every foldable batch norm is a pass-through
:class:`FoldedBatchNorm` and its convolution carries the folded weights. A batch norm is
foldable when its input is the output of a ``Conv2D`` (or a subclass: ``MatmulGradConv2D``)
with channels last and no activation, used once and read by nothing but that batch norm (not a
model output either), and the batch norm normalizes the last axis; any other batch norm stays
as it is. The copy is for inference only: it has no batch statistics to train with. It is a
plain functional model of the same graph: methods of a model subclass (a detector's decoding
and NMS in its ``predict_step``) do not come with it. The original model is not changed.
"""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="cnn_apps")
class FoldedBatchNorm(keras.layers.Layer):
    """Where a batch norm was folded into the convolution before it: passes its input through
    (it takes the batch norm's call arguments)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _consumers(layer) -> int:
    return sum(1 for _ in layer._outbound_nodes)


def _foldable(bn, model_outputs: set) -> keras.layers.Conv2D | None:
    """The convolution ``bn`` folds into, or None (``model_outputs``: ids of the tensors the
    model containing ``bn`` returns; a convolution whose output is one of them must stay)."""
    if not isinstance(bn, keras.layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
        return None
    node = bn._inbound_nodes[0]
    if len(node.input_tensors) != 1 or bn.axis not in (-1, len(node.input_tensors[0].shape) - 1):
        return None
    if id(node.input_tensors[0]) in model_outputs:
        return None
    conv = node.input_tensors[0]._keras_history.operation
    if not isinstance(conv, keras.layers.Conv2D) or isinstance(conv, keras.layers.Conv2DTranspose):
        return None
    if (
        conv.data_format != "channels_last"
        or conv.activation not in (None, keras.activations.linear)
        or len(conv._inbound_nodes) != 1
        or _consumers(conv) != 1
    ):
        return None
    return conv


def _models(model):
    """The model and every functional model nested in it."""
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _models(layer)


def folded_weights(conv, bn) -> list[np.ndarray]:
    """[kernel, bias] of ``conv`` followed by ``bn`` (inference) as one convolution."""
    weights = conv.get_weights()
    kernel = np.asarray(weights[0], np.float64)
    bias = np.asarray(weights[1], np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    mean = np.asarray(bn.moving_mean, np.float64)
    variance = np.asarray(bn.moving_variance, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """An inference copy of ``model`` with each foldable batch norm folded into the convolution
    before it (see the module docstring). Raises TypeError for a model that is not functional."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise TypeError(f"fold_batch_norm needs a functional Keras model, got {type(model).__name__}")
    pairs = {}  # id(bn) -> (conv, bn)
    for m in _models(model):
        outputs = {id(t) for t in keras.tree.flatten(m.outputs)}
        for layer in m.layers:
            conv = _foldable(layer, outputs)
            if conv is not None:
                pairs[id(layer)] = (conv, layer)
    convs = {id(conv): bn for conv, bn in pairs.values()}
    clones = []  # (original, copy)

    def clone(layer):
        if id(layer) in pairs:
            copy = FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy.name)
        elif id(layer) in convs:
            copy = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
        else:
            copy = layer.__class__.from_config(layer.get_config())
        clones.append((layer, copy))
        return copy

    folded = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for original, copy in clones:
        if id(original) in convs:
            copy.set_weights(folded_weights(original, convs[id(original)]))
        elif id(original) not in pairs:
            copy.set_weights(original.get_weights())
    return folded
