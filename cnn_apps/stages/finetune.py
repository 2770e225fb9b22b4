"""finetune: turn a network trained on one task into a model for another.

Sources of pretrained knowledge (``finetune.source``):

* ``run``: a train/finetune run (``--from-run RUN_ID``) or any MLflow model URI
  (``finetune.from_uri``: ``runs:/<id>/model``, ``models:/<name>@<alias>``),
  including a ``task: pretext`` run (rotation prediction on unlabelled images);
* ``weights``: ``finetune.weights``, a ``.weights.h5`` of ``model.backbone`` or a
  ``.keras`` classifier / backbone;
* ``imagenet``: keras.applications' ImageNet weights for vgg16, vgg19, resnet50
  (downloaded; ``finetune.weights`` may name the keras.applications ``.h5`` file instead).

Modes (``finetune.mode``):

* ``feature_extraction``: the base is frozen, a new head trains on top;
* ``shallow``: the frozen base's pooled features are extracted once per split and a
  scikit-learn model (logistic regression or linear SVM) is trained on them; it is
  logged with MLflow's sklearn flavour and, folded into a Keras Dense layer, as the
  run's model (so evaluate and export take it like any other);
* ``fine_tune``: head warm-up with the base frozen, then the top
  ``finetune.unfreeze_blocks`` blocks train at ``finetune.fine_tune_learning_rate``,
  batch norm kept in inference mode, with early stopping. With ``finetune.reinit_blocks`` = N,
  the backbone's top N blocks start from random weights and train with the head in phase 1
  (batch norm in training mode there), the copied blocks below frozen;
* ``scratch``: the same architecture from random weights (the baseline);
* ``copy_blocks``: the source's first ``finetune.copied_blocks`` backbone blocks, frozen, under
  the rest of the architecture from random weights (Yosinski et al. 2014's AnB networks, or BnB
  when the source was trained on the target itself): where features stop being general.

Each phase logs its trainable/frozen parameter counts, learning rate and epochs;
the bias/variance diagnosis runs after each (phase 1 of fine_tune: ``head_`` prefix).
When the config's data differs from the source run's, a prepare run is made (tag ``data_run``).
"""

from __future__ import annotations

import os

from cnn_apps import tasks, tracking
from cnn_apps.config import Config
from cnn_apps.errors import ConfigError, ModelError
from cnn_apps.stages.common import StageResult, log
from cnn_apps.tasks.inputs import at_model_size, dataset_label, split_dataset

SOURCE_STAGES = ("train", "finetune")


