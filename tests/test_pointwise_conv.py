"""MatmulGradConv2D against keras.layers.Conv2D, the reference it must equal: outputs and the
gradients of inputs, kernel and bias in bfloat16 (checked also against a NumPy float64 product),
the matrix product actually in the gradient graph, the fall-backs, and the saved format."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D


@pytest.fixture
def bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _pair(input_shape, filters, **kwargs):
    ours, reference = MatmulGradConv2D(filters, **kwargs), keras.layers.Conv2D(filters, **kwargs)
    for layer in (ours, reference):
        layer.build(input_shape)
    reference.set_weights(ours.get_weights())
    return ours, reference


def _grads(layer, x, weights):
    """(output, d/dx, d/dkernel, d/dbias) of sum(output * weights), as float64 arrays."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return [np.asarray(tf.cast(t, tf.float32), np.float64) for t in (y, *grads)]


def test_a_bfloat16_1x1_step_equals_keras_conv2d_and_numpy(bfloat16):
    shape, filters = (3, 5, 7, 16), 24
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    weights = tf.constant(rng.normal(size=shape[:3] + (filters,)).astype(np.float32))
    ours, reference = _pair(shape, filters, kernel_size=1, bias_initializer="he_normal")
    got, want = _grads(ours, x, weights), _grads(reference, x, weights)
    for name, a, b in zip(["output", "d/dx", "d/dkernel", "d/dbias"], got, want):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, atol=2e-2 * scale, err_msg=name)
    # the kernel gradient against float64 NumPy: x^T (weights cast as the layer's output was)
    x_seen = np.asarray(tf.cast(tf.cast(x, tf.bfloat16), tf.float32), np.float64).reshape(-1, shape[-1])
    dy = np.asarray(tf.cast(tf.cast(weights, tf.bfloat16), tf.float32), np.float64).reshape(-1, filters)
    np.testing.assert_allclose(got[2].reshape(shape[-1], filters), x_seen.T @ dy, rtol=2e-2, atol=0.1)


def _gradient_op_types(layer, x):
    def step(t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(t), tf.float32))
        return tape.gradient(loss, layer.kernel)

    graph = tf.function(step).get_concrete_function(x).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph._functions.values():  # the custom gradient is a function of the graph
        types |= {op.type for op in function.graph.get_operations()}
    return types


def test_the_kernel_gradient_is_a_matmul_in_bfloat16(bfloat16):
    x = tf.zeros((2, 4, 4, 8))
    ours, reference = _pair(x.shape, 8, kernel_size=1)
    types = _gradient_op_types(ours, x)
    assert "MatMul" in types and "Conv2DBackpropFilter" not in types
    assert "Conv2DBackpropFilter" in _gradient_op_types(reference, x)


@pytest.mark.parametrize(
    "case",
    [
        {"kernel_size": 3},
        {"kernel_size": 1, "strides": 2},
        {"kernel_size": 1, "dilation_rate": 2},
        {"kernel_size": 1, "precision": "float32"},
    ],
    ids=["3x3", "stride2", "dilated", "float32"],
)
def test_what_is_not_a_bfloat16_pointwise_conv_is_keras_own(case):
    case = dict(case)
    policy = case.pop("precision", "mixed_bfloat16")
    keras.mixed_precision.set_global_policy(policy)
    try:
        x = tf.constant(np.random.default_rng(1).normal(size=(2, 6, 6, 8)).astype(np.float32))
        ours, reference = _pair(x.shape, 8, **case)
        assert "Conv2DBackpropFilter" in _gradient_op_types(ours, x)
        weights = tf.ones(ours.compute_output_shape(x.shape))
        for a, b in zip(_grads(ours, x, weights), _grads(reference, x, weights)):
            np.testing.assert_array_equal(a, b)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_it_saves_and_reloads_with_its_weights(tmp_path, bfloat16):
    inputs = keras.Input((4, 4, 8))
    model = keras.Model(inputs, MatmulGradConv2D(6, 1, name="pw")(inputs))
    path = tmp_path / "pw.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("pw"), MatmulGradConv2D)
    assert loaded.get_layer("pw").get_config() == model.get_layer("pw").get_config()
    x = np.random.default_rng(2).normal(size=(2, 4, 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x), np.float32), np.asarray(model(x), np.float32))
