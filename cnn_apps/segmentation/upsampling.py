"""Upsampling for segmentation decoders: nearest and bilinear resizing, transposed convolution with
FCN's bilinear initialisation, and SegNet's max-pooling indices with max-unpooling.

Shorthand: B batch, H W C feature map, f upsampling factor, p pool size, k kernel size.

Alignment. Every bilinear operation here uses *half-pixel centres*: output pixel ``o`` (of ``f * n``)
samples the input at ``(o + 0.5) / f - 0.5``, as ``tf.image.resize``, ``jax.image.resize``,
``cv2.resize(INTER_LINEAR)`` and ``keras.layers.UpSampling2D(interpolation="bilinear")`` do.

- :class:`Upsample2D` (bilinear) clamps at the border: outside samples repeat the edge pixel.
- :func:`transposed_upsampler` (Conv2DTranspose, kernel ``2f - f % 2``, stride ``f``, ``"same"``,
  initialised with :func:`bilinear_kernel`) gives *exactly* the same half-pixel bilinear
  interpolation, but of the input padded with zeros. Keras' ``"same"`` padding (TensorFlow's:
  ``(k - f) // 2`` before) makes input pixel ``i`` add kernel tap ``t`` to output
  ``i f + t - (k - f) // 2``; the kernel's centre tap, ``f - 0.5`` (even k) or ``f - 1`` (odd k),
  lands on ``i f + f / 2 - 0.5``, which is where half-pixel centres put pixel ``i``: no half-pixel
  shift. Only the outermost ``floor(f / 2)`` rows and columns on each side differ from
  :class:`Upsample2D` (they fade towards 0 instead of holding the edge value). The same holds
  under TensorFlow and JAX (Keras converts the padding for JAX), checked by the tests.

Max-unpooling (SegNet). :class:`MaxPoolingWithIndices2D` returns, next to the pooled map, the
*local* position of each maximum inside its ``p x p`` window, ``dy * p + dx`` (row-major), int32,
the first one on ties (NumPy's argmax). :class:`MaxUnpooling2D` puts each value back there and
zeros elsewhere. Local indices (not TF's flat ``(y W + x) C + c``) need no batch or map size to
decode and are the same on every backend. H and W must be divisible by ``p``.

Implementation. ``keras.ops`` only: the map is viewed as windows (B, H/p, p, W/p, p, C), the argmax
is taken over the ``p * p`` positions and unpooling is ``one_hot(index) * value`` reshaped back.
The pooled value is read at the argmax (not a ``max``), so the gradient reaches that one cell, as
in SegNet / Caffe, even with ties. ``implementation="tf"`` uses ``tf.nn.max_pool_with_argmax``
instead (TensorFlow backend only), converted to the same local indices; on the CPU its ties also
go to the first maximum. ``"auto"`` picks the portable version. Measured on the CPU (2 shared cores
under load, TF 2.21, B = 8, 64 x 64 x 64, p = 2, median of 20; pooling + unpooling + gradient):
the TF op is faster in a plain ``tf.function`` (~32 ms vs ~45 ms; forward ~17-21 ms vs ~27-35 ms),
but it has no XLA kernel (``MaxPoolWithArgmax`` fails under ``jit_compile=True``), and the portable
version compiled with XLA takes ~6.5 ms (forward ~2.5-3 ms). Keras' ``fit`` compiles with XLA
wherever there is a GPU, so "auto" stays portable; a layer with "tf" sets ``supports_jit = False``,
which turns XLA off for the whole model, and its tie order on a GPU is not checked here.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cnn_apps.errors import ConfigError

INTERPOLATIONS = ("nearest", "bilinear")
IMPLEMENTATIONS = ("auto", "portable", "tf")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- resizing


@keras.saving.register_keras_serializable(package="cnn_apps")
class Upsample2D(keras.layers.Layer):
    """Resize by an integer factor: (B, H, W, C) -> (B, H f, W f, C).

    ``interpolation="nearest"`` repeats each pixel ``f x f`` times (``np.repeat`` on both axes);
    ``"bilinear"`` interpolates with half-pixel centres and clamped borders (``tf.image.resize``,
    ``cv2.resize(INTER_LINEAR)``). No weights. A map of static size goes through
    ``ops.image.resize``; one whose H or W is free (``keras.Input((None, None, C))`` under
    TensorFlow) through :func:`upsample_bilinear`, the same interpolation (they agree to ~1e-6).
    """

    def __init__(self, factor: int = 2, interpolation: str = "nearest", **kwargs):
        super().__init__(**kwargs)
        self.factor = _positive_int(factor, "factor")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation

    def call(self, x):
        f = self.factor
        if self.interpolation == "nearest":
            # repeat, not resize: exact, cheap, and it is what XLA compiles best
            return ops.repeat(ops.repeat(x, f, axis=1), f, axis=2)
        if x.shape[1] is None or x.shape[2] is None:
            # ops.image.resize wants a static size (so does keras.layers.UpSampling2D)
            return upsample_bilinear(x, f)
        return ops.image.resize(
            x,
            (x.shape[1] * f, x.shape[2] * f),
            interpolation="bilinear",
            antialias=False,
            data_format="channels_last",
        )

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h * self.factor, None if w is None else w * self.factor, c)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "interpolation": self.interpolation}


def _upsample_axis(x, factor: int, axis: int):
    """Half-pixel bilinear by ``factor`` along axis 1 or 2 of (B, H, W, C), edges clamped."""
    n = x.shape[axis]
    head, tail = [slice(None)] * 4, [slice(None)] * 4
    head[axis], tail[axis] = slice(0, 1), slice(-1, None)
    before, after = [slice(None)] * 4, [slice(None)] * 4
    before[axis], after[axis] = slice(0, -1), slice(1, None)
    prev = ops.concatenate([x[tuple(head)], x[tuple(before)]], axis=axis)  # x[i - 1], clamped
    nxt = ops.concatenate([x[tuple(after)], x[tuple(tail)]], axis=axis)  # x[i + 1], clamped
    phases = []
    for r in range(factor):  # output i f + r samples the input at i + d
        d = (r + 0.5) / factor - 0.5
        if d < 0:
            phases.append(x * (1 + d) + prev * (-d))
        elif d > 0:
            phases.append(x * (1 - d) + nxt * d)
        else:
            phases.append(x)
    out = ops.stack(phases, axis=axis + 1)
    shape = list(ops.shape(x))
    shape[0] = -1
    shape[axis] = shape[axis] * factor if n is None else n * factor
    return ops.reshape(out, tuple(shape))


def upsample_bilinear(x, factor: int):
    """(B, H, W, C) -> (B, H f, W f, C), the half-pixel bilinear interpolation of
    ``tf.image.resize``, written as ``f`` fixed two-tap phases per axis so that it also runs on a map
    whose H and W are only known at run time."""
    return _upsample_axis(_upsample_axis(x, factor, 1), factor, 2)


# --------------------------------------------------------------------------- transposed convolution


def bilinear_kernel(kernel_size: int, channels: int) -> np.ndarray:
    """FCN's bilinear upsampling filter (``upsample_filt`` in the FCN code), float32
    (k, k, channels, channels), zero off the channel diagonal (channel c only feeds channel c).

    With ``f = ceil(k / 2)`` and centre ``c = f - 1`` (odd k) or ``f - 0.5`` (even k), the tap
    ``(y, x)`` is ``(1 - |y - c| / f) (1 - |x - c| / f)``. For a stride-f transposed conv the
    kernel size is ``2f - f % 2``.
    """
    k = _positive_int(kernel_size, "kernel_size")
    channels = _positive_int(channels, "channels")
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(k) - center) / factor
    plane = np.outer(taps, taps).astype(np.float32)
    kernel = np.zeros((k, k, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = plane[:, :, None]
    return kernel


@keras.saving.register_keras_serializable(package="cnn_apps")
class BilinearInitializer(keras.initializers.Initializer):
    """:func:`bilinear_kernel` for a Conv2DTranspose kernel of shape (k, k, out, in); needs a
    square kernel and ``out == in`` (each channel is upsampled on its own)."""

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3]:
            raise ConfigError(
                f"a bilinear kernel needs the shape (k, k, C, C) (square, filters == input channels), "
                f"got {tuple(shape)}: give the transposed conv as many filters as it has input "
                "channels, or bilinear_init=False"
            )
        return ops.convert_to_tensor(bilinear_kernel(shape[0], shape[2]), dtype=dtype or "float32")

    def get_config(self):
        return {}


def transposed_upsampler(
    filters: int, factor: int, *, bilinear_init: bool = True, trainable: bool = True, name: str | None = None
) -> keras.layers.Conv2DTranspose:
    """FCN's learnable upsampling: (B, H, W, C) -> (B, H f, W f, filters).

    A Conv2DTranspose with kernel ``2f - f % 2``, stride ``f``, ``"same"`` padding and no bias. With
    ``bilinear_init`` (then ``filters`` must equal C) it starts as half-pixel bilinear interpolation
    of the zero-padded input (see the module docstring); ``trainable=False`` keeps it fixed (FCN's
    final 8x / 16x / 32x layer is often frozen).
    """
    filters = _positive_int(filters, "filters")
    factor = _positive_int(factor, "factor")
    return keras.layers.Conv2DTranspose(
        filters,
        kernel_size=2 * factor - factor % 2,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearInitializer() if bilinear_init else "glorot_uniform",
        trainable=trainable,
        name=name,
    )


# --------------------------------------------------------------------------- max pooling with indices


def _check_poolable(shape, pool: int):
    """ValueError naming the shape unless it is (B, H, W, C) with H, W divisible by p (where known)."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"max pooling with indices needs a (B, H, W, C) map, got the shape {shape}")
    for size in shape[1:3]:
        if size is not None and size % pool:
            raise ValueError(
                f"max pooling with indices needs H and W divisible by the pool size {pool}, got the "
                f"shape {shape}: crop or pad the input (or change the pool size)"
            )


