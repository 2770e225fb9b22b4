"""One fit: compile, callbacks (early stopping, checkpoint, schedule, MLflow), curves.

Used by ``train`` and ``finetune``; the MLflow run must be active.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import keras

from cnn_apps import tracking
from cnn_apps.config import TrainingConfig
from cnn_apps.training.callbacks import MlflowEpochLogger
from cnn_apps.training.optim import build_optimizer, schedule_callbacks


def compile_classifier(model, cfg: TrainingConfig, steps_per_epoch: int,
                       learning_rate: float | None = None, epochs: int | None = None) -> None:
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch, learning_rate, epochs),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def fit_and_log(model, train_ds, val_ds, cfg: TrainingConfig, *, num_train: int,
                epochs: int | None = None, learning_rate: float | None = None,
                curves_name: str = "learning_curves.png", title: str = "") -> dict:
    """Fit ``model`` with the stage conventions and log per-epoch metrics and the curves.

    Returns a summary: epochs run, best epoch, seconds, images/s and the
    validation loss/accuracy of the weights kept (the best epoch's, restored).
    """
    import mlflow

    from cnn_apps import plots

    epochs = cfg.epochs if epochs is None else epochs
    steps = max(1, math.ceil(num_train / cfg.batch_size))
    compile_classifier(model, cfg, steps, learning_rate, epochs)
    with tempfile.TemporaryDirectory(prefix="cnn-apps-ckpt-") as tmp:
        ckpt = os.path.join(tmp, "best.weights.h5")
        callbacks = [
            keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=True,
                                            save_weights_only=True),
            MlflowEpochLogger(),
            *schedule_callbacks(cfg),
        ]
        if cfg.early_stopping_patience > 0:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True))
        start = time.perf_counter()
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                            shuffle=False, verbose=2)  # the pipeline shuffles
        seconds = time.perf_counter() - start
        # Early stopping restores the best weights only when it stops early;
        # the checkpoint makes "best epoch wins" hold either way.
        if os.path.exists(ckpt):
            model.load_weights(ckpt)
    hist = history.history
    val_losses = hist.get("val_loss", [])
    best_epoch = int(min(range(len(val_losses)), key=val_losses.__getitem__)) if val_losses else len(hist["loss"]) - 1
    val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
    summary = {
        "epochs_trained": len(hist["loss"]),
        "best_epoch": best_epoch,
        "train_seconds": seconds,
        "train_images_per_s": num_train * len(hist["loss"]) / seconds,
        "best_val_loss": float(val_loss),
        "best_val_accuracy": float(val_accuracy),
    }
    mlflow.log_metrics(summary)
    tracking.log_figure(plots.learning_curves(hist, title or "learning curves"), curves_name)
    return summary
