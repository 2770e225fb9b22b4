"""One fit: compile, callbacks (early stopping, checkpoint, schedule, MLflow), curves,
and the bias/variance diagnosis of the weights kept.

Used by ``train``, ``finetune`` and the studies; the MLflow run must be active.
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


def compile_classifier(
    model,
    cfg: TrainingConfig,
    steps_per_epoch: int,
    learning_rate: float | None = None,
    epochs: int | None = None,
) -> None:
    from cnn_apps.training.distribute import scaled_learning_rate

    learning_rate = scaled_learning_rate(cfg, cfg.learning_rate if learning_rate is None else learning_rate)
    model.compile(
        optimizer=build_optimizer(cfg, steps_per_epoch, learning_rate, epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile="auto" if cfg.jit_compile is None else cfg.jit_compile,
    )


def fit_and_log(
    model,
    train_ds,
    val_ds,
    cfg: TrainingConfig,
    *,
    num_train: int,
    train_eval_ds=None,
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

    ``initial_epoch`` numbers the epochs of a later phase after the earlier ones.
    ``backup_dir``: back up every epoch there and resume from what it holds
    (:mod:`cnn_apps.training.resume`); the best weights are kept there too.
    ``epoch_stream``: ``train_ds`` is one stream of the epochs still to run
    (``split_dataset(epochs=...)``), ``ceil(num_train / batch_size)`` batches each.
    ``train_eval_ds``: the training split without shuffling or augmentation, for the
    inference-mode training error (a slice of it every epoch, all of it at the end).
    Returns a summary: epochs run, best epoch, early-stopping epoch, seconds, images/s,
    the validation loss/accuracy of the weights kept (the best epoch's, restored) and,
    with ``train_eval_ds``, the :class:`~cnn_apps.training.diagnosis.Diagnosis`.
    """
    import mlflow
    from cnn_apps import plots
    from cnn_apps.training.diagnosis import classification_error, diagnose

    diagnosis = diagnosis or DiagnosisConfig()
    epochs = cfg.epochs if epochs is None else epochs
    steps = max(1, math.ceil(num_train / cfg.batch_size))
    compile_classifier(model, cfg, steps, learning_rate, epochs)
    per_epoch_eval = None
    if train_eval_ds is not None:
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
                shuffle=False,
                steps_per_epoch=steps if epoch_stream else None,
                verbose=2,
            )  # the pipeline shuffles
        seconds = time.perf_counter() - start
        # Early stopping restores the best weights only when it stops early;
        # the checkpoint makes "best epoch wins" hold either way.
        if os.path.exists(ckpt):
            model.load_weights(ckpt)
    hist = backup.history if backup is not None else history.history  # a resumed run's whole history
    val_losses = hist.get("val_loss", [])
    best_epoch = initial_epoch + (
        int(min(range(len(val_losses)), key=val_losses.__getitem__)) if val_losses else len(hist["loss"]) - 1
    )
    if distribute.needs_custom_loop(cfg):
        val_loss, val_accuracy = distribute.evaluate_local(model, val_ds)
    else:
        val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
    summary = {
        "epochs_trained": len(hist["loss"]),
        "best_epoch": best_epoch,
        "early_stopping_epoch": int(stopper.stopped_epoch) if stopper and stopper.stopped_epoch else -1,
        "train_seconds": seconds,
        # this process's epochs only (a resumed run's earlier ones ran elsewhere)
        "train_images_per_s": num_train * len(history.history.get("loss", [])) / max(seconds, 1e-9),
        "best_val_loss": float(val_loss),
        "best_val_accuracy": float(val_accuracy),
    }
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in summary.items()})
    tracking.log_figure(
        plots.learning_curves(hist, title or "learning curves"), f"{prefix}learning_curves.png"
    )
    if errors.series["train_error"]:
        tracking.log_figure(
            plots.error_curves(errors.series, title=title or "error per epoch"), f"{prefix}error_curves.png"
        )
    summary["series"] = errors.series
    if train_eval_ds is not None:
        result = diagnose(
            classification_error(model, train_eval_ds),
            1.0 - float(val_accuracy),
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
