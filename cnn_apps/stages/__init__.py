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
    with the other run ids in ``outputs`` (evaluate's for a model that cannot be exported,
    R-CNN / SPP-net)."""
    from cnn_apps import tasks, tracking
    from cnn_apps.stages.common import log

    prepared = prepare(config)
    trained = train(config, from_run=prepared.run_id)
    evaluated = evaluate(config, from_run=trained.run_id)
    task = tasks.for_config(config, tracking.load_dataset_spec(prepared.run_id))
    if not task.exportable:
        log.info("%s is evaluate-only (not one TensorFlow graph): no export", task.model_label)
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
