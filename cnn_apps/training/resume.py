"""Training that survives being killed: a backup every epoch, and ``--resume RUN_ID``.

A train run keeps ``<training.checkpoint_dir>/<run_id>/`` (tag ``backup_dir``) while it
trains, written by :class:`EpochBackup` at the end of every epoch:

* ``state-<epoch>.weights.h5``: the model's and the optimizer's variables after that epoch;
* ``best.weights.h5``: the best epoch's weights (lowest ``val_loss``), which the run keeps;
* ``progress.json``: the epoch reached and which state file holds it, the layers' random
  generator states (Dropout's; not in the weights file), the per-epoch history
  (for the curves and the best epoch), the error series, the best ``val_loss`` and early
  stopping's patience count.

Every file is complete before ``progress.json`` names it (weights go to a new file or are
renamed into place; ``progress.json`` itself is replaced in one rename), so a kill at any
moment leaves the previous epoch's backup whole. ``cnn-apps train --resume RUN_ID`` reopens
the MLflow run, restores all of it and trains the remaining epochs. The training data comes
as one stream of epochs whose shuffle and augmentation seeds are drawn from the epoch number
(``make_pipeline(epochs=...)``), so the resumed epochs see exactly the data an uninterrupted
run saw there, and with the same seed the run ends with the same metrics. The folder is
removed when the run finishes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

PROGRESS = "progress.json"
BEST = "best.weights.h5"


def backup_dir_for(checkpoint_dir: str, run_id: str) -> Path:
    return Path(checkpoint_dir).resolve() / run_id


def has_backup(backup_dir) -> bool:
    return backup_dir is not None and (Path(backup_dir) / PROGRESS).is_file()


def finished_epochs(backup_dir) -> int:
    """The epochs the backup in ``backup_dir`` holds (0 when there is none)."""
    if not has_backup(backup_dir):
        return 0
    return int(json.loads((Path(backup_dir) / PROGRESS).read_text())["epochs"])


class EpochBackup(keras.callbacks.Callback):
    """Writes the backup above every epoch, keeps the best weights, and restores a killed
    run's state (:meth:`restore`, before ``fit``). ``stopper``: the EarlyStopping whose best
    and patience count carry over; ``series``: a dict of lists (the error logger's)."""

    def __init__(self, backup_dir, stopper=None, series: dict | None = None, monitor: str = "val_loss"):
        super().__init__()
        self.dir = Path(backup_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stopper, self.series, self.monitor = stopper, series, monitor
        self.history: dict[str, list] = {}
        self.best = float("inf")
        self._saved = None

    def restore(self, model) -> int:
        """Load the killed run's weights, optimizer state and progress into ``model`` (compiled);
        returns the number of epochs it had finished (0 without a backup)."""
        path = self.dir / PROGRESS
        if not path.is_file():
            return 0
        saved = json.loads(path.read_text())
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
        model.load_weights(self.dir / saved["state"])
        for generator, state in zip(seed_generators(model), saved.get("seeds", [])):
            generator.state.assign(np.asarray(state, dtype=generator.state.dtype))
        self.history = saved["history"]
        self.best = saved["best"] if saved["best"] is not None else float("inf")
        if self.series is not None:
            for key, values in saved.get("series", {}).items():
                self.series[key] = list(values)
        self._saved = saved
        return int(saved["epochs"])

    def on_train_begin(self, logs=None):
        # after EarlyStopping's own on_train_begin, which resets what is restored here
        if self._saved is not None and self.stopper is not None and self._saved.get("stopper") is not None:
            best, wait, best_epoch = self._saved["stopper"]
            self.stopper.best, self.stopper.wait, self.stopper.best_epoch = best, wait, best_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        value = logs.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            _save_weights(self.model, self.dir / BEST)
        state = f"state-{epoch + 1}.weights.h5"
        self.model.save_weights(self.dir / state, overwrite=True)  # a new file: the old state stays whole
        stopper = None
        if self.stopper is not None:
            stopper = [_number(self.stopper.best), int(self.stopper.wait), int(self.stopper.best_epoch)]
        seeds = [
            np.asarray(keras.ops.convert_to_numpy(g.state)).tolist() for g in seed_generators(self.model)
        ]
        progress = {
            "epochs": epoch + 1,
            "state": state,
            "seeds": seeds,
            "history": self.history,
            "series": self.series or {},
            "best": None if self.best == float("inf") else self.best,
            "stopper": stopper,
        }
        tmp = self.dir / (PROGRESS + ".tmp")
        tmp.write_text(json.dumps(progress))
        os.replace(tmp, self.dir / PROGRESS)
        for old in self.dir.glob("state-*.weights.h5"):
            if old.name != state:
                old.unlink()


def seed_generators(model) -> list:
    """The random-number generators of ``model``'s layers (Dropout's, ...), in layer order: their
    states move every step and are not in the weights file, so the backup keeps them."""
    return [g for layer in model._flatten_layers() for g in getattr(layer, "_seed_generators", [])]


def _save_weights(model, path: Path) -> None:
    """Save weights to a temporary file, then rename it over ``path`` (never half-written)."""
    tmp = path.with_name("saving-" + path.name)
    model.save_weights(tmp, overwrite=True)
    os.replace(tmp, path)


def _number(value):
    return None if value is None else float(value)


def remove_backup(backup_dir) -> None:
    if backup_dir is not None:
        shutil.rmtree(backup_dir, ignore_errors=True)
