"""fold_batch_norm against the model it folds (inference outputs, float32 and bfloat16) and
against batch norm's formula in NumPy; what may not be folded stays; the graph loses its
batch norm ops; nested models, the saved format, and the original left as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import cnn_apps.backbones  # noqa: F401  (registers the backbones)
from cnn_apps import registry
from cnn_apps.backbones.fold_batch_norm import FoldedBatchNorm, fold_batch_norm, folded_weights
from cnn_apps.classification.classifier import ImageClassifier


def _batch_norms(model) -> list:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += _batch_norms(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
    return out


def _randomize_statistics(model, seed=0):
    """Moving statistics and affine weights far from the initial 0 / 1, so folding shows."""
    rng = np.random.default_rng(seed)
    for bn in _batch_norms(model):
        c = bn.moving_mean.shape[0]
        bn.moving_mean.assign(rng.normal(size=c))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, c))
        if bn.scale:
            bn.gamma.assign(rng.uniform(0.5, 2.0, c))
        if bn.center:
            bn.beta.assign(rng.normal(size=c))


def _resnet18(**kwargs):
    model = registry.get("backbone", "resnet18")(
        input_shape=(32, 32, 3), include_top=True, num_classes=10, classifier_activation=None, **kwargs
    )
    _randomize_statistics(model)
    return model


def test_a_folded_resnet_computes_what_the_original_does_in_inference():
    model = _resnet18()
    before = [w.copy() for w in model.get_weights()]
    folded = fold_batch_norm(model)
    assert len(_batch_norms(model)) == 20 and _batch_norms(folded) == []
    assert sum(isinstance(layer, FoldedBatchNorm) for layer in folded.layers) == 20
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    got = np.asarray(folded(x, training=False))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    for a, b in zip(model.get_weights(), before):  # the original is untouched
        np.testing.assert_array_equal(a, b)


def test_folded_weights_match_batch_norms_formula_in_numpy():
    inputs = keras.Input((5, 5, 3))
    conv = keras.layers.Conv2D(4, 3, use_bias=True, bias_initializer="he_normal")
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    model = keras.Model(inputs, bn(conv(inputs)))
    _randomize_statistics(model, seed=2)
    x = np.random.default_rng(3).normal(size=(1, 5, 5, 3)).astype(np.float32)
    z = np.asarray(conv(x), np.float64)  # the convolution alone, then batch norm by hand
    mean, var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    want = (z - mean) / np.sqrt(var + 1e-3) * np.asarray(bn.gamma) + np.asarray(bn.beta)
    kernel, bias = folded_weights(conv, bn)
    got = np.asarray(tf.nn.conv2d(x, kernel, 1, "VALID")) + bias
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_what_cannot_be_folded_stays():
    inputs = keras.Input((6, 6, 3))
    relu_conv = keras.layers.Conv2D(4, 3, activation="relu", name="relu_conv")(inputs)
    after_activation = keras.layers.BatchNormalization(name="bn_after_activation")(relu_conv)
    shared = keras.layers.Conv2D(4, 3, name="shared_conv")(inputs)
    two_readers = keras.layers.BatchNormalization(name="bn_two_readers")(shared)
    dense = keras.layers.Dense(4, name="dense")(inputs)
    after_dense = keras.layers.BatchNormalization(name="bn_after_dense")(dense)
    plain = keras.layers.Conv2D(4, 3, name="plain_conv")(inputs)
    foldable = keras.layers.BatchNormalization(name="bn_foldable")(plain)
    outputs = [after_activation, two_readers, shared, after_dense, foldable]
    model = keras.Model(inputs, outputs)
    _randomize_statistics(model)
    folded = fold_batch_norm(model)
    assert sorted(bn.name for bn in _batch_norms(folded)) == [
        "bn_after_activation",
        "bn_after_dense",
        "bn_two_readers",
    ]
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 3)).astype(np.float32)
    for got, want in zip(folded(x, training=False), model(x, training=False)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_a_nested_backbone_is_folded_and_saves(tmp_path):
    classifier = ImageClassifier(5, (32, 32, 3), backbone="resnet_mini")
    _randomize_statistics(classifier)
    folded = fold_batch_norm(classifier)
    assert _batch_norms(classifier) and not _batch_norms(folded)
    x = np.random.default_rng(5).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    want = np.asarray(classifier(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), want, atol=1e-5)
    path = tmp_path / "folded.keras"
    folded.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), want, atol=1e-5)


def test_in_bfloat16_the_inference_graph_has_no_batch_norm():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _resnet18()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    folded = fold_batch_norm(model)
    x = tf.constant(np.random.default_rng(6).normal(size=(2, 32, 32, 3)).astype(np.float32))

    def op_types(m):
        graph = tf.function(lambda t: m(t, training=False)).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    assert "FusedBatchNormV3" in op_types(model)
    assert not {t for t in op_types(folded) if "BatchNorm" in t}
    want = np.asarray(model(x, training=False), np.float32)
    got = np.asarray(folded(x, training=False), np.float32)
    # bfloat16 keeps 8 bits of mantissa: the two round differently through 18 layers
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_only_functional_models_fold():
    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="functional"):
        fold_batch_norm(Custom())


def test_a_detector_network_folds_to_the_same_outputs():
    """Faster R-CNN on a narrow ResNet-50 C4 map: its batch norms fold and the network's outputs
    (RPN, RoI pooling and the box head on the folded map) stay the same. The copy is a plain
    functional model: the detector's own predict_step (decoding, NMS) does not come with it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import peer_models  # the narrow Faster R-CNN that cpu.py --tiny builds

    keras.utils.set_random_seed(0)
    detector, _ = peer_models.build_ours("faster_rcnn", peer_models.SPECS["faster_rcnn"], 64, tiny=True)
    _randomize_statistics(detector)
    folded = fold_batch_norm(detector)
    assert _batch_norms(detector) and not _batch_norms(folded)
    assert type(folded) is keras.Model or type(folded).__name__ == "Functional"
    x = np.random.default_rng(7).uniform(0, 255, size=(2, 64, 64, 3)).astype(np.float32)
    want = keras.tree.flatten(detector(x, training=False))
    got = keras.tree.flatten(folded(x, training=False))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        b = np.asarray(b, np.float32)
        # float32 round-off through 53 layers with large random statistics, amplified by the box
        # decoding's exp: a few coordinates differ in the third digit
        np.testing.assert_allclose(
            np.asarray(a, np.float32), b, rtol=5e-3, atol=1e-4 * max(np.abs(b).max(), 1.0)
        )
