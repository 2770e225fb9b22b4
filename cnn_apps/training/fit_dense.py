"""Fitting a dense predictor (a detector or a segmenter) with the stage conventions: optimizer
and schedule from the config, best-``val_loss`` checkpoint, early stopping, per-epoch MLflow
metrics (``train_loss``, ``val_loss``, every loss component a detector reports, e.g.
``train_box_loss``, and any compiled metric, e.g. a segmenter's ``val_miou``) and loss curves.

The MLflow run must be active. These tasks have no accuracy to diagnose bias and variance
with; the picture is the train vs validation loss (and mAP / mIoU, measured by the stage
after the fit).
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import keras

from cnn_apps import tracking
from cnn_apps.config import TrainingConfig
from cnn_apps.training.callbacks import FailOnNaN, MlflowEpochLogger
from cnn_apps.training.optim import build_optimizer, schedule_callbacks


def fit_dense(
    model, train_ds, val_ds, cfg: TrainingConfig, *, num_train: int, title: str = "", loss=None, metrics=None
) -> dict:
    """Compile (``loss`` None: the model computes its own, as a detector does; ``metrics``: any
    compiled metrics), fit, keep the best epoch's weights. Returns epochs run, best epoch,
    seconds, images/s and the best validation loss."""
    import mlflow
    from cnn_apps import plots

    steps = max(1, math.ceil(num_train / cfg.batch_size))
    model.compile(
        optimizer=build_optimizer(cfg, steps),
        loss=loss,
        metrics=metrics,
        jit_compile="auto" if cfg.jit_compile is None else cfg.jit_compile,
    )
    stopper = None
    with tempfile.TemporaryDirectory(prefix="cnn-apps-ckpt-") as tmp:
        ckpt = os.path.join(tmp, "best.weights.h5")
        callbacks = [
            keras.callbacks.ModelCheckpoint(
                ckpt, monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            MlflowEpochLogger(),
            FailOnNaN(),
            *schedule_callbacks(cfg),
        ]
        if cfg.early_stopping_patience > 0:
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True
            )
            callbacks.append(stopper)
        start = time.perf_counter()
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, shuffle=False, verbose=2
        )
        seconds = time.perf_counter() - start
        if os.path.exists(ckpt):
            model.load_weights(ckpt)
    hist = history.history
    val = hist.get("val_loss", [])
    finite = [v for v in val if math.isfinite(v)]
    best_epoch = val.index(min(finite)) if finite else len(hist["loss"]) - 1
    summary = {
        "epochs_trained": len(hist["loss"]),
        "best_epoch": best_epoch,
        "early_stopping_epoch": int(stopper.stopped_epoch) if stopper and stopper.stopped_epoch else -1,
        "train_seconds": seconds,
        "train_images_per_s": num_train * len(hist["loss"]) / seconds,
        "best_val_loss": float(min(finite)) if finite else float("nan"),
    }
    mlflow.log_metrics(summary)
    epochs = list(range(1, len(hist["loss"]) + 1))
    series = {
        f"{'validation' if k.startswith('val_') else 'train'} {k.removeprefix('val_')}": v
        for k, v in sorted(hist.items())
        if k.endswith("loss")
    }
    tracking.log_figure(
        plots.curves(
            epochs, series, title=title or "losses", xlabel="epoch", ylabel="loss (log scale)", logy=True
        ),
        "learning_curves.png",
    )
    return summary
