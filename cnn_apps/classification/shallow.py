"""The "shallow" transfer mode: frozen CNN features + a scikit-learn linear model.

The steps, with B batch, N examples, F features, K classes:

1. :func:`feature_extractor` cuts an :class:`ImageClassifier` at its ``avg_pool``
   layer: raw pixels (B, H, W, C) 0..255 in, pooled backbone features (B, F) out.
2. :func:`extract_features` runs it over a dataset (inference mode) -> X (N, F), y (N,).
3. :func:`fit_scaler` standardizes the features; :func:`fit_shallow` fits a
   logistic regression or a linear SVM on the standardized features.
4. :func:`to_keras` folds scaler and linear model into one softmax Dense layer on
   top of the frozen backbone: a plain ``ImageClassifier`` again (pixels in,
   probabilities out), which saves, exports and serves like any other.
5. :func:`log_sklearn_model` logs scaler + model as one sklearn Pipeline to MLflow
   (input: the raw features X).

Exactness: the scaler is kept out of the estimator (no sklearn Pipeline while
fitting) so the conversion is a closed form: with standardized features
``s = (x - mean) / scale`` the model's scores are ``s @ coef.T + intercept``, which
is ``x @ (coef.T / scale[:, None]) + (intercept - (mean / scale) @ coef.T)``.
Logistic regression (multinomial): the Keras probabilities equal ``predict_proba``
(to float32 rounding). Linear SVM: the Keras output is the softmax of the decision
function, an uncalibrated score whose argmax equals ``predict``.
Two classes: sklearn keeps one score row z (for class 1); the Dense layer gets the
two columns ``[-z/2, z/2]``, whose softmax is ``[1 - sigmoid(z), sigmoid(z)]`` -
exactly logistic regression's ``predict_proba`` and, for the SVM, argmax = ``predict``.
"""

from __future__ import annotations

import numpy as np

from cnn_apps.errors import ModelError, TrackingError

KINDS = ("logistic", "linear_svm")
POOL_LAYER = "avg_pool"
SKLEARN_MODEL_ARTIFACT = "sklearn_model"


def feature_extractor(classifier):
    """A Keras model from the classifier's input to its ``avg_pool`` output.

    Input (B, H, W, C) raw pixels 0..255 (rescaling is inside, as in the classifier);
    output (B, F) pooled backbone features. It shares the classifier's layers and
    weights (no copy), so it is as frozen as the caller keeps it; call it in
    inference mode (:func:`extract_features` does) so BN and dropout do not train.
    """
    import keras

    try:
        pooled = classifier.get_layer(POOL_LAYER).output
    except ValueError as exc:
        raise ModelError(
            f"model '{classifier.name}' has no '{POOL_LAYER}' layer: "
            "feature extraction needs an ImageClassifier"
        ) from exc
    return keras.Model(classifier.inputs, pooled, name=f"{classifier.name}_features")


