"""Keras callbacks that write to MLflow."""

from __future__ import annotations

import keras

# Keras' history names -> the names this package logs.
_RENAME = {"loss": "train_loss", "accuracy": "train_accuracy", "learning_rate": "learning_rate"}


def metric_name(key: str) -> str:
    """``loss`` -> ``train_loss``, ``val_accuracy`` stays, ``foo`` -> ``train_foo``."""
    if key in _RENAME:
        return _RENAME[key]
    if key.startswith("val_") or key.startswith("train_"):
        return key
    return f"train_{key}"


class FailOnNaN(keras.callbacks.Callback):
    """Stop training with a :class:`~cnn_apps.errors.TrainingError` the first batch whose loss is
    NaN or infinite, naming the epoch and batch (Keras' TerminateOnNaN stops quietly, and the
    run would look finished)."""

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        import math

        from cnn_apps.errors import TrainingError

        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise TrainingError(
                f"the training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}: "
                "lower training.learning_rate, or look for NaN/inf values or broken boxes/masks in the data"
            )


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log every epoch's metrics (renamed by :func:`metric_name`) and the learning rate,
    with ``step`` = epoch index (0-based), so the MLflow UI draws them as curves."""

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        metrics = {f"{self.prefix}{metric_name(k)}": float(v) for k, v in (logs or {}).items()}
        lr = self._learning_rate()
        if lr is not None:
            metrics[f"{self.prefix}learning_rate"] = lr
        mlflow.log_metrics(metrics, step=epoch)

    def _learning_rate(self):
        opt = getattr(self.model, "optimizer", None)
        if opt is None:
            return None
        try:
            return float(keras.ops.convert_to_numpy(opt.learning_rate))
        except Exception:  # a schedule object on an optimizer that was never stepped
            return None


class InferenceErrorLogger(keras.callbacks.Callback):
    """Per epoch, the training error in inference mode on a fixed slice of the training
    split (``train_error``), the validation error (``val_error`` = 1 - val_accuracy) and
    the regularization loss (``regularization_loss`` = sum of the kernel penalties).
    Keeps the series in ``self.series`` for the error-curve plot."""

    def __init__(self, train_eval_ds=None):
        super().__init__()
        self.train_eval_ds = train_eval_ds
        self.series = {"train_error": [], "val_error": [], "regularization_loss": []}

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        from cnn_apps.training.diagnosis import classification_error

        logs = logs or {}
        metrics = {
            "regularization_loss": float(sum(float(keras.ops.convert_to_numpy(v)) for v in self.model.losses))
        }
        if self.train_eval_ds is not None:
            metrics["train_error"] = classification_error(self.model, self.train_eval_ds)
        if "val_accuracy" in logs:
            metrics["val_error"] = 1.0 - float(logs["val_accuracy"])
        for k, v in metrics.items():
            self.series[k].append(v)
        mlflow.log_metrics(metrics, step=epoch)