def finetune(
    config: Config,
    from_run: str | None = None,
    *,
    nested: bool = False,
    tags: dict | None = None,
    run_name: str | None = None,
) -> StageResult:
    import keras
    import mlflow

    from cnn_apps.classification.transfer import (
        backbone_blocks,
        copy_first_blocks,
        freeze_batch_norm,
        parameter_counts,
        unfreeze_top_blocks,
    )
    from cnn_apps.training.diagnosis import classification_error
    from cnn_apps.training.fit import fit_and_log

    config = tasks.task_class(config).finetune_config(config)  # a classifier's, or refused
    ft = config.finetune
    tracking.setup(config)
    base, source_ref, source_spec = _load_source(config, from_run)
    config = at_model_size(config, base)
    spec, data_run = _target_data(config, source_spec)
    if spec.channels != base.input_shape[-1]:
        raise ConfigError(
            f"the source model takes {base.input_shape[-1]}-channel images, the data has "
            f"{spec.channels}: set data.channels={base.input_shape[-1]}"
        )

    keras.utils.set_random_seed(config.training.seed)
    reinit = ft.mode == "fine_tune" and ft.reinit_blocks != 0
    model = _target_model(base, spec, fresh=reinit or ft.mode in ("scratch", "copy_blocks"))
    if ft.mode == "copy_blocks":
        copied = copy_first_blocks(base, model, ft.copied_blocks)
    elif reinit:
        copied = copy_first_blocks(base, model, _copied_below(model, ft.reinit_blocks))
    else:
        copied = []
    train_ds = split_dataset(spec, config, "train", training=True)
    train_eval_ds = split_dataset(spec, config, "train", training=False)
    val_ds = split_dataset(spec, config, "validation", training=False)
    num_train = spec.counts["train"]
    backbone = model.backbone_name
    run_tags = {"finetune_mode": ft.mode, "finetune_source": ft.source, **(tags or {})}
    with tracking.stage_run(
        config,
        "finetune",
        model=backbone,
        dataset=dataset_label(spec),
        source_run=source_ref,
        fingerprint=spec.fingerprint,
        nested=nested,
        tags=run_tags,
        run_name=run_name or f"finetune:{backbone}:{dataset_label(spec)}:{ft.mode}",
    ) as run:
        if data_run:
            mlflow.set_tag("data_run", data_run)
        mlflow.log_text(spec.to_json(), tracking.DATASET_ARTIFACT)
        mlflow.log_metric("train_examples", num_train)
        title = f"{ft.mode}: {backbone} on {dataset_label(spec)}"
        fit = dict(
            num_train=num_train,
            train_eval_ds=train_eval_ds,
            diagnosis=config.diagnosis,
            error_fn=classification_error,
            per_epoch_error=True,
        )

        def phase(name: str, prefix: str, epochs: int, lr: float, initial_epoch: int = 0) -> dict:
            counts = parameter_counts(model)
            mlflow.log_metrics({f"{name}_{k}": v for k, v in counts.items()})
            mlflow.log_params({f"{name}_learning_rate": lr, f"{name}_epochs": epochs})
            log.info(
                "%s: %d trainable / %d frozen parameters, lr %g, %d epochs",
                name,
                counts["params_trainable"],
                counts["params_frozen"],
                lr,
                epochs,
            )
            return fit_and_log(
                model,
                train_ds,
                val_ds,
                config.training,
                epochs=epochs,
                learning_rate=lr,
                initial_epoch=initial_epoch,
                prefix=prefix,
                title=f"{title} ({name})",
                **fit,
            )

        if ft.mode == "shallow":
            summary = _shallow(model, config, train_eval_ds, val_ds)
            model = summary.pop("model")
        elif ft.mode == "scratch":
            summary = phase("scratch", "", config.training.epochs, config.training.learning_rate)
        elif ft.mode == "copy_blocks":
            mlflow.log_params({"copied_blocks": len(copied), "copied_block_names": ",".join(copied)})
            summary = phase("copy_blocks", "", config.training.epochs, config.training.learning_rate)
        else:
            if reinit:  # copy_first_blocks froze the copied blocks; the top ones train with the head
                fresh = [name for name in backbone_blocks(model.backbone) if name not in copied]
                mlflow.log_params({"reinit_blocks": len(fresh), "reinit_block_names": ",".join(fresh)})
            else:
                model.backbone.trainable = False
                freeze_batch_norm(model)
            if ft.mode == "feature_extraction":
                summary = phase("head", "", ft.epochs, ft.learning_rate)
            else:
                head = phase("head", "head_", ft.epochs, ft.learning_rate)
                blocks = unfreeze_top_blocks(model, ft.unfreeze_blocks)
                mlflow.log_param("unfrozen_blocks", ",".join(blocks) or "none")
                summary = phase(
                    "fine_tune",
                    "",
                    ft.fine_tune_epochs,
                    ft.fine_tune_learning_rate,
                    initial_epoch=head["epochs_trained"],
                )
        tracking.log_keras_model(model, next(iter(val_ds))[0][:2].numpy())
        return StageResult(
            run.info.run_id,
            "finetune",
            {
                "mode": ft.mode,
                "val_accuracy": round(summary["best_val_accuracy"], 4),
                "diagnosis": summary["diagnosis"].verdict,
            },
            extra={"summary": summary},
        )


