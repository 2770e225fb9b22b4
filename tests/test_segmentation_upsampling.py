"""Upsampling layers against NumPy references and cv2, the course's strided-conv shapes, the
transposed conv's bilinear alignment, SegNet pooling indices and unpooling, save/load, JAX."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from keras import ops

from cnn_apps.errors import ConfigError
from cnn_apps.segmentation.upsampling import (
    BilinearInitializer,
    MaxPoolingWithIndices2D,
    MaxUnpooling2D,
    Upsample2D,
    bilinear_kernel,
    transposed_upsampler,
    upsample_bilinear,
)

np_ = ops.convert_to_numpy
REPO = Path(__file__).resolve().parents[1]


def random_map(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _pick(values, i, axis, border):
    """values[i] along axis, clamped to the edge, or 0 outside for border "zero"."""
    n = values.shape[axis]
    out = np.take(values, np.clip(i, 0, n - 1), axis=axis)
    if border == "zero":
        out = out * ((i >= 0) & (i < n)).reshape([-1 if a == axis else 1 for a in range(4)])
    return out


def reference_bilinear(x, factor, border):
    """x (B, H, W, C) -> (B, H f, W f, C), half-pixel centres, in float64: output pixel o samples
    (o + 0.5) / f - 0.5; outside pixels repeat the edge ("clamp") or are 0 ("zero")."""
    out = x.astype(np.float64)
    for axis in (1, 2):
        src = (np.arange(out.shape[axis] * factor) + 0.5) / factor - 0.5
        lo = np.floor(src).astype(int)
        weight = (src - lo).reshape([-1 if a == axis else 1 for a in range(4)])
        out = _pick(out, lo, axis, border) * (1 - weight) + _pick(out, lo + 1, axis, border) * weight
    return out


def reference_pool(x, p):
    """Loops: x (B, H, W, C) -> pooled, local indices (first max in row-major order), and the
    unpooled map (each max back in its cell, zeros elsewhere)."""
    b, h, w, c = x.shape
    pooled = np.zeros((b, h // p, w // p, c), x.dtype)
    index = np.zeros((b, h // p, w // p, c), np.int32)
    unpooled = np.zeros_like(x)
    for n in range(b):
        for i in range(h // p):
            for j in range(w // p):
                for k in range(c):
                    best, where = None, None
                    for dy in range(p):
                        for dx in range(p):
                            v = x[n, i * p + dy, j * p + dx, k]
                            if best is None or v > best:  # strictly greater: the first max wins
                                best, where = v, (dy, dx)
                    pooled[n, i, j, k], index[n, i, j, k] = best, where[0] * p + where[1]
                    unpooled[n, i * p + where[0], j * p + where[1], k] = best
    return pooled, index, unpooled


def tied_map(shape, seed):
    """Values from a handful of levels, so most windows hold tied maxima (plus one all-equal
    window), none of them 0 so "zero elsewhere" is visible."""
    x = np.random.default_rng(seed).integers(1, 4, size=shape).astype(np.float32)
    x[0, :3, :3, 0] = 2.0
    return x


# --------------------------------------------------------------------------- the course's shapes


def test_strided_conv_and_transposed_conv_shapes_and_overlap_add():
    x = random_map((2, 5, 5, 1))
    conv = keras.layers.Conv2D(1, 3, strides=2, padding="valid", use_bias=False, kernel_initializer="ones")
    y = np_(conv(x))
    assert y.shape == (2, 2, 2, 1)
    np.testing.assert_allclose(y[:, 1, 0, 0], x[:, 2:5, 0:3, 0].sum((1, 2)), rtol=1e-5)

    small = random_map((2, 2, 2, 1), seed=1)
    deconv = keras.layers.Conv2DTranspose(
        1, 3, strides=2, padding="valid", use_bias=False, kernel_initializer="ones"
    )
    got = np_(deconv(small))
    assert got.shape == (2, 5, 5, 1)
    expected = np.zeros((2, 5, 5, 1), np.float32)
    for i in range(2):
        for j in range(2):  # each input pixel adds itself to a 3 x 3 patch at stride 2
            expected[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3] += small[:, i : i + 1, j : j + 1]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got[:, 2, 2], small.sum((1, 2)), rtol=1e-6)  # the shared centre


# --------------------------------------------------------------------------- Upsample2D


@pytest.mark.parametrize("factor", [2, 3])
def test_nearest_is_repeat(factor):
    x = random_map((2, 3, 4, 2))
    got = np_(Upsample2D(factor)(x))
    np.testing.assert_array_equal(got, np.repeat(np.repeat(x, factor, 1), factor, 2))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bilinear_matches_numpy_cv2_and_keras(factor):
    x = random_map((2, 5, 4, 3), seed=factor)
    got = np_(Upsample2D(factor, "bilinear")(x))
    assert got.shape == (2, 5 * factor, 4 * factor, 3)
    np.testing.assert_allclose(got, reference_bilinear(x, factor, "clamp"), atol=1e-5)
    for b in range(2):
        expected = cv2.resize(x[b], (4 * factor, 5 * factor), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(got[b], expected, atol=1e-5)
    keras_layer = keras.layers.UpSampling2D(factor, interpolation="bilinear")
    np.testing.assert_allclose(got, np_(keras_layer(x)), atol=1e-6)


def test_two_tap_phases_are_the_same_bilinear():
    # the path Upsample2D takes when H and W are only known at run time
    x = random_map((1, 3, 5, 2), seed=9)
    for factor in (1, 2, 3, 4):
        np.testing.assert_allclose(
            np_(upsample_bilinear(x, factor)), reference_bilinear(x, factor, "clamp"), atol=1e-5
        )


# --------------------------------------------------------------------------- transposed conv


@pytest.mark.parametrize(
    "size, taps",
    [
        (1, [1.0]),
        (3, [0.5, 1.0, 0.5]),
        (4, [0.25, 0.75, 0.75, 0.25]),
        (5, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),
        (6, [1 / 6, 0.5, 5 / 6, 5 / 6, 0.5, 1 / 6]),
    ],
)
def test_bilinear_kernel_is_fcn_filter(size, taps):
    kernel = bilinear_kernel(size, 3)
    assert kernel.shape == (size, size, 3, 3) and kernel.dtype == np.float32
    # FCN's upsample_filt: (1 - |y - c| / f) (1 - |x - c| / f)
    f = (size + 1) // 2
    c = f - 1 if size % 2 else f - 0.5
    grid = np.arange(size)
    formula = (1 - np.abs(grid[:, None] - c) / f) * (1 - np.abs(grid[None, :] - c) / f)
    np.testing.assert_allclose(formula, np.outer(taps, taps), atol=1e-12)  # the pinned values
    for ch in range(3):
        np.testing.assert_allclose(kernel[:, :, ch, ch], formula, rtol=1e-6)
    off = kernel.copy()
    off[:, :, range(3), range(3)] = 0
    assert not off.any()  # channel c only feeds channel c


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
def test_transposed_kernel_phases_sum_to_one(factor):
    # every output phase gets weights summing to 1 in each direction: interpolation, no gain
    k = 2 * factor - factor % 2
    taps = np.sqrt(np.diagonal(bilinear_kernel(k, 1)[:, :, 0, 0]))  # the 1-D filter of the outer product
    for phase in range(factor):
        assert taps[phase::factor].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_transposed_upsampler_is_zero_padded_half_pixel_bilinear(factor):
    x = random_map((2, 4, 5, 2), seed=10 + factor)
    layer = transposed_upsampler(2, factor)
    assert layer.kernel_size == (2 * factor - factor % 2,) * 2 and layer.strides == (factor, factor)
    got = np_(layer(x))
    assert got.shape == (2, 4 * factor, 5 * factor, 2)
    assert not layer.use_bias
    np.testing.assert_array_equal(np_(layer.kernel), bilinear_kernel(2 * factor - factor % 2, 2))
    # the whole output: half-pixel bilinear of the input with zeros outside (no half-pixel shift)
    np.testing.assert_allclose(got, reference_bilinear(x, factor, "zero"), atol=1e-5)
    # inside the outer floor(f / 2) rows and columns it is Upsample2D's bilinear
    edge = factor // 2
    inner = (slice(None), slice(edge, 4 * factor - edge), slice(edge, 5 * factor - edge))
    np.testing.assert_allclose(got[inner], np_(Upsample2D(factor, "bilinear")(x))[inner], atol=1e-5)
    if edge:  # and the border really differs: it fades towards 0
        assert not np.allclose(got[:, 0], reference_bilinear(x, factor, "clamp")[:, 0], atol=1e-3)


def test_transposed_upsampler_on_a_ramp():
    factor = 4
    rows, cols = np.meshgrid(np.arange(6.0), np.arange(5.0), indexing="ij")
    ramp = (2.0 * rows - 3.0 * cols + 1.0).astype(np.float32)[None, :, :, None]
    got = np_(transposed_upsampler(1, factor)(ramp))[0, :, :, 0]
    src = (np.arange(6 * factor) + 0.5) / factor - 0.5, (np.arange(5 * factor) + 0.5) / factor - 0.5
    exact = 2.0 * src[0][:, None] - 3.0 * src[1][None, :] + 1.0  # the ramp at half-pixel positions
    e = factor // 2
    np.testing.assert_allclose(got[e:-e, e:-e], exact[e:-e, e:-e], atol=1e-5)


def test_transposed_upsampler_options():
    x = random_map((1, 3, 3, 4))
    frozen = transposed_upsampler(4, 2, trainable=False, name="up2")
    assert frozen.name == "up2" and np_(frozen(x)).shape == (1, 6, 6, 4)
    assert not frozen.trainable_weights
    free = transposed_upsampler(6, 2, bilinear_init=False)
    assert np_(free(x)).shape == (1, 6, 6, 6)  # other channel counts need another initialiser
    with pytest.raises(ConfigError, match="filters"):
        transposed_upsampler(6, 2)(x)
    assert BilinearInitializer.from_config(BilinearInitializer().get_config()) is not None
    with pytest.raises(ConfigError, match="factor"):
        transposed_upsampler(4, 0)


# --------------------------------------------------------------------------- max pooling / unpooling


@pytest.mark.parametrize("pool", [2, 3])
def test_unpooling_puts_maxima_back_exactly(pool):
    x = tied_map((2, 6, 12, 3), seed=pool)
    pooled, index = MaxPoolingWithIndices2D(pool)(x)
    pooled, index = np_(pooled), np_(index)
    ref_pooled, ref_index, ref_unpooled = reference_pool(x, pool)
    assert index.dtype == np.int32 and index.shape == (2, 6 // pool, 12 // pool, 3)
    np.testing.assert_array_equal(pooled, ref_pooled)
    np.testing.assert_array_equal(index, ref_index)
    assert index[0, 0, 0, 0] == 0  # the all-equal window: the first cell
    unpooled = np_(MaxUnpooling2D(pool)([pooled, index]))
    np.testing.assert_array_equal(unpooled, ref_unpooled)
    # exactly one non-zero per window and channel, all other cells zero
    windows = unpooled.reshape(2, 6 // pool, pool, 12 // pool, pool, 3)
    np.testing.assert_array_equal((windows != 0).sum((2, 4)), np.ones((2, 6 // pool, 12 // pool, 3)))
    np.testing.assert_array_equal(windows.max((2, 4)), pooled)


def test_tie_order_is_numpy_argmax():
    x = np.zeros((1, 2, 2, 4), np.float32)
    x[0, :, :, 1] = [[0, 5], [5, 5]]  # ties at 1, 2, 3 -> 1
    x[0, :, :, 2] = [[1, 0], [1, 0]]  # ties at 0, 2 -> 0
    x[0, :, :, 3] = [[0, 0], [7, 7]]  # ties at 2, 3 -> 2
    _, index = MaxPoolingWithIndices2D(2)(x)
    np.testing.assert_array_equal(np_(index)[0, 0, 0], [0, 1, 0, 2])
    np.testing.assert_array_equal(np_(index)[0, 0, 0], x[0].reshape(4, 4).argmax(0))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TF op needs the TensorFlow backend")
def test_tf_implementation_agrees_and_gradient_goes_to_the_argmax():
    import tensorflow as tf

    for pool in (2, 3):
        x = tied_map((2, 6, 6, 3), seed=7 + pool)
        portable = [np_(t) for t in MaxPoolingWithIndices2D(pool, implementation="portable")(x)]
        native_layer = MaxPoolingWithIndices2D(pool, implementation="tf")
        assert not native_layer.supports_jit
        native = [np_(t) for t in native_layer(x)]
        np.testing.assert_array_equal(native[0], portable[0])
        np.testing.assert_array_equal(native[1], portable[1])
        assert native[1].dtype == np.int32
    x = tf.constant(tied_map((1, 4, 4, 2), seed=3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled, _ = MaxPoolingWithIndices2D(2)(x)
        loss = tf.reduce_sum(pooled)
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_array_equal(grad, (reference_pool(x.numpy(), 2)[2] != 0).astype(np.float32))


def test_indivisible_sizes_and_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"divisible by the pool size 2.*\(1, 5, 4, 2\)"):
        MaxPoolingWithIndices2D(2)(np.zeros((1, 5, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"divisible by the pool size 3.*\(None, 6, 4, 2\)"):
        MaxPoolingWithIndices2D(3)(keras.Input((6, 4, 2)))
    with pytest.raises(ValueError, match="same"):
        MaxUnpooling2D(2)([np.zeros((1, 2, 2, 3), np.float32), np.zeros((1, 2, 3, 3), np.int32)])
    with pytest.raises(ConfigError, match="pool_size"):
        MaxUnpooling2D(0)
    with pytest.raises(ConfigError, match="implementation"):
        MaxPoolingWithIndices2D(2, implementation="cuda")
    with pytest.raises(ConfigError, match="interpolation"):
        Upsample2D(2, "bicubic")


# --------------------------------------------------------------------------- models, save/load


def test_layers_in_a_functional_model_with_free_size_and_save_load(tmp_path):
    inputs = keras.Input((None, None, 2))
    features = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    pooled, index = MaxPoolingWithIndices2D(2, name="pool")(features)
    assert tuple(pooled.shape) == (None, None, None, 4) and index.dtype == "int32"
    unpooled = MaxUnpooling2D(2, name="unpool")([pooled, index])
    up = transposed_upsampler(4, 2, name="deconv")(pooled)
    resized = Upsample2D(2, "bilinear", name="resize")(pooled)
    model = keras.Model(inputs, {"unpooled": unpooled, "deconv": up, "resized": resized})
    x = random_map((2, 8, 6, 2), seed=5)
    before = model.predict(x, verbose=0)
    assert before["unpooled"].shape == before["deconv"].shape == before["resized"].shape == (2, 8, 6, 4)
    small = np_(model.get_layer("pool")(model.get_layer("conv")(x))[0])
    np.testing.assert_allclose(before["deconv"], reference_bilinear(small, 2, "zero"), atol=1e-5)
    np.testing.assert_allclose(before["resized"], reference_bilinear(small, 2, "clamp"), atol=1e-5)
    path = tmp_path / "upsampling.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = loaded.predict(x, verbose=0)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert isinstance(loaded.get_layer("pool"), MaxPoolingWithIndices2D)
    assert loaded.get_layer("unpool").get_config()["pool_size"] == 2
    assert loaded.get_layer("resize").get_config()["interpolation"] == "bilinear"
    assert isinstance(loaded.get_layer("deconv").kernel_initializer, BilinearInitializer)
    # another size runs through the same model
    assert model.predict(random_map((1, 4, 12, 2)), verbose=0)["unpooled"].shape == (1, 4, 12, 4)


def test_configs_mirror_the_constructors():
    for layer in (
        Upsample2D(3, "bilinear", name="u"),
        MaxPoolingWithIndices2D(3, implementation="portable"),
        MaxUnpooling2D(3),
    ):
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()


# --------------------------------------------------------------------------- JAX

JAX_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import jax
    from cnn_apps.segmentation.upsampling import (MaxPoolingWithIndices2D, MaxUnpooling2D, Upsample2D,
                                                  transposed_upsampler, upsample_bilinear)
    assert keras.backend.backend() == "jax"
    folder = sys.argv[1]
    x, tied = np.load(folder + "/x.npy"), np.load(folder + "/tied.npy")
    out = {}
    for p in (2, 3):
        pooled, index = MaxPoolingWithIndices2D(p)(tied)
        out[f"pooled{p}"], out[f"index{p}"] = pooled, index
        out[f"unpooled{p}"] = MaxUnpooling2D(p)([pooled, index])
    out["jit_index"] = jax.jit(lambda t: MaxPoolingWithIndices2D(2)(t)[1])(tied)
    for f in (2, 3):
        out[f"nearest{f}"] = Upsample2D(f)(x)
        out[f"bilinear{f}"] = Upsample2D(f, "bilinear")(x)
        out[f"deconv{f}"] = transposed_upsampler(x.shape[-1], f)(x)
        out[f"phases{f}"] = jax.jit(lambda t: upsample_bilinear(t, f))(x)
    np.savez(folder + "/jax.npz", **{k: np.asarray(v) for k, v in out.items()})
    assert "tensorflow" not in sys.modules, "the JAX path imported TensorFlow"
    print("ok")
""")


