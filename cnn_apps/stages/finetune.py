"""finetune: continue training a trained classifier, on the same or another dataset.

Input: ``--from-run`` of a train or finetune run. When the config's data differs
from the source run's (another dataset, other classes), a prepare run is made for
it (tagged ``data_run``) and the classifier gets a new head of the right size on
top of the source's backbone weights. ``finetune.freeze_backbone`` trains the head
only (feature extraction); otherwise everything trains at
``finetune.learning_rate``. The transfer-learning issue adds the other modes.
"""

from __future__ import annotations

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import StageResult, at_model_size, check_task, dataset_label, log, split_dataset

SOURCE_STAGES = ("train", "finetune")


def finetune(config: Config, from_run: str) -> StageResult:
    import keras
    import mlflow

    from cnn_apps.training.fit import fit_and_log

    check_task(config)
    tracking.setup(config)
    source = tracking.get_run(from_run, expect_stage=SOURCE_STAGES)
    source_spec = tracking.load_dataset_spec(from_run)
    base = tracking.load_keras_model(from_run)
    config = at_model_size(config, base)
    if config.data_fingerprint() == source_spec.fingerprint:
        spec, data_run = source_spec, None
    else:
        from cnn_apps.stages.prepare import prepare

        data_run = prepare(config).run_id
        spec = tracking.load_dataset_spec(data_run)
        log.info("fine-tuning on new data from prepare run %s", data_run)
    if spec.channels != base.input_shape[-1]:
        from cnn_apps.errors import ConfigError

        raise ConfigError(f"the source model takes {base.input_shape[-1]}-channel images, the data has "
                          f"{spec.channels}: set data.channels={base.input_shape[-1]}")

    keras.utils.set_random_seed(config.training.seed)
    if list(spec.class_names) == list(base.class_names):
        model = base
    else:  # new classes: same backbone and weights, a new head
        model = base.same_architecture(spec.num_classes, spec.class_names)
        model.backbone.set_weights(base.backbone.get_weights())
    model.backbone.trainable = not config.finetune.freeze_backbone

    train_ds = split_dataset(spec, config, "train", training=True)
    train_eval_ds = split_dataset(spec, config, "train", training=False)
    val_ds = split_dataset(spec, config, "validation", training=False)
    backbone = source.data.params.get("model.backbone", base.backbone_name)
    with tracking.stage_run(config, "finetune", model=backbone, dataset=dataset_label(spec),
                            source_run=from_run, fingerprint=spec.fingerprint) as run:
        if data_run:
            mlflow.set_tag("data_run", data_run)
        mlflow.log_text(spec.to_json(), tracking.DATASET_ARTIFACT)
        trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
        mlflow.log_metrics({"params_total": model.count_params(), "params_trainable": trainable,
                            "params_frozen": model.count_params() - trainable})
        summary = fit_and_log(model, train_ds, val_ds, config.training, num_train=spec.counts["train"],
                              train_eval_ds=train_eval_ds, diagnosis=config.diagnosis,
                              epochs=config.finetune.epochs, learning_rate=config.finetune.learning_rate,
                              title=f"finetune: {backbone} on {dataset_label(spec)}")
        tracking.log_keras_model(model, next(iter(val_ds))[0][:2].numpy())
        return StageResult(run.info.run_id, "finetune", {
            "val_accuracy": round(summary["best_val_accuracy"], 4), "epochs": summary["epochs_trained"],
            "diagnosis": summary["diagnosis"].verdict})
