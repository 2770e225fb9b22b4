"""The Task: what a stage asks of classification, detection, region detection or segmentation.

After TF Model Garden's ``base_task.Task`` (a task builds the model, its inputs, losses and
metrics; the trainer knows nothing about tasks) adapted to Keras 3, where ``fit`` and the
model's ``compute_loss`` own the training step. A task is made for one config and one
prepared dataset (:func:`cnn_apps.tasks.for_config`) and answers the stages:

* ``train``: :meth:`build_model`, :meth:`fit` (the one fit loop of
  :mod:`cnn_apps.training.fit`, fed :meth:`dataset` and :meth:`compile_args`),
  :meth:`validate` (the kept weights' validation metrics), :meth:`save`;
* ``evaluate``: :meth:`load`, :meth:`evaluate` (metrics plus the report artifacts: confusion
  matrix, PR curves, overlays, speed) returned as a :class:`Report` the stage logs;
* ``export``: :meth:`export` (write the SavedModel's signatures and verify them on reload).

Distribution, mixed precision, ``--resume`` and the learning-curve study are the train
stage's, so they reach every task that trains with Keras; a task that cannot take one
refuses it in :meth:`check_training` with the reason.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.tasks.inputs import at_model_size, split_dataset
from cnn_apps.tasks.speed import first_examples


@dataclass
class Report:
    """What :meth:`Task.evaluate` measured, for the evaluate stage to log: metrics, the values
    worth printing, text / JSON / figure artifacts by path, and objects for callers."""

    metrics: dict
    outputs: dict
    texts: dict = field(default_factory=dict)
    json: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class FitPlan:
    """What the train stage asks of a fit: the epoch backups' folder (resume), the first
    ``limit`` training examples only (learning curves), the curves' title."""

    backup_dir: object = None
    limit: int | None = None
    title: str = ""