# ---------------------------------------------------------------------- sources
def _copied_below(model, reinit_blocks: int) -> int:
    """How many blocks fine_tune copies when the top ``reinit_blocks`` start from random weights."""
    from cnn_apps.classification.transfer import backbone_blocks

    names = list(backbone_blocks(model.backbone))
    if not 1 <= reinit_blocks < len(names):
        raise ConfigError(
            f"finetune.reinit_blocks: give 0..{len(names) - 1} (at least one of the backbone's blocks "
            f"must come from the source: {', '.join(names)}), got {reinit_blocks}"
        )
    return len(names) - reinit_blocks


def _load_source(config: Config, from_run: str | None):
    """(base classifier, lineage reference, the source run's DatasetSpec or None)."""
    ft = config.finetune
    if ft.source == "run":
        ref = from_run or ft.from_uri
        if not ref:
            raise ConfigError(
                "finetune.source=run needs --from-run RUN_ID or finetune.from_uri "
                "(runs:/<id>/model, models:/<name>@<alias>)"
            )
        spec = None
        run_id = ref if ":/" not in ref else _run_id_of(ref)
        if run_id:
            if ":/" not in ref:
                tracking.get_run(run_id, expect_stage=SOURCE_STAGES)
            spec = tracking.load_dataset_spec(run_id)
        base = tracking.load_keras_model(ref)
        return _as_classifier(base, ref), ref, spec
    if ft.source == "weights":
        if not ft.weights:
            raise ConfigError("finetune.source=weights needs finetune.weights (a .weights.h5 or .keras file)")
        return _from_weights_file(config, ft.weights), os.path.abspath(ft.weights), None
    return _from_imagenet(config), f"keras.applications:{config.model.backbone}:imagenet", None


def _run_id_of(uri: str) -> str | None:
    if uri.startswith("runs:/"):
        return uri[len("runs:/") :].split("/")[0]
    return None


def _as_classifier(model, where: str):
    from cnn_apps.classification import ImageClassifier

    if not isinstance(model, ImageClassifier):
        raise ModelError(f"{where} holds a {type(model).__name__}, not a cnn-apps ImageClassifier")
    return model


def _fresh_classifier(config: Config, channels: int, **overrides):
    from cnn_apps.classification import classifier_from_config

    size = config.data.image_size
    return classifier_from_config(config, 2, (size, size, channels), ["_", "__"], **overrides)


def _from_weights_file(config: Config, path: str):

    from cnn_apps.classification import ImageClassifier

    if not os.path.isfile(path):
        raise ConfigError(f"finetune.weights: no such file {path}")
    channels = config.data.channels or 3
    if path.endswith(".keras"):
        loaded = tracking.load_keras_file(path)  # safe mode unless --unsafe-load
        if isinstance(loaded, ImageClassifier):
            return loaded
        model = _fresh_classifier(config, loaded.input_shape[-1])
        try:
            model.backbone.set_weights(loaded.get_weights())
        except ValueError as exc:
            raise ModelError(
                f"{path} is not a '{config.model.backbone}' backbone like model.* describes: {exc}"
            ) from exc
        return model
    if not path.endswith(".weights.h5"):
        raise ConfigError(
            f"finetune.weights: {path} must end in .weights.h5 (a backbone's weights) or .keras"
        )
    model = _fresh_classifier(config, channels)
    try:
        model.backbone.load_weights(path)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{path} does not fit a '{config.model.backbone}' backbone: {exc}") from exc
    return model