def extract_features(extractor, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Run ``extractor`` over a batched ``tf.data`` dataset of (images (B, H, W, C), labels (B,)).

    Returns X (N, F) float32 and y (N,) int64, in dataset order, computed with
    ``training=False``.
    """
    features, labels = [], []
    for images, y in dataset:
        features.append(np.asarray(extractor(images, training=False), np.float32))
        labels.append(np.asarray(y, np.int64).reshape(-1))
    if not features:
        raise ModelError("extract_features: the dataset is empty")
    return np.concatenate(features), np.concatenate(labels)


def fit_scaler(X: np.ndarray):
    """A ``StandardScaler`` fitted on features X (N, F); :func:`to_keras` folds it in."""
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(np.asarray(X, np.float64))


def fit_shallow(X: np.ndarray, y: np.ndarray, kind: str = "logistic", C: float = 1.0, seed: int = 0):
    """Fit a linear model on standardized features X (N, F) (``scaler.transform(features)``)
    and labels y (N,); returns the fitted estimator.

    ``kind``: ``logistic`` (multinomial logistic regression, lbfgs) or ``linear_svm``
    (one-vs-rest ``LinearSVC``). ``C`` is the inverse regularization strength.
    """
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        # lbfgs fits the multinomial (softmax) model for K > 2 (sklearn >= 1.5 default)
        estimator = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    elif kind == "linear_svm":
        from sklearn.svm import LinearSVC

        estimator = LinearSVC(C=C, dual="auto", max_iter=10000, random_state=seed)
    else:
        raise ModelError(f"shallow model kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return estimator.fit(np.asarray(X, np.float64), np.asarray(y, np.int64))


def dense_weights(scaler, estimator, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The (F, K) kernel and (K,) bias of one Dense layer on raw features that gives
    the estimator's scores on standardized features (binary: ``[-z/2, z/2]``)."""
    coef = np.asarray(estimator.coef_, np.float64)  # (K, F), or (1, F) for two classes
    intercept = np.asarray(estimator.intercept_, np.float64).reshape(-1)
    classes = np.asarray(estimator.classes_)
    if not np.array_equal(classes, np.arange(num_classes)):
        raise ModelError(
            f"the shallow model was fitted on classes {classes.tolist()}, expected "
            f"0..{num_classes - 1}: every class needs training examples"
        )
    if coef.shape[0] == 1:  # two classes: sklearn keeps the score of class 1 only
        coef = np.concatenate([-coef, coef]) / 2.0
        intercept = np.concatenate([-intercept, intercept]) / 2.0
    mean = np.asarray(scaler.mean_, np.float64)
    scale = np.asarray(scaler.scale_, np.float64)
    if coef.shape[1] != mean.shape[0]:
        raise ModelError(f"scaler has {mean.shape[0]} features, the linear model {coef.shape[1]}")
    kernel = coef.T / scale[:, None]
    bias = intercept - (mean / scale) @ coef.T
    return kernel, bias


def to_keras(classifier, scaler, estimator, class_names):
    """A new ``ImageClassifier``: ``classifier``'s backbone (weights copied, frozen) +
    ``avg_pool`` + one softmax Dense ``probabilities`` holding the folded scaler and
    linear model. Input (B, H, W, C) raw pixels; output (B, K) probabilities.

    The new head has no hidden layers and no head dropout: features are taken at
    ``avg_pool``, so a source with ``head_units`` loses those layers (they are not part
    of the features). Dropout inside the backbone (placement ``conv``/``both``) is kept,
    so the backbone is built exactly as in the source; it is inert in inference.
    """
    from cnn_apps.classification.classifier import ImageClassifier

    class_names = [str(c) for c in class_names]
    num_classes = len(class_names)
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    kernel, bias = dense_weights(scaler, estimator, num_classes)

    config = {k: v for k, v in classifier.get_config().items() if k not in ("name", "trainable")}
    keeps_conv_dropout = config.get("dropout_placement") in ("conv", "both")
    config.update(
        num_classes=num_classes,
        class_names=class_names,
        backbone_trainable=False,
        head_units=[],
        dropout=config.get("dropout", 0.0) if keeps_conv_dropout else 0.0,
        dropout_placement="conv" if keeps_conv_dropout else "dense",
    )
    kind = "logistic" if hasattr(estimator, "predict_proba") else "linear_svm"
    model = ImageClassifier(**config, name=f"{classifier.backbone_name}_shallow_{kind}")
    if model.get_layer(POOL_LAYER).output.shape[-1] != kernel.shape[0]:
        raise ModelError(
            f"the features have {kernel.shape[0]} dimensions, the rebuilt "
            f"classifier's {POOL_LAYER} {model.get_layer(POOL_LAYER).output.shape[-1]}"
        )
    model.backbone.set_weights(classifier.backbone.get_weights())
    model.backbone.trainable = False
    model.get_layer("probabilities").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def log_sklearn_model(estimator, scaler, X_sample: np.ndarray) -> str:
    """Log ``Pipeline(scaler, estimator)`` to the active MLflow run as ``sklearn_model``.

    The logged model takes raw features (N, F) (the scaler is inside) and predicts
    class indices; ``X_sample`` (a few raw feature rows) is the input example.
    Returns the model URI (also set as the run tag ``sklearn_model_uri``).
    """
    import mlflow
    import mlflow.sklearn
    import sklearn
    from sklearn.pipeline import Pipeline

    if mlflow.active_run() is None:
        raise TrackingError("log_sklearn_model needs an active MLflow run (mlflow.start_run())")
    pipeline = Pipeline([("scaler", scaler), ("model", estimator)])
    example = np.asarray(X_sample, np.float32)[:5]
    # explicit requirements: MLflow's inference of them loads the model in a subprocess (slow)
    info = mlflow.sklearn.log_model(
        pipeline,
        name=SKLEARN_MODEL_ARTIFACT,
        input_example=example,
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
    )
    mlflow.set_tag("sklearn_model_uri", info.model_uri)
    return info.model_uri