@pytest.mark.slow
def test_same_results_under_jax(tmp_path):
    pytest.importorskip("jax", reason="jax[cpu] is a dev extra; the check needs a second backend")
    x, tied = random_map((2, 6, 6, 3), seed=21), tied_map((2, 6, 12, 3), seed=22)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "tied.npy", tied)
    expected = {}
    for p in (2, 3):
        pooled, index = MaxPoolingWithIndices2D(p)(tied)
        expected[f"pooled{p}"], expected[f"index{p}"] = np_(pooled), np_(index)
        expected[f"unpooled{p}"] = np_(MaxUnpooling2D(p)([pooled, index]))
    for f in (2, 3):
        expected[f"nearest{f}"] = np_(Upsample2D(f)(x))
        expected[f"bilinear{f}"] = np_(Upsample2D(f, "bilinear")(x))
        expected[f"deconv{f}"] = np_(transposed_upsampler(3, f)(x))
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "jax.npz")
    for p in (2, 3):
        for key in (f"pooled{p}", f"index{p}", f"unpooled{p}"):
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    np.testing.assert_array_equal(got["jit_index"], expected["index2"])
    for f in (2, 3):
        np.testing.assert_array_equal(got[f"nearest{f}"], expected[f"nearest{f}"])
        np.testing.assert_allclose(got[f"bilinear{f}"], expected[f"bilinear{f}"], atol=1e-5)
        np.testing.assert_allclose(got[f"phases{f}"], expected[f"bilinear{f}"], atol=1e-5)
        np.testing.assert_allclose(got[f"deconv{f}"], expected[f"deconv{f}"], atol=1e-5)
        np.testing.assert_allclose(got[f"deconv{f}"], reference_bilinear(x, f, "zero"), atol=1e-5)