def _from_imagenet(config: Config):
    from cnn_apps.backbones.pretrained import KERAS_APPLICATIONS, from_keras_applications
    from cnn_apps.data.sources import is_online

    name = config.model.backbone
    if name not in KERAS_APPLICATIONS:
        raise ConfigError(
            f"finetune.source=imagenet: no ImageNet weights for backbone '{name}'; "
            f"use one of {', '.join(sorted(KERAS_APPLICATIONS))}"
        )
    weights = config.finetune.weights or "imagenet"
    local = os.path.isfile(weights)
    if not local and not is_online(timeout=3.0):
        raise ModelError(
            f"ImageNet weights for {name} must be downloaded, and this machine is offline. Fix: download "
            f"keras.applications' {name} 'notop' weights file elsewhere and pass it: "
            f"--set finetune.weights=/path/to/{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
    size = config.data.image_size
    extra = dict(KERAS_APPLICATIONS[name][1])
    model = _fresh_classifier(
        config, 3, preprocessing="caffe", backbone_args={**config.model.backbone_args, **extra}
    )
    ours = from_keras_applications(
        name,
        weights=weights,
        input_shape=(size, size, 3),
        include_top=False,
        **{**config.model.backbone_args, **extra},
    )
    model.backbone.set_weights(ours.get_weights())
    return model


# ---------------------------------------------------------------------- data and model
def _target_data(config: Config, source_spec):
    """The target dataset: the source run's when the config's data is the same, else a new prepare run."""
    if source_spec is not None and config.data_fingerprint() == source_spec.fingerprint:
        return source_spec, None
    from cnn_apps.stages.prepare import prepare

    data_run = prepare(config).run_id
    log.info("fine-tuning on the data of prepare run %s", data_run)
    return tracking.load_dataset_spec(data_run), data_run


def _target_model(base, spec, fresh: bool):
    """``base`` itself when classes match (and not ``fresh``), else the same architecture with
    the target's classes; the backbone's weights are copied unless ``fresh`` (scratch)."""
    if not fresh and list(base.class_names) == list(spec.class_names):
        return base
    model = base.same_architecture(spec.num_classes, spec.class_names)
    if not fresh:
        model.backbone.set_weights(base.backbone.get_weights())
    return model


def _shallow(model, config: Config, train_eval_ds, val_ds) -> dict:
    """Frozen features once per split -> scikit-learn linear model -> folded back into Keras."""
    import mlflow
    import numpy as np

    from cnn_apps.classification import shallow
    from cnn_apps.training.diagnosis import diagnose

    ft = config.finetune
    extractor = shallow.feature_extractor(model)
    x_train, y_train = shallow.extract_features(extractor, train_eval_ds)
    x_val, y_val = shallow.extract_features(extractor, val_ds)
    mlflow.log_metrics({"shallow_features": x_train.shape[1], "shallow_train_examples": len(y_train)})
    scaler = shallow.fit_scaler(x_train)
    estimator = shallow.fit_shallow(
        scaler.transform(x_train), y_train, kind=ft.shallow_model, C=ft.shallow_c, seed=config.training.seed
    )
    shallow.log_sklearn_model(estimator, scaler, x_train[:5])
    keras_model = shallow.to_keras(model, scaler, estimator, model.class_names)
    train_error = float(np.mean(estimator.predict(scaler.transform(x_train)) != y_train))
    val_error = float(np.mean(estimator.predict(scaler.transform(x_val)) != y_val))
    result = diagnose(
        train_error,
        val_error,
        human_error=config.diagnosis.human_error,
        bias_threshold=config.diagnosis.bias_threshold,
        variance_threshold=config.diagnosis.variance_threshold,
    )
    mlflow.log_metrics(
        {
            **result.metrics(),
            "final_train_error": train_error,
            "final_val_error": val_error,
            "best_val_accuracy": 1 - val_error,
        }
    )
    mlflow.set_tag("diagnosis", result.verdict)
    mlflow.log_text(result.markdown(), "diagnosis.md")
    return {
        "model": keras_model,
        "best_val_accuracy": 1 - val_error,
        "diagnosis": result,
        "epochs_trained": 0,
        "series": {"train_error": [], "val_error": []},
    }