def _window_view(x, pool: int):
    """(B, H, W, C) -> (B, H/p, W/p, C, p * p), the last axis a window in row-major order."""
    _check_poolable(x.shape, pool)
    shape = ops.shape(x)  # dynamic entries where the map size is free
    h, w, c = shape[1] // pool, shape[2] // pool, shape[3]
    windows = ops.reshape(x, (-1, h, pool, w, pool, c))
    windows = ops.transpose(windows, (0, 1, 3, 5, 2, 4))
    return ops.reshape(windows, (-1, h, w, c, pool * pool))


def max_pool_with_indices(x, pool_size: int = 2):
    """Portable ``p x p`` / stride p max pooling: x (B, H, W, C) -> pooled (B, H/p, W/p, C) and
    int32 indices (same shape), ``dy * p + dx`` of the first maximum in each window."""
    windows = _window_view(x, pool_size)
    indices = ops.cast(ops.argmax(windows, axis=-1), "int32")
    # read the value at the argmax: the gradient then reaches one cell per window
    pooled = ops.take_along_axis(windows, ops.expand_dims(indices, -1), axis=-1)[..., 0]
    return pooled, indices


def max_pool_with_indices_tf(x, pool_size: int = 2):
    """TensorFlow-only: ``tf.nn.max_pool_with_argmax`` with its flat indices ``(y W + x) C + c``
    converted to the local ``dy * p + dx`` of :func:`max_pool_with_indices`."""
    import tensorflow as tf  # the one TF-only op of the module; never imported under JAX

    _check_poolable(x.shape, pool_size)
    pooled, flat = tf.nn.max_pool_with_argmax(x, pool_size, pool_size, "VALID", include_batch_in_index=False)
    shape = tf.shape(x, out_type=tf.int64)
    cell = flat // shape[3]
    y, x_ = cell // shape[2], cell % shape[2]
    return pooled, tf.cast((y % pool_size) * pool_size + x_ % pool_size, tf.int32)


