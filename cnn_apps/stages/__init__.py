"""The pipeline stages. Each is one function taking a :class:`~cnn_apps.config.Config`
(and, when it consumes another stage's output, that run's id) and returning a
:class:`~cnn_apps.stages.common.StageResult` whose ``run_id`` is its MLflow run.

    prepare(config)                 -> dataset.json, counts, sample grid
    train(config, from_run=None)    -> model (prepares first when from_run is None)
    finetune(config, from_run)      -> model
    evaluate(config, from_run)      -> test metrics, confusion matrix, speed
    export(config, from_run)        -> exports/<name>/<version>/, registry version
    run_all(config)                 -> prepare, train, evaluate, export in a row
"""

from cnn_apps.stages.common import StageResult
from cnn_apps.stages.evaluate import evaluate
from cnn_apps.stages.export import export
from cnn_apps.stages.finetune import finetune
from cnn_apps.stages.prepare import prepare
from cnn_apps.stages.train import train


def run_all(config) -> StageResult:
    """prepare -> train -> evaluate -> export, each its own linked run; returns export's result
    with the other run ids in ``outputs`` (evaluate's for R-CNN / SPP-net, which do not export)."""
    from cnn_apps.stages.common import log
    from cnn_apps.stages.region_detectors import is_region_detector

    prepared = prepare(config)
    trained = train(config, from_run=prepared.run_id)
    evaluated = evaluate(config, from_run=trained.run_id)
    if config.task == "detection" and is_region_detector(config.model.architecture):
        log.info(
            "%s is evaluate-only (proposals and SVMs outside TensorFlow): no export",
            config.model.architecture,
        )
        evaluated.outputs.update({"prepare_run": prepared.run_id, "train_run": trained.run_id})
        return evaluated
    exported = export(config, from_run=trained.run_id)
    exported.outputs.update(
        {
            "prepare_run": prepared.run_id,
            "train_run": trained.run_id,
            "evaluate_run": evaluated.run_id,
            **evaluated.outputs,
        }
    )
    return exported


__all__ = ["StageResult", "prepare", "train", "finetune", "evaluate", "export", "run_all"]
