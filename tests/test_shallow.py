"""The shallow transfer mode: frozen features + sklearn linear model, folded back into Keras."""

import numpy as np
import pytest

from cnn_apps.classification import ImageClassifier
from cnn_apps.classification.shallow import (
    extract_features,
    feature_extractor,
    fit_scaler,
    fit_shallow,
    log_sklearn_model,
    to_keras,
)
from cnn_apps.errors import ModelError, TrackingError

SHAPE = (16, 16, 1)
TINY = {"stage_filters": (8, 16), "blocks_per_stage": (1, 1)}


def _data(n_per_class=20, classes=3, seed=0):
    """Separable images: class k has mean intensity 40 + 80k, plus noise. (N, 16, 16, 1), (N,)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = 40.0 + 80.0 * labels[:, None, None, None] + rng.normal(0, 15, (len(labels), *SHAPE))
    return np.clip(images, 0, 255).astype(np.float32), labels.astype(np.int64)


def _dataset(images, labels, batch=16):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


@pytest.fixture(scope="module")
def base():
    import keras

    keras.utils.set_random_seed(0)
    return ImageClassifier(5, SHAPE, backbone_args=TINY, head_units=[12], dropout=0.3)


@pytest.fixture(scope="module")
def features(base):
    images, labels = _data()
    X, y = extract_features(feature_extractor(base), _dataset(images, labels))
    return images, X, y


def test_feature_extractor_and_features(base, features):
    images, X, y = features
    extractor = feature_extractor(base)
    assert extractor.input_shape == (None, *SHAPE)
    width = base.get_layer("avg_pool").output.shape[-1]
    assert extractor.output_shape == (None, width)
    assert X.shape == (60, width) and X.dtype == np.float32
    assert y.dtype == np.int64 and np.array_equal(y, np.repeat(np.arange(3), 20))
    np.testing.assert_allclose(X[:4], extractor.predict(images[:4], verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="avg_pool"):
        import keras

        inp = keras.Input((4,))
        feature_extractor(keras.Model(inp, keras.layers.Dense(2)(inp)))


@pytest.mark.parametrize("kind", ["logistic", "linear_svm"])
def test_conversion_reproduces_sklearn(base, features, kind, tmp_path):
    import keras

    images, X, y = features
    scaler = fit_scaler(X)
    estimator = fit_shallow(scaler.transform(X), y, kind=kind, C=0.5, seed=0)
    model = to_keras(base, scaler, estimator, ["dark", "mid", "bright"])
    assert isinstance(model, ImageClassifier) and model.class_names == ["dark", "mid", "bright"]
    assert model.head_units == [] and model.output_shape == (None, 3)
    # only avg_pool -> probabilities after the backbone: no dropout or hidden layer in the head
    assert not any(layer.name.startswith("head_") for layer in model.layers)

    probs = model.predict(images, verbose=0)
    Xs = scaler.transform(X)
    assert np.array_equal(probs.argmax(axis=1), estimator.predict(Xs))
    if kind == "logistic":
        np.testing.assert_allclose(probs, estimator.predict_proba(Xs), atol=1e-5)
    else:  # softmax of the (uncalibrated) decision function
        scores = estimator.decision_function(Xs)
        expected = np.exp(scores - scores.max(axis=1, keepdims=True))
        np.testing.assert_allclose(probs, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    assert (estimator.predict(Xs) == y).mean() >= 0.9  # the data is separable

    # the backbone is a frozen copy of the source's, equal by value
    assert model.backbone is not base.backbone and not model.backbone.trainable
    assert all(not w.trainable for w in model.backbone.weights)
    for a, b in zip(model.backbone.get_weights(), base.backbone.get_weights(), strict=True):
        assert np.array_equal(a, b)
    assert {w.path.split("/")[-2] for w in model.trainable_weights} == {"probabilities"}

    path = tmp_path / f"shallow_{kind}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ImageClassifier) and not loaded.backbone.trainable
    assert loaded.class_names == ["dark", "mid", "bright"]
    np.testing.assert_allclose(loaded.predict(images, verbose=0), probs, atol=1e-6)


@pytest.mark.parametrize("kind", ["logistic", "linear_svm"])
def test_two_classes(base, features, kind):
    images, X, y = features
    keep = y < 2
    scaler = fit_scaler(X[keep])
    estimator = fit_shallow(scaler.transform(X[keep]), y[keep], kind=kind)
    assert estimator.coef_.shape[0] == 1  # sklearn's binary form: one score row
    model = to_keras(base, scaler, estimator, ["a", "b"])
    probs = model.predict(images[keep], verbose=0)
    Xs = scaler.transform(X[keep])
    assert np.array_equal(probs.argmax(axis=1), estimator.predict(Xs))
    if kind == "logistic":
        np.testing.assert_allclose(probs, estimator.predict_proba(Xs), atol=1e-5)


def test_errors(base, features):
    _, X, y = features
    scaler = fit_scaler(X)
    with pytest.raises(ModelError, match="kind"):
        fit_shallow(X, y, kind="forest")
    estimator = fit_shallow(scaler.transform(X), y)
    with pytest.raises(ModelError, match="classes"):  # 3 fitted classes, 4 names
        to_keras(base, scaler, estimator, ["a", "b", "c", "d"])


def test_log_sklearn_model(features, tmp_path, monkeypatch):
    import mlflow
    import mlflow.sklearn

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, X, y = features
    scaler = fit_scaler(X)
    estimator = fit_shallow(scaler.transform(X), y, kind="logistic")
    with pytest.raises(TrackingError, match="active MLflow run"):
        log_sklearn_model(estimator, scaler, X[:3])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.set_experiment("shallow-test")
        with mlflow.start_run() as run:
            uri = log_sklearn_model(estimator, scaler, X[:3])
        assert mlflow.get_run(run.info.run_id).data.tags["sklearn_model_uri"] == uri
        pipeline = mlflow.sklearn.load_model(uri)
        # the logged pipeline holds the scaler: it takes raw features
        assert np.array_equal(pipeline.predict(X), estimator.predict(scaler.transform(X)))
        np.testing.assert_allclose(pipeline.predict_proba(X), estimator.predict_proba(scaler.transform(X)))
    finally:
        mlflow.set_tracking_uri(None)