class Task(abc.ABC):
    """One task on one prepared dataset; see the module docstring."""

    name = ""  # the registry key, set by @registry.register("task", name)
    #: the error the diagnosis and the learning curves measure: "1 - <main_metric>"
    main_metric = ""
    #: per-epoch training error on a slice of the training split (cheap for classifiers only)
    per_epoch_error = False
    #: the ``cnn-apps study`` kinds defined for this task
    studies: tuple = ("learning-curve",)

    def __init__(self, config: Config, spec: DatasetSpec):
        self.config = config
        self.spec = spec

    @classmethod
    def finetune_config(cls, config: Config) -> Config:
        """The config ``finetune`` trains with; a task whose models ``finetune`` cannot take
        refuses, saying what to do instead."""
        from cnn_apps.errors import ConfigError

        raise ConfigError(
            f"finetune transfers a classifier to new classes; task '{config.task}' is not supported: "
            "train it with `cnn-apps train`"
        )

    @classmethod
    def dataset_metrics(cls, spec: DatasetSpec) -> dict:
        """What prepare logs about a dataset beyond its per-class counts (nothing by default)."""
        return {}

    # ------------------------------------------------------------------ what is learnt
    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def num_train(self, limit: int | None = None) -> int:
        n = int(self.spec.counts["train"])
        return min(n, limit) if limit else n

    @property
    def model_label(self) -> str:
        """The model's name in run names: the architecture, else the backbone."""
        return self.config.model.architecture or self.config.model.backbone

    @abc.abstractmethod
    def build_model(self):
        """A new model from the config and the dataset's classes."""

    def attach(self, model, *, at_model_size_: bool = False) -> None:
        """Make the task's inputs fit ``model`` (after building or loading it); with
        ``at_model_size_``, read the data at the model's input size (evaluate, export)."""
        if at_model_size_:
            self.config = at_model_size(self.config, model)

    def dataset(
        self,
        split: str,
        *,
        training: bool,
        batch_size: int | None = None,
        limit: int | None = None,
        epochs: tuple[int, int] | None = None,
        keep_source: bool = False,
    ):
        """One split as batches of ``(inputs, targets)`` for this task's model; ``keep_source``:
        targets for scoring (ignore regions flagged, the source-resolution truth kept)."""
        return split_dataset(
            self.spec,
            self.config,
            split,
            training=training,
            batch_size=batch_size,
            limit=limit,
            epochs=epochs,
            keep_source=keep_source,
            **self.input_options(),
        )

    def input_options(self) -> dict:
        """Extra :func:`~cnn_apps.tasks.inputs.split_dataset` arguments the model needs (none by
        default; a detector fed proposals: its proposal settings)."""
        return {}

    # ------------------------------------------------------------------ training
    def check_training(self, *, train_limit: int | None = None, resume: str | None = None) -> None:
        """Refuse, with the reason, what this task cannot train with; every Keras-trained task
        takes all of it (distribution, precision, resume, learning curves)."""
        return None

    @abc.abstractmethod
    def compile_args(self) -> dict:
        """``loss`` and ``metrics`` for ``compile`` ({} when the model computes its own loss)."""

    @abc.abstractmethod
    def error(self, model, ds) -> float:
        """1 - :attr:`main_metric` of ``model`` on ``ds`` in inference mode."""

    def fit(self, model, plan: FitPlan) -> dict:
        """The one fit loop on this task's data: the training split as one stream of the epochs
        still to run (a resumed run starts after its backup's), the validation split, and the
        training split without augmentation for the diagnosis. Returns its summary."""
        from cnn_apps.training import resume
        from cnn_apps.training.fit import fit_and_log

        cfg = self.config.training
        done = resume.finished_epochs(plan.backup_dir)
        train_ds = self.dataset("train", training=True, limit=plan.limit, epochs=(done, cfg.epochs))
        return fit_and_log(
            model,
            train_ds,
            self.dataset("validation", training=False),
            cfg,
            num_train=self.num_train(plan.limit),
            compile_args=self.compile_args(),
            error_fn=self.error,
            train_eval_ds=self.dataset("train", training=False, limit=plan.limit),
            per_epoch_error=self.per_epoch_error,
            diagnosis=self.config.diagnosis,
            title=plan.title,
            backup_dir=plan.backup_dir,
            epoch_stream=True,
        )

    @abc.abstractmethod
    def validate(self, model, summary: dict) -> tuple[dict, dict, dict]:
        """After the fit: (metrics to log, values to print, extras for callers) of the kept
        weights on the validation split."""

    def save(self, model) -> None:
        """Log the trained model as the run's MLflow model (with an input example)."""
        sample = first_examples(next(iter(self.dataset("validation", training=False)))[0], 2, numpy=True)
        tracking.log_keras_model(model, sample)

    # ------------------------------------------------------------------ evaluation and export
    def load(self, run_id: str):
        """The model train run ``run_id`` logged (Keras' safe mode unless ``--unsafe-load``)."""
        return tracking.load_keras_model(run_id)

    @abc.abstractmethod
    def evaluate(self, model) -> Report:
        """Metrics and report artifacts of ``model`` on the test split."""

    def test_dataset(self, **kwargs):
        return self.dataset("test", training=False, batch_size=self.config.evaluate.batch_size, **kwargs)

    exportable = True

    def check_exportable(self) -> None:
        """Refuse, with the reason, a model that cannot be a SavedModel (nothing by default)."""
        return None

    @abc.abstractmethod
    def export(self, model, path) -> dict:
        """Write ``model``'s serving SavedModel to ``path`` and verify every signature on
        reload against Keras on test images; returns ``{signature: max |difference|}``."""

    def export_batch(self):
        """Eight test images (B, H, W, C) for the export's verification (the images alone: a
        detector fed proposals gets them from the exported graph's own ``proposals`` input)."""
        batch = split_dataset(self.spec, self.config, "test", training=False, batch_size=8)
        return next(iter(batch))[0].numpy()
