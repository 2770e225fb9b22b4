"""train: fit a classifier on a prepared dataset and log it as the run's MLflow model.

Input: ``--from-run`` of a prepare run; without one, a prepare run is made first
from the same config. Logs per-epoch ``train_loss``, ``val_loss``,
``train_accuracy``, ``val_accuracy`` and ``learning_rate``, the learning curves,
``dataset.json`` (handed on to evaluate/export) and the model.
"""

from __future__ import annotations

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.common import (
    StageResult,
    check_task,
    dataset_label,
    input_shape,
    log,
    source_config,
    split_dataset,
    training_classes,
)


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
    from cnn_apps.classification import classifier_from_config
    from cnn_apps.training import distribute
    from cnn_apps.training import resume as backups
    from cnn_apps.training.fit import fit_and_log

    check_task(config, ("classification", "pretext", "detection", "segmentation"))
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

    if config.task != "classification" and (
        config.training.distribution != "none" or config.training.mixed_precision != "none"
    ):
        raise ConfigError(
            "training.distribution and training.mixed_precision are supported for "
            f"classification only so far (task is {config.task})"
        )
    if config.task == "detection":
        from cnn_apps.stages.detection import train_detector
        from cnn_apps.stages.region_detectors import is_region_detector, train_region_detector

        if train_limit or resume:
            raise ConfigError("train_limit and --resume are supported for classification only")
        if is_region_detector(config.model.architecture):  # R-CNN, SPP-net: proposals and SVMs outside TF
            return train_region_detector(config, spec, from_run, nested=nested, tags=tags, run_name=run_name)
        return train_detector(config, spec, from_run, nested=nested, tags=tags, run_name=run_name)
    if config.task == "segmentation":
        from cnn_apps.stages.segmentation import train_segmenter

        if train_limit or resume:
            raise ConfigError("train_limit and --resume are supported for classification only")
        return train_segmenter(config, spec, from_run, nested=nested, tags=tags, run_name=run_name)

    keras.utils.set_random_seed(config.training.seed)
    class_names, num_train = training_classes(spec, config)
    if train_limit:
        num_train = min(num_train, train_limit * (4 if config.task == "pretext" else 1))
    train_eval_ds = split_dataset(spec, config, "train", training=False, limit=train_limit)
    val_ds = split_dataset(spec, config, "validation", training=False)
    backbone = config.model.backbone

    with (
        distribute.training_scope(config.training) as strategy,
        tracking.stage_run(
            config,
            "train",
            model=backbone,
            dataset=dataset_label(spec),
            source_run=from_run,
            fingerprint=spec.fingerprint,
            nested=nested,
            tags=tags,
            run_name=run_name,
            resume_run=resume,
        ) as run,
    ):
        model = classifier_from_config(config, len(class_names), input_shape(spec, config), class_names)
        if strategy.num_replicas_in_sync > 1:  # one step on R replicas = one step on the global batch
            distribute.synchronize_batch_norm(model)
        mlflow.log_metric("replicas", strategy.num_replicas_in_sync)
        if config.training.distribution == "multi_worker":  # every worker records a run; 0 is the chief
            mlflow.set_tag("worker", str(distribute.worker_index()))
        mlflow.set_tag("dtype_policy", model.dtype_policy.name)  # the saved model reloads in float32
        backup_dir = backups.backup_dir_for(config.training.checkpoint_dir, run.info.run_id)
        mlflow.set_tag("backup_dir", str(backup_dir))
        # the epochs still to run as one stream, each epoch's data fixed by its number (resumable)
        train_ds = split_dataset(
            spec,
            config,
            "train",
            training=True,
            limit=train_limit,
            epochs=(backups.finished_epochs(backup_dir), config.training.epochs),
        )
        mlflow.log_text(spec.to_json(), tracking.DATASET_ARTIFACT)
        mlflow.log_metrics(
            {
                "params_total": model.count_params(),
                "params_trainable": _trainable(model),
                "train_examples": num_train,
            }
        )
        summary = fit_and_log(
            model,
            train_ds,
            val_ds,
            config.training,
            num_train=num_train,
            train_eval_ds=train_eval_ds,
            diagnosis=config.diagnosis,
            title=f"train: {backbone} on {dataset_label(spec)}",
            backup_dir=backup_dir,
            epoch_stream=True,
        )
        sample = next(iter(val_ds))[0][:2].numpy()
        tracking.log_keras_model(model, sample)
        backups.remove_backup(backup_dir)
        return StageResult(
            run.info.run_id,
            "train",
            {
                "val_accuracy": round(summary["best_val_accuracy"], 4),
                "epochs": summary["epochs_trained"],
                "seconds": round(summary["train_seconds"], 1),
                "diagnosis": summary["diagnosis"].verdict,
            },
            extra={"summary": summary},
        )


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
