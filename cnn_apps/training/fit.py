"""The one fit loop: compile, callbacks (early stopping, best-epoch checkpoint or epoch
backups, schedule, MLflow), curves, and the bias/variance diagnosis of the weights kept.

It knows nothing about tasks: the caller (a :class:`~cnn_apps.tasks.base.Task`) hands it the
model, the datasets, the compile arguments (a classifier's loss and accuracy, a segmenter's
pixel loss and mIoU, nothing for a detector, whose ``compute_loss`` is its own) and the
error to diagnose (1 - the task's main metric). The MLflow run must be active.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time

import keras

from cnn_apps import tracking
from cnn_apps.config import DiagnosisConfig, TrainingConfig
from cnn_apps.errors import ConfigError
from cnn_apps.training import distribute, resume
from cnn_apps.training.callbacks import FailOnNaN, InferenceErrorLogger, MlflowEpochLogger
from cnn_apps.training.optim import build_optimizer, schedule_callbacks


def classifier_compile_args() -> dict:
    """A softmax classifier's loss and metric."""
    return {
        "loss": keras.losses.SparseCategoricalCrossentropy(),
        "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    }


def compile_model(
    model,
    cfg: TrainingConfig,
    steps_per_epoch: int,
    compile_args: dict | None = None,
    learning_rate: float | None = None,
    epochs: int | None = None,
) -> None:
    """``model.compile`` with the configured optimizer and schedule (learning rate scaled by the
    replicas under ``lr_scaling: linear``) and ``jit_compile``; ``compile_args``: loss and
    metrics (None: a classifier's)."""
    from cnn_apps.training.distribute import scaled_learning_rate

    learning_rate = scaled_learning_rate(cfg, cfg.learning_rate if learning_rate is None else learning_rate)
    model.compile(
        optimizer=build_optimizer(cfg, steps_per_epoch, learning_rate, epochs),
        jit_compile="auto" if cfg.jit_compile is None else cfg.jit_compile,
        **(classifier_compile_args() if compile_args is None else compile_args),
    )


def compile_classifier(model, cfg: TrainingConfig, steps_per_epoch: int, learning_rate=None, epochs=None):
    """:func:`compile_model` with a classifier's loss and accuracy."""
    compile_model(model, cfg, steps_per_epoch, None, learning_rate, epochs)


def fit_and_log(
    model,
    train_ds,
    val_ds,
    cfg: TrainingConfig,
    *,
    num_train: int,
    compile_args: dict | None = None,
    error_fn=None,
    train_eval_ds=None,
    per_epoch_error: bool = False,
    diagnosis: DiagnosisConfig | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    initial_epoch: int = 0,
    prefix: str = "",
    title: str = "",
    backup_dir=None,
    epoch_stream: bool = False,
) -> dict:
    """Fit ``model`` with the stage conventions; log per-epoch metrics, curves and diagnosis.

    ``compile_args``: loss and metrics for ``compile`` (None: a classifier's).
    ``error_fn(model, ds) -> float``: the error diagnosed (1 - accuracy, 1 - mAP50, 1 - mIoU)
    on ``train_eval_ds`` (the training split without shuffling or augmentation) and
    ``val_ds`` after the fit; ``per_epoch_error``: also on a slice of ``train_eval_ds``
    every epoch (``train_error``, with ``val_error`` from ``val_accuracy``).
    ``initial_epoch`` numbers the epochs of a later phase after the earlier ones.
    ``backup_dir``: back up every epoch there and resume from what it holds
    (:mod:`cnn_apps.training.resume`); the best weights are kept there too.
    ``epoch_stream``: ``train_ds`` is one stream of the epochs still to run
    (``split_dataset(epochs=...)``), ``ceil(num_train / batch_size)`` batches each.
    Returns a summary: epochs run, best epoch, early-stopping epoch, seconds, images/s, the
    validation loss (and accuracy, for a classifier) of the weights kept (the best epoch's,
    restored) and, with ``error_fn`` and ``train_eval_ds``, the
    :class:`~cnn_apps.training.diagnosis.Diagnosis`.
    """
    import mlflow

    from cnn_apps import plots
    from cnn_apps.training.diagnosis import diagnose

    diagnosis = diagnosis or DiagnosisConfig()
    epochs = cfg.epochs if epochs is None else epochs
    steps = max(1, math.ceil(num_train / cfg.batch_size))
    compile_model(model, cfg, steps, compile_args, learning_rate, epochs)
    per_epoch_eval = None
    if per_epoch_error and train_eval_ds is not None:
        per_epoch_eval = train_eval_ds.take(max(1, math.ceil(diagnosis.train_eval_examples / cfg.batch_size)))
    errors = InferenceErrorLogger(per_epoch_eval)
    stopper = None
    with contextlib.ExitStack() as stack:
        folder = backup_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="cnn-apps-ckpt-"))
        os.makedirs(folder, exist_ok=True)
        ckpt = os.path.join(folder, resume.BEST)
        callbacks = [
            MlflowEpochLogger(),
            FailOnNaN(),
            errors,
            *schedule_callbacks(cfg),
        ]
        if cfg.early_stopping_patience > 0:
            # "until validation loss starts to increase": stop after `patience` epochs without
            # improvement and keep the best weights.
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True
            )
            callbacks.append(stopper)
        done, backup = 0, None
        if backup_dir is None:
            callbacks.insert(
                0,
                keras.callbacks.ModelCheckpoint(
                    ckpt, monitor="val_loss", save_best_only=True, save_weights_only=True
                ),
            )
        else:  # the backup keeps the best weights too; after the stopper, whose on_train_begin it undoes
            backup = resume.EpochBackup(backup_dir, stopper, errors.series)
            done = backup.restore(model)
            callbacks.append(backup)
        start = time.perf_counter()
        # initial_epoch: a second phase continues the first one's epoch numbers (one curve in MLflow);
        # a resumed run starts after the epochs its backup holds
        if distribute.needs_custom_loop(cfg):  # multi_worker: Keras' fit cannot take its datasets
            if not epoch_stream:
                raise ConfigError("training.distribution: multi_worker trains in the train stage only")
            history = distribute.fit_distributed(
                model,
                train_ds,
                val_ds,
                epochs=initial_epoch + epochs,
                initial_epoch=initial_epoch + done,
                steps_per_epoch=steps,
                global_batch=cfg.batch_size,
                callbacks=callbacks,
            )
        else:
            history = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=initial_epoch + epochs,
                initial_epoch=initial_epoch + done,
                callbacks=callbacks,
                shuffle=False,  # the pipeline shuffles
                steps_per_epoch=steps if epoch_stream else None,
                verbose=2,
            )
        seconds = time.perf_counter() - start
        # Early stopping restores the best weights only when it stops early;
        # the checkpoint makes "best epoch wins" hold either way.
        if os.path.exists(ckpt):
            model.load_weights(ckpt)
    hist = backup.history if backup is not None else history.history  # a resumed run's whole history
    val_losses = hist.get("val_loss", [])
    finite = [v for v in val_losses if math.isfinite(v)]
    best_epoch = initial_epoch + (val_losses.index(min(finite)) if finite else len(hist["loss"]) - 1)
    if distribute.needs_custom_loop(cfg):
        kept = distribute.evaluate_local(model, val_ds)
    else:
        kept = model.evaluate(val_ds, verbose=0, return_dict=True)
    summary = {
        "epochs_trained": len(hist["loss"]),
        "best_epoch": best_epoch,
        "early_stopping_epoch": int(stopper.stopped_epoch) if stopper and stopper.stopped_epoch else -1,
        "train_seconds": seconds,
        # this process's epochs only (a resumed run's earlier ones ran elsewhere)
        "train_images_per_s": num_train * len(history.history.get("loss", [])) / max(seconds, 1e-9),
        "best_val_loss": float(kept["loss"]),
    }
    if "accuracy" in kept:
        summary["best_val_accuracy"] = float(kept["accuracy"])
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in summary.items()})
    tracking.log_figure(_curves(hist, title), f"{prefix}learning_curves.png")
    if errors.series["train_error"]:
        tracking.log_figure(
            plots.error_curves(errors.series, title=title or "error per epoch"), f"{prefix}error_curves.png"
        )
    summary["series"] = errors.series
    if error_fn is not None and train_eval_ds is not None:
        val_error = 1.0 - summary["best_val_accuracy"] if "best_val_accuracy" in summary else None
        result = diagnose(
            error_fn(model, train_eval_ds),
            error_fn(model, val_ds) if val_error is None else val_error,
            human_error=diagnosis.human_error,
            bias_threshold=diagnosis.bias_threshold,
            variance_threshold=diagnosis.variance_threshold,
        )
        mlflow.log_metrics(
            {f"{prefix}{k}": v for k, v in result.metrics().items() if k not in ("train_error", "val_error")}
        )
        mlflow.log_metrics(
            {f"{prefix}final_train_error": result.train_error, f"{prefix}final_val_error": result.val_error}
        )
        mlflow.set_tag(f"{prefix}diagnosis", result.verdict)
        mlflow.log_text(result.markdown(), f"{prefix}diagnosis.md")
        summary["diagnosis"] = result
    return summary


def _curves(hist: dict, title: str):
    """A classifier's loss and accuracy panels; for the other tasks every loss component
    (total, box, classification, ...), train and validation, on a log scale."""
    from cnn_apps import plots

    if "accuracy" in hist:
        return plots.learning_curves(hist, title or "learning curves")
    epochs = list(range(1, len(hist["loss"]) + 1))
    series = {
        f"{'validation' if k.startswith('val_') else 'train'} {k.removeprefix('val_')}": v
        for k, v in sorted(hist.items())
        if k.endswith("loss")
    }
    return plots.curves(
        epochs, series, title=title or "losses", xlabel="epoch", ylabel="loss (log scale)", logy=True
    )
