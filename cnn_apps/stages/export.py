"""export: SavedModel for TF Serving, verified, and registered in MLflow.

Input: ``--from-run`` of a train or finetune run. One path for every task: the task of the
run's model writes ``<export.dir>/<name>/<version>/`` (next integer version) with its
signatures (:meth:`~cnn_apps.tasks.base.Task.export`: classifiers and pretext models through
:func:`~cnn_apps.serving.export_classifier`, detectors through
:func:`~cnn_apps.serving.export_detector`, segmenters through
:func:`~cnn_apps.serving.export_segmenter`), reloads it and checks every signature against the
Keras model on test images (``export_max_abs_diff``); R-CNN and SPP-net refuse, saying why.
Then the run's MLflow model is registered as a new version of the registered model ``<name>``
and its ``champion`` alias moves when the source's evaluate run beats the champion
(:func:`~cnn_apps.serving.registry.register_export`).
"""

from __future__ import annotations

import os

from cnn_apps import tasks, tracking
from cnn_apps.config import Config
from cnn_apps.serving import SIGNATURES, next_version, staging_folder
from cnn_apps.serving.registry import register_export
from cnn_apps.stages.common import StageResult, log, source_model_label
from cnn_apps.tasks.inputs import dataset_label

SOURCE_STAGES = ("train", "finetune")


def export(config: Config, from_run: str) -> StageResult:
    import mlflow

    tracking.setup(config)
    source = tracking.get_run(from_run, expect_stage=SOURCE_STAGES)
    spec = tracking.load_dataset_spec(from_run)
    task = tasks.for_run(config, spec, source)
    task.check_exportable()  # before loading anything: R-CNN/SPP-net are not a TF graph
    model = task.load(from_run)
    task.attach(model, at_model_size_=True)
    config = task.config
    name = config.export.name or config.name
    base = os.path.join(config.export.dir, name)
    version = next_version(base)
    path = os.path.abspath(os.path.join(base, str(version)))
    with staging_folder(path) as staged:  # TF Serving sees the version only once it is verified
        diffs = task.export(model, staged)
    log.info(
        "exported %s (signatures %s), max |SavedModel - Keras| = %.2e",
        path,
        ", ".join(SIGNATURES),
        max(diffs.values()),
    )
    with tracking.stage_run(
        config,
        "export",
        model=source_model_label(source),
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
