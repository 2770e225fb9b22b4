"""RoI max pooling and spatial pyramid pooling against slow NumPy loops, save/load, JAX."""

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from cnn_apps.detection.pooling import RoIPooling, SpatialPyramidPooling, roi_max_pool, spatial_pyramid_pool
from cnn_apps.errors import ConfigError

np_ = ops.convert_to_numpy


def c_round(v):
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def reference_pool(fmap, y0, x0, h, w, ph, pw):
    """Caffe's loops: fmap (H, W, C), a window in cells -> (ph, pw, C); empty bins 0."""
    height, width, channels = fmap.shape
    out = np.zeros((ph, pw, channels), fmap.dtype)
    for i in range(ph):
        hs = min(max(y0 + (i * h) // ph, 0), height)
        he = min(max(y0 + -((-(i + 1) * h) // ph), 0), height)
        for j in range(pw):
            ws = min(max(x0 + (j * w) // pw, 0), width)
            we = min(max(x0 + -((-(j + 1) * w) // pw), 0), width)
            if he > hs and we > ws:
                out[i, j] = fmap[hs:he, ws:we].reshape(-1, channels).max(0)
    return out


def reference_window(roi, scale):
    x1, y1, x2, y2 = (c_round(float(np.float32(v) * np.float32(scale))) for v in roi)
    return y1, x1, max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)


def reference_roi_pool(features, rois, pool, scale):
    batch, num = rois.shape[:2]
    out = np.zeros((batch, num, pool[0], pool[1], features.shape[-1]), features.dtype)
    for b in range(batch):
        for r in range(num):
            roi = rois[b, r]
            if roi[2] > roi[0] and roi[3] > roi[1]:
                out[b, r] = reference_pool(features[b], *reference_window(roi, scale), *pool)
    return out


def reference_spp(features, rois, levels, scale):
    batch = features.shape[0]
    if rois is None:
        h, w = features.shape[1:3]
        return np.stack(
            [
                np.concatenate([reference_pool(features[b], 0, 0, h, w, n, n).ravel() for n in levels])
                for b in range(batch)
            ]
        )
    out = []
    for b in range(batch):
        rows = []
        for roi in rois[b]:
            if roi[2] > roi[0] and roi[3] > roi[1]:
                win = reference_window(roi, scale)
                rows.append(np.concatenate([reference_pool(features[b], *win, n, n).ravel() for n in levels]))
            else:
                rows.append(np.zeros(features.shape[-1] * sum(n * n for n in levels), features.dtype))
        out.append(np.stack(rows))
    return np.stack(out)


SCALE = 0.25  # stride 4: a 9 x 11 map of a 36 x 44 image


def make_features(rng, batch, height, width, channels):
    # distinct values so "which cell is the max" is never a tie; some negative so 0 is no floor
    features = rng.permutation(batch * height * width * channels).astype(np.float32) - 50.0
    return features.reshape(batch, height, width, channels)


def make_case(seed=0, batch=2, num=24, height=9, width=11, channels=3):
    rng = np.random.default_rng(seed)
    features = make_features(rng, batch, height, width, channels)
    img_h, img_w = height / SCALE, width / SCALE
    xy = rng.uniform(-8, [img_w + 8, img_h + 8], (batch, num, 2))
    wh = rng.uniform(1, [img_w, img_h], (batch, num, 2))
    rois = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    specials = np.array(
        [
            [4, 4, 5, 5],  # one cell (cell 1, 1): round(1.25) = 1
            [0, 0, 1, 1],  # one cell at the corner (rounds to cell 0)
            [img_w - 3, img_h - 3, img_w, img_h],  # at the border: rounds past the last cell
            [-20, -20, img_w + 20, img_h + 20],  # bigger than the image
            [10, 10, 10, 30],  # zero width -> zeros
            [-1, -1, -1, -1],  # padding -> zeros
            [img_w + 10, 0, img_w + 30, 20],  # wholly outside -> empty bins -> zeros
            [2.0, 2.0, 6.0, 6.0],  # halves round away from zero: cells 1 .. 2 (torchvision: round(0.5)=1)
        ],
        np.float32,
    )
    rois[:, : len(specials)] = specials
    return features, rois


@pytest.mark.parametrize("pool", [7, 2, (3, 2), 1])
def test_roi_pooling_matches_numpy_loops(pool):
    features, rois = make_case()
    layer = RoIPooling(pool_size=pool, spatial_scale=SCALE)
    got = np_(layer(features, rois))
    pair = (pool, pool) if isinstance(pool, int) else pool
    expected = reference_roi_pool(features, rois, pair, SCALE)
    assert got.shape == (2, 24, *pair, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert (got[:, 4:7] == 0).all()  # zero-area, padded and outside RoIs
    # the one-cell RoI repeats that cell in every bin
    np.testing.assert_array_equal(got[0, 0], np.broadcast_to(features[0, 1, 1], got[0, 0].shape))


def test_roi_pooling_many_shapes_and_scales():
    for seed, (height, width, scale, pool) in enumerate(
        [(1, 1, 1 / 16, 7), (5, 17, 1 / 8, 7), (38, 38, 1 / 16, 7), (13, 6, 1.0, 4)]
    ):
        rng = np.random.default_rng(seed)
        features = make_features(rng, 1, height, width, 2)
        size = np.array([width, height]) / scale
        xy = rng.uniform(-0.1, 1.0, (1, 40, 2)) * size
        rois = np.concatenate([xy, xy + rng.uniform(0.0, 1.0, (1, 40, 2)) * size], -1).astype(np.float32)
        got = np_(roi_max_pool(features, rois, pool, scale))
        np.testing.assert_array_equal(got, reference_roi_pool(features, rois, (pool, pool), scale))


@pytest.mark.parametrize("levels", [(4, 2, 1), (3, 1), (6,)])
def test_spp_matches_numpy_loops(levels):
    features, rois = make_case(1)
    layer = SpatialPyramidPooling(levels=levels, spatial_scale=SCALE)
    got = np_(layer(features, rois))
    bins = sum(n * n for n in levels)
    assert got.shape == (2, 24, 3 * bins)
    np.testing.assert_array_equal(got, reference_spp(features, rois, levels, SCALE))
    whole = np_(layer(features))
    assert whole.shape == (2, 3 * bins)
    np.testing.assert_array_equal(whole, reference_spp(features, None, levels, SCALE))
    # the 1 x 1 level of the whole map is the global max
    if levels[-1] == 1:
        np.testing.assert_array_equal(whole[:, -3:], features.max((1, 2)))


def test_spp_is_roi_pooling_per_level():
    features, rois = make_case(2)
    spp = np_(spatial_pyramid_pool(features, rois, (4, 2, 1), SCALE))
    parts = [np_(roi_max_pool(features, rois, n, SCALE)).reshape(2, 24, -1) for n in (4, 2, 1)]
    np.testing.assert_array_equal(spp, np.concatenate(parts, -1))


def test_gradient_reaches_the_max_cells():
    import tensorflow as tf

    features, rois = make_case(3, 1, 8)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = roi_max_pool(x, rois[:, :1], 1, SCALE)  # the one-cell RoI, one bin
        loss = tf.reduce_sum(out)
    grad = tape.gradient(loss, x).numpy()
    expected = np.zeros_like(features)
    expected[0, 1, 1] = 1.0
    np.testing.assert_array_equal(grad, expected)


def test_shapes_in_a_functional_model_and_save_load(tmp_path):
    feats = keras.Input((9, 11, 3))
    rois = keras.Input((None, 4))
    pooled = RoIPooling(pool_size=3, spatial_scale=SCALE, name="roi_pool")(feats, rois)
    spp = SpatialPyramidPooling(levels=(2, 1), spatial_scale=SCALE, name="spp")(feats, rois)
    whole = SpatialPyramidPooling(levels=(2, 1), name="spp_whole")(feats)
    assert tuple(pooled.shape) == (None, None, 3, 3, 3)
    assert tuple(spp.shape) == (None, None, 15) and tuple(whole.shape) == (None, 15)
    head = keras.layers.Dense(4, name="head")(keras.layers.Reshape((-1, 27))(pooled))
    model = keras.Model([feats, rois], {"head": head, "spp": spp, "whole": whole})
    features, boxes = make_case(4)
    before = model.predict([features, boxes], verbose=0)
    path = tmp_path / "pooling.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("roi_pool"), RoIPooling)
    assert loaded.get_layer("roi_pool").get_config()["pool_size"] == (3, 3)
    assert loaded.get_layer("spp").get_config()["levels"] == (2, 1)
    after = loaded.predict([features, boxes], verbose=0)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    # another number of RoIs runs through the same model
    assert model.predict([features, boxes[:, :5]], verbose=0)["head"].shape == (2, 5, 4)


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="pool_size"):
        RoIPooling(pool_size=0)
    with pytest.raises(ConfigError, match="levels"):
        SpatialPyramidPooling(levels=())
    with pytest.raises(ConfigError, match="spatial_scale"):
        RoIPooling(spatial_scale=-1)
    with pytest.raises(ConfigError, match="fixed input size"):
        roi_max_pool(keras.Input((None, None, 3)), keras.Input((4, 4)))


JAX_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    from cnn_apps.detection.pooling import RoIPooling, SpatialPyramidPooling
    assert keras.backend.backend() == "jax"
    folder = sys.argv[1]
    data = np.load(folder + "/case.npz")
    f, r, scale = data["features"], data["rois"], float(data["scale"])
    out = {"roi": RoIPooling(7, scale)(f, r), "spp": SpatialPyramidPooling((4, 2, 1), scale)(f, r),
           "whole": SpatialPyramidPooling((4, 2, 1))(f)}
    import jax
    out["jit"] = jax.jit(lambda a, b: RoIPooling(7, scale)(a, b))(f, r)
    np.savez(folder + "/jax.npz", **{k: np.asarray(v) for k, v in out.items()})
    assert "tensorflow" not in sys.modules, "the JAX path imported TensorFlow"
    print("ok")
""")


@pytest.mark.slow
def test_same_results_under_jax(tmp_path):
    pytest.importorskip("jax")
    features, rois = make_case(5)
    np.savez(tmp_path / "case.npz", features=features, rois=rois, scale=SCALE)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "jax.npz")
    np.testing.assert_array_equal(got["roi"], reference_roi_pool(features, rois, (7, 7), SCALE))
    np.testing.assert_array_equal(got["jit"], got["roi"])
    np.testing.assert_array_equal(got["spp"], reference_spp(features, rois, (4, 2, 1), SCALE))
    np.testing.assert_array_equal(got["whole"], reference_spp(features, None, (4, 2, 1), SCALE))