def max_unpool(x, indices, pool_size: int = 2):
    """x (B, h, w, C) values and indices (B, h, w, C) local window positions -> (B, h p, w p, C)
    with each value at its position and zeros elsewhere."""
    shape = ops.shape(x)
    h, w, c = shape[1], shape[2], shape[3]
    spread = ops.one_hot(indices, pool_size * pool_size, dtype=x.dtype) * ops.expand_dims(x, -1)
    spread = ops.reshape(spread, (-1, h, w, c, pool_size, pool_size))
    spread = ops.transpose(spread, (0, 1, 4, 2, 5, 3))  # (B, h, p, w, p, C)
    return ops.reshape(spread, (-1, h * pool_size, w * pool_size, c))


@keras.saving.register_keras_serializable(package="cnn_apps")
class MaxPoolingWithIndices2D(keras.layers.Layer):
    """SegNet's encoder pooling: x (B, H, W, C) -> ``(pooled, indices)``, both (B, H/p, W/p, C),
    indices int32 local window positions ``dy * p + dx`` (first maximum on ties). H and W must
    be divisible by ``pool_size`` (a ValueError names the shape). ``implementation``: "portable"
    (keras.ops), "tf" (``tf.nn.max_pool_with_argmax``, TensorFlow backend only) or "auto"
    (portable; see the module docstring for the timings).
    """

    def __init__(self, pool_size: int = 2, implementation: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _positive_int(pool_size, "pool_size")
        if implementation not in IMPLEMENTATIONS:
            raise ConfigError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        if implementation == "tf":
            self.supports_jit = False  # MaxPoolWithArgmax has no XLA kernel

    def call(self, x):
        if self.implementation == "tf":
            if keras.backend.backend() != "tensorflow":
                raise ConfigError(
                    f"implementation='tf' needs the TensorFlow backend, this is "
                    f"{keras.backend.backend()!r}: use 'auto' or 'portable'"
                )
            return max_pool_with_indices_tf(x, self.pool_size)
        return max_pool_with_indices(x, self.pool_size)

    def compute_output_shape(self, input_shape):
        _check_poolable(input_shape, self.pool_size)
        b, h, w, c = input_shape
        p = self.pool_size
        pooled = (b, None if h is None else h // p, None if w is None else w // p, c)
        return pooled, pooled

    def compute_output_spec(self, x):
        # two outputs of different dtypes (the default spec would make the indices float)
        shape, _ = self.compute_output_shape(x.shape)
        return keras.KerasTensor(shape, dtype=x.dtype), keras.KerasTensor(shape, dtype="int32")

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "implementation": self.implementation}


@keras.saving.register_keras_serializable(package="cnn_apps")
class MaxUnpooling2D(keras.layers.Layer):
    """SegNet's decoder upsampling: ``layer([x, indices])`` with x (B, h, w, C) and the indices of
    the matching :class:`MaxPoolingWithIndices2D` (same shape) -> (B, h p, w p, C), each value where
    the pooling found its maximum, zeros elsewhere."""

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _positive_int(pool_size, "pool_size")

    def call(self, inputs):
        x, indices = inputs
        if len(x.shape) != 4 or (
            None not in x.shape
            and None not in indices.shape
            and tuple(x.shape[1:]) != tuple(indices.shape[1:])
        ):
            raise ValueError(
                f"max unpooling needs x and indices of the same (B, h, w, C) shape, got "
                f"{tuple(x.shape)} and {tuple(indices.shape)}"
            )
        return max_unpool(x, indices, self.pool_size)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape[0]
        p = self.pool_size
        return (b, None if h is None else h * p, None if w is None else w * p, c)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}
