"""train: fit the model a config describes on a prepared dataset and log it as the run's model.

Input: ``--from-run`` of a prepare run; without one, a prepare run is made first from the same
config. One path for every task (:mod:`cnn_apps.tasks`): the task builds the model, feeds the
one fit loop and validates the kept weights; this stage owns what every task shares: the
MLflow run and its lineage, ``training.distribution`` and ``training.mixed_precision`` (the
model is built and trained inside :func:`~cnn_apps.training.distribute.training_scope`), the
epoch backups that ``--resume`` continues from, and ``train_limit`` for the learning curves.
Logs per-epoch losses and metrics, the learning curves, the diagnosis, ``dataset.json``
(handed on to evaluate/export) and the model.
"""

from __future__ import annotations

from cnn_apps import tasks, tracking
from cnn_apps.config import Config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.common import StageResult, log
from cnn_apps.tasks.inputs import dataset_label, source_config


def train(
    config: Config,
    from_run: str | None = None,
    *,
    nested: bool = False,
    tags: dict | None = None,
    run_name: str | None = None,
    train_limit: int | None = None,
    resume: str | None = None,
) -> StageResult:
    """Train on the data of prepare run ``from_run`` (prepared first when None).

    ``nested``/``tags``/``run_name`` serve the studies (a child run per setting);
    ``train_limit`` trains on the first N training examples only (learning curves);
    ``resume``: a train run that was killed, continued from its last epoch's backup
    (:mod:`cnn_apps.training.resume`; ``config`` should be that run's)."""
    import keras
    import mlflow

    from cnn_apps.training import distribute
    from cnn_apps.training import resume as backups

    if resume:
        from_run = _resumable(config, resume)
    if from_run is None:
        from cnn_apps.stages.prepare import prepare

        from_run = prepare(config).run_id
        log.info("prepared the data in run %s", from_run)
    tracking.setup(config)
    tracking.get_run(from_run, expect_stage=("prepare",))
    spec = tracking.load_dataset_spec(from_run)
    if spec.task != source_config(config).task:
        raise ConfigError(
            f"prepare run {from_run} holds {spec.task} data, the config says task '{config.task}'"
        )
    if spec.fingerprint != source_config(config).data_fingerprint():
        log.warning(
            "training on the data of prepare run %s (fingerprint %s); the config's data "
            "section differs (fingerprint %s) and only its image_size is used",
            from_run,
            spec.fingerprint,
            config.data_fingerprint(),
        )
    task = tasks.for_config(config, spec)
    task.check_training(train_limit=train_limit, resume=resume)
    keras.utils.set_random_seed(config.training.seed)
    label = task.model_label

    with (
        distribute.training_scope(config.training) as strategy,
        tracking.stage_run(
            config,
            "train",
            model=label,
            dataset=dataset_label(spec),
            source_run=from_run,
            fingerprint=spec.fingerprint,
            nested=nested,
            tags=tags,
            run_name=run_name,
            resume_run=resume,
        ) as run,
    ):
        model = task.build_model()
        task.attach(model)
        if strategy.num_replicas_in_sync > 1:  # one step on R replicas = one step on the global batch
            distribute.synchronize_batch_norm(model)
        mlflow.log_metric("replicas", strategy.num_replicas_in_sync)
        if config.training.distribution == "multi_worker":  # every worker records a run; 0 is the chief
            mlflow.set_tag("worker", str(distribute.worker_index()))
        if hasattr(model, "dtype_policy"):
            mlflow.set_tag("dtype_policy", model.dtype_policy.name)  # the saved model reloads in float32
        backup_dir = backups.backup_dir_for(config.training.checkpoint_dir, run.info.run_id)
        mlflow.set_tag("backup_dir", str(backup_dir))
        mlflow.log_text(spec.to_json(), tracking.DATASET_ARTIFACT)
        if hasattr(model, "count_params"):
            mlflow.log_metrics(
                {
                    "params_total": model.count_params(),
                    "params_trainable": _trainable(model),
                    "train_examples": task.num_train(train_limit),
                }
            )
        summary = task.fit(
            model,
            tasks.FitPlan(
                backup_dir=backup_dir, limit=train_limit, title=f"train: {label} on {dataset_label(spec)}"
            ),
        )
        metrics, outputs, extra = task.validate(model, summary)
        mlflow.log_metrics(metrics)
        task.save(model)
        backups.remove_backup(backup_dir)
        return StageResult(run.info.run_id, "train", outputs, extra={"summary": summary, **extra})


def _resumable(config: Config, run_id: str) -> str:
    """The prepare run of killed train run ``run_id``, after checking it can be resumed."""
    from cnn_apps.errors import TrackingError
    from cnn_apps.training import resume as backups

    tracking.setup(config)
    run = tracking.get_run(run_id, expect_stage=("train",))
    if run.info.status == "FINISHED":
        raise TrackingError(f"train run {run_id} finished; there is nothing to resume")
    backup = run.data.tags.get("backup_dir")
    if not backups.has_backup(backup):
        raise TrackingError(
            f"train run {run_id} has no epoch backup to resume from (looked in "
            f"{backup or 'its backup_dir tag, which is missing'}); it stopped before its first "
            "epoch ended, or ran elsewhere: train again"
        )
    return run.data.tags["source_run"]


def _trainable(model) -> int:
    return sum(int(w.numpy().size) for w in model.trainable_weights)
