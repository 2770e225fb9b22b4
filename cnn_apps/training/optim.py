"""Optimizer and learning-rate schedule from :class:`~cnn_apps.config.TrainingConfig`."""

from __future__ import annotations

import keras

from cnn_apps.config import TrainingConfig


def learning_rate(
    cfg: TrainingConfig, steps_per_epoch: int, base_lr: float | None = None, epochs: int | None = None
):
    """A float (constant / plateau) or a cosine schedule with optional linear warm-up."""
    lr = cfg.learning_rate if base_lr is None else base_lr
    epochs = cfg.epochs if epochs is None else epochs
    if cfg.lr_schedule != "cosine":
        return lr
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, steps_per_epoch * cfg.warmup_epochs)
    if warmup > 0:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr * 0.1,
            decay_steps=total - warmup,
            alpha=0.01,
            warmup_target=lr,
            warmup_steps=warmup,
        )
    return keras.optimizers.schedules.CosineDecay(initial_learning_rate=lr, decay_steps=total, alpha=0.01)


def build_optimizer(
    cfg: TrainingConfig, steps_per_epoch: int, base_lr: float | None = None, epochs: int | None = None
) -> keras.optimizers.Optimizer:
    lr = learning_rate(cfg, steps_per_epoch, base_lr, epochs)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(
            lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay or None
        )
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(lr)


def schedule_callbacks(cfg: TrainingConfig) -> list:
    """Callbacks a schedule needs (``plateau`` halves the LR when val_loss stalls)."""
    if cfg.lr_schedule == "plateau":
        patience = max(1, cfg.early_stopping_patience // 2) if cfg.early_stopping_patience else 2
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=patience, min_lr=cfg.learning_rate * 1e-3
            )
        ]
    return []
