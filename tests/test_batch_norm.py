"""FusedBatchNormalization against Keras 3's own BatchNormalization, the reference it must equal:
outputs, gradients and moving statistics in float32 and bfloat16, the fused kernel actually in
the graph, the fall-backs, and the saved format."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnn_apps.backbones.batch_norm import FusedBatchNormalization


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def _step(layer, x, weights):
    """(training output, gradients of x and the trainable weights, moving mean, moving
    variance, inference output) after one training call."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    after = layer(x, training=False)
    return [np.asarray(t, np.float32) for t in (y, *grads, layer.moving_mean, layer.moving_variance, after)]


def _pair(shape, **kwargs):
    ours, reference = FusedBatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    for layer in (ours, reference):
        layer.build(shape)
        channels = shape[layer.axis]
        if layer.scale:
            layer.gamma.assign(np.linspace(0.5, 2.0, channels))
        if layer.center:
            layer.beta.assign(np.linspace(-1.0, 1.0, channels))
    return ours, reference


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("affine", [True, False])
def test_one_training_step_equals_keras_batch_norm(policy, affine):
    shape = (4, 5, 6, 8)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, shape).astype(np.float32))
    weights = tf.constant(rng.normal(size=shape).astype(np.float32))
    ours, reference = _pair(shape, momentum=0.9, epsilon=1e-3, center=affine, scale=affine)
    got, want = _step(ours, x, weights), _step(reference, x, weights)
    tolerance = 1e-5 if policy == "float32" else 1e-2
    weight_grads = ["d/dgamma", "d/dbeta"] if affine else []
    names = ["output", "d/dx", *weight_grads, "moving mean", "moving var", "eval"]
    assert len(got) == len(names)
    for name, a, b in zip(names, got, want):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance, err_msg=name)
    # the moving variance took the biased batch variance (Keras 3), not the kernel's n / (n - 1) one
    seen = np.asarray(tf.cast(tf.cast(x, ours.compute_dtype), tf.float32), np.float64)  # as the layer got it
    biased = seen.reshape(-1, shape[-1]).var(axis=0)
    np.testing.assert_allclose(got[-2], 0.9 + 0.1 * biased, rtol=1e-4)


def _op_types(layer, x, training):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("training", [True, False])
def test_the_fused_kernel_runs_on_channels_last_images(training):
    x = tf.zeros((2, 4, 4, 3))
    ours, reference = _pair(x.shape)
    assert "FusedBatchNormV3" in _op_types(ours, x, training)
    assert "FusedBatchNormV3" not in _op_types(reference, x, training)


@pytest.mark.parametrize(
    "case",
    ["features", "channels_first", "synchronized", "small_epsilon"],
)
def test_what_the_kernel_cannot_do_falls_back_to_keras(case):
    shape = (6, 5) if case == "features" else (2, 3, 4, 4)
    kwargs = {
        "channels_first": {"axis": 1},
        "synchronized": {"synchronized": True},
        "small_epsilon": {"epsilon": 1e-6},
    }.get(case, {})
    x = tf.constant(np.random.default_rng(1).normal(size=shape).astype(np.float32))
    ours, reference = _pair(shape, **kwargs)
    assert "FusedBatchNormV3" not in _op_types(ours, x, True)
    np.testing.assert_allclose(ours(x, training=True), reference(x, training=True), rtol=1e-6, atol=1e-6)


def test_it_saves_and_reloads_and_shares_weights_with_keras_batch_norm(tmp_path):
    def model(norm):
        inputs = keras.Input((6, 6, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        return keras.Model(inputs, norm(momentum=0.8, name="bn")(x))

    ours = model(FusedBatchNormalization)
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 3)).astype(np.float32)
    ours(x, training=True)  # moves the statistics off their initial values
    ours.save(tmp_path / "fused.keras")
    loaded = keras.models.load_model(tmp_path / "fused.keras")
    assert type(loaded.get_layer("bn")) is FusedBatchNormalization
    assert loaded.get_layer("bn").get_config() == ours.get_layer("bn").get_config()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ours.predict(x, verbose=0), rtol=1e-6)
    plain = model(keras.layers.BatchNormalization)
    plain.set_weights(ours.get_weights())
    np.testing.assert_allclose(plain.predict(x, verbose=0), ours.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
