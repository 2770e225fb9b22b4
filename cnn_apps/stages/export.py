"""export: SavedModel for TF Serving, verified, and registered in MLflow.

Input: ``--from-run`` of a train or finetune run. Writes
``<export.dir>/<name>/<version>/`` (next integer version; classifiers and pretext
models through :func:`~cnn_apps.serving.export_classifier`, ``task: detection`` through
:func:`~cnn_apps.serving.export_detector`, ``task: segmentation`` through
:func:`~cnn_apps.serving.export_segmenter`), reloads it and checks every signature
against the Keras model on test images (``export_max_abs_diff``), then registers the run's
MLflow model as a new version of the registered model ``<name>`` and moves its ``champion``
alias when the source's evaluate run beats the champion
(:func:`~cnn_apps.serving.registry.register_export`).
"""

from __future__ import annotations

import os

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.serving import (
    SIGNATURES,
    export_classifier,
    export_detector,
    export_segmenter,
    next_version,
    staging_folder,
    verify_classifier_export,
    verify_detector_export,
    verify_segmenter_export,
)
from cnn_apps.serving.registry import register_export
from cnn_apps.stages.common import (
    StageResult,
    at_model_size,
    check_task,
    dataset_label,
    log,
    split_dataset,
    training_classes,
)

SOURCE_STAGES = ("train", "finetune")
TASKS = ("classification", "pretext", "detection", "segmentation")


def export(config: Config, from_run: str) -> StageResult:
    import mlflow

    check_task(config, supported=TASKS)
    tracking.setup(config)
    source = tracking.get_run(from_run, expect_stage=SOURCE_STAGES)
    from cnn_apps.stages.region_detectors import check_exportable

    check_exportable(source.data.params.get("model.architecture"))  # R-CNN/SPP-net: not a TF graph
    spec = tracking.load_dataset_spec(from_run)
    model = tracking.load_keras_model(from_run)
    config = at_model_size(config, model)
    name = config.export.name or config.name
    base = os.path.join(config.export.dir, name)
    version = next_version(base)
    path = os.path.abspath(os.path.join(base, str(version)))

    batch = next(iter(split_dataset(spec, config, "test", training=False, batch_size=8)))[0].numpy()
    class_names, _ = training_classes(spec, config)  # a pretext model's are the rotations
    with staging_folder(path) as staged:  # TF Serving sees the version only once it is verified
        if config.task == "detection":
            export_detector(model, staged, class_names)
            diffs = verify_detector_export(staged, model, batch, tolerance=config.export.tolerance)
        elif config.task == "segmentation":
            export_segmenter(model, staged, model.class_names)
            diffs = verify_segmenter_export(staged, model, batch, tolerance=config.export.tolerance)
        else:
            export_classifier(model, staged, class_names)
            diffs = verify_classifier_export(staged, model, batch, tolerance=config.export.tolerance)
    log.info(
        "exported %s (signatures %s), max |SavedModel - Keras| = %.2e",
        path,
        ", ".join(SIGNATURES),
        max(diffs.values()),
    )

    params = source.data.params
    model_name = params.get("model.backbone", "model")
    if config.task in ("detection", "segmentation"):
        model_name = params.get("model.architecture") or model_name
    with tracking.stage_run(
        config,
        "export",
        model=model_name,
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
    ) as run:
        mlflow.log_metrics(
            {
                "export_max_abs_diff": max(diffs.values()),
                **{f"export_diff_{k}": v for k, v in diffs.items()},
                "export_version": version,
                "export_size_bytes": _folder_size(path),
            }
        )
        mlflow.set_tags({"export_path": path, "export_version": str(version)})
        mlflow.log_text(_describe(path), "saved_model_signatures.txt")
        outputs = {"export_path": path, "version": version}
        if config.export.register:
            reg = register_export(
                name,
                source,
                tracking.model_uri(from_run),
                task=config.task,
                export_path=path,
                export_version=version,
            )
            mlflow.set_tags(
                {
                    "registered_model": f"models:/{name}/{reg['version']}",
                    "champion": str(reg["champion"]).lower(),
                    "champion_decision": reg["champion_decision"],
                }
            )
            log.info("registered models:/%s/%s; champion: %s", name, reg["version"], reg["champion_decision"])
            outputs["registered"] = f"models:/{name}/{reg['version']}"
            if reg["champion"]:
                outputs["champion"] = f"models:/{name}@champion"
        return StageResult(run.info.run_id, "export", outputs)


def _folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _describe(path: str) -> str:
    """Signatures with input/output names, dtypes and shapes (what saved_model_cli shows)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    lines = []
    for key in sorted(loaded.signatures):
        fn = loaded.signatures[key]
        lines.append(f"signature {key}:")
        for arg, spec in sorted(fn.structured_input_signature[1].items()):
            lines.append(f"  input  {arg}: {spec.dtype.name} {_shape(spec.shape)}")
        for out, spec in sorted(fn.structured_outputs.items()):
            lines.append(f"  output {out}: {spec.dtype.name} {_shape(spec.shape)}")
    return "\n".join(lines) + "\n"


def _shape(shape) -> str:
    return str(tuple(-1 if d is None else d for d in shape.as_list()))
