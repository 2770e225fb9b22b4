"""The base of every registered backbone (after keras-hub's ``Backbone``).

A family (``alexnet.py``, ``vgg.py``, ``resnet.py``, ``resnet_mini.py``) builds its layers and
functional graph in ``__init__``, then calls :class:`Backbone`'s ``__init__`` with the graph, its
pyramid levels under the family's own names and the constructor's arguments; the base stores the
config (``get_config`` mirrors every constructor argument) and keys the pyramid by stride.

Pyramid keys follow keras-hub: ``P{k}`` is the feature map at stride 2**k (P2 = stride 4,
P3 = 8, P4 = 16, P5 = 32: at 224 px ``P5`` is 7 x 7). The stride of a level is the product of
the strides of the layers between the input and that level (a convolution or pooling with
stride s multiplies it by s, a transposed convolution or upsampling divides it), the nominal
stride a 2**k-divisible input shows as its map side; it is also defined when the input size is
free, and for a small input where 'valid' or 'same' padding rounds a map's side. The family's own
names (``C3`` for ResNets, ``pool4`` for VGG and AlexNet) stay valid as aliases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import keras

from cnn_apps.errors import ModelError


class PyramidOutputs(Mapping):
    """Pyramid level -> layer name, keyed ``P{k}`` (stride 2**k) from the finest level to the
    coarsest. Lookups (``[level]``, ``get``, ``in``) also take the family's names (``C3``,
    ``pool4``), which ``aliases`` maps to the P-keys; iteration, ``len`` and ``==`` see the
    P-keys only."""

    def __init__(self, layers: dict[str, str], strides: dict[str, int], aliases: dict[str, str]):
        self._layers = dict(layers)
        self._strides = dict(strides)
        self._aliases = dict(aliases)

    def resolve(self, level: str) -> str:
        """The P-key of ``level`` (a P-key or an alias); KeyError for neither."""
        if level in self._layers:
            return level
        return self._aliases[level]

    def __getitem__(self, level: str) -> str:
        return self._layers[self.resolve(level)]

    def __contains__(self, level) -> bool:
        return level in self._layers or level in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    @property
    def aliases(self) -> dict[str, str]:
        """The family's level names -> their P-keys (``{"C3": "P3", ...}``)."""
        return dict(self._aliases)

    def stride(self, level: str) -> int:
        """The stride of ``level`` (a P-key or an alias) in input pixels: 2**k for ``P{k}``."""
        return self._strides[self.resolve(level)]

    def names(self) -> list[str]:
        """Every name a lookup takes: the P-keys, then the aliases."""
        return [*self._layers, *self._aliases]

    def __repr__(self) -> str:
        return f"PyramidOutputs({self._layers}, aliases={self._aliases})"


def _operation_stride(op, tensor_index: int) -> float:
    """How much ``op`` divides the spatial size of its input (< 1 where it upsamples)."""
    if isinstance(op, keras.Model) and getattr(op, "outputs", None):  # a nested functional model
        return nominal_stride(op.outputs[tensor_index])
    if isinstance(op, keras.layers.UpSampling2D):
        size = op.size
        return 1.0 / float(size[0] if isinstance(size, (tuple, list)) else size)
    strides = getattr(op, "strides", None)
    if strides is None:
        return 1.0
    step = float(strides[0] if isinstance(strides, (tuple, list)) else strides)
    return 1.0 / step if isinstance(op, keras.layers.Conv2DTranspose) else step


def nominal_stride(tensor) -> float:
    """The product of the layers' strides from the graph's input to the symbolic ``tensor``
    (along its widest-strided input path where branches merge), walked without recursion."""
    memo: dict[int, float] = {}
    stack = [tensor]
    while stack:
        t = stack[-1]
        if id(t) in memo:
            stack.pop()
            continue
        op, node_index, tensor_index = t._keras_history
        inputs = op._inbound_nodes[node_index].input_tensors
        pending = [i for i in inputs if id(i) not in memo]
        if pending:
            stack.extend(pending)
            continue
        memo[id(t)] = max((memo[id(i)] for i in inputs), default=1.0) * _operation_stride(op, tensor_index)
        stack.pop()
    return memo[id(tensor)]


def pyramid_by_stride(model: keras.Model, levels: dict[str, str]) -> PyramidOutputs:
    """The family's ``{level name: layer name}`` keyed ``P{k}`` by each layer's stride 2**k,
    the family's names kept as aliases. Two levels at one stride are a ModelError."""
    layers, strides, aliases = {}, {}, {}
    for alias, layer_name in levels.items():
        stride = nominal_stride(model.get_layer(layer_name).output)
        key = f"P{round(math.log2(stride))}"
        if key in layers and layers[key] != layer_name:
            raise ModelError(
                f"{model.name}: pyramid layers {layers[key]!r} and {layer_name!r} ({alias!r}) both "
                f"have stride {stride:g} ({key}); a level needs a stride of its own"
            )
        layers[key], strides[key] = layer_name, int(round(stride))
        if alias != key:
            aliases[alias] = key
    order = sorted(layers, key=strides.get)
    return PyramidOutputs({k: layers[k] for k in order}, {k: strides[k] for k in order}, aliases)


class Backbone(keras.Model):
    """Base of the registered backbones: a functional model from scaled pixels (B, H, W, C)
    to features (or a classifier top's outputs).

    A subclass builds its layers and graph, then calls ``super().__init__(inputs, outputs,
    pyramid={family level name: layer name}, config={every constructor argument}, **kwargs)``.
    ``get_config`` returns ``name``, ``trainable`` and that config, so ``cls(**config)``
    rebuilds the model; ``pyramid_outputs`` maps ``P{k}`` (stride 2**k) and the family's names
    to layer names (:class:`PyramidOutputs`).
    """

    def __init__(self, inputs, outputs, *, pyramid: dict[str, str], config: dict, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self._config = dict(config)
        self._pyramid = pyramid_by_stride(self, pyramid)

    @property
    def pyramid_outputs(self) -> PyramidOutputs:
        """``P{k}`` (and the family's level names) -> layer names, finest level first."""
        return self._pyramid

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **self._config}
