"""evaluate: measure a trained model on the test split.

Input: ``--from-run`` of a train or finetune run. One path for every task: the task of the
run's model (:func:`cnn_apps.tasks.for_run`) loads it, reads the test split at the model's
input size and measures it (:meth:`~cnn_apps.tasks.base.Task.evaluate`); this stage logs what
it reports in an ``evaluate`` run linked to the train run. A classifier logs ``test_loss``,
``test_accuracy``, macro precision/recall/F1, per-class F1, the confusion matrix and a grid
of its errors; a detector VOC mAP, the COCO suite, PR curves and a grid of detections; a
segmenter mIoU, per-class IoU and overlays; every task the inference speed
(``test_images_per_s`` at ``evaluate.batch_size`` after one warm-up batch; detectors and
segmenters also ``test_latency_ms`` at batch 1).
"""

from __future__ import annotations

import mlflow

from cnn_apps import tasks, tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import StageResult, source_model_label
from cnn_apps.tasks.inputs import dataset_label

SOURCE_STAGES = ("train", "finetune")


def evaluate(config: Config, from_run: str, *, nested: bool = False) -> StageResult:
    tracking.setup(config)
    source = tracking.get_run(from_run, expect_stage=SOURCE_STAGES)
    spec = tracking.load_dataset_spec(from_run)
    task = tasks.for_run(config, spec, source)
    model = task.load(from_run)
    task.attach(model, at_model_size_=True)  # evaluate at the size it was trained at
    report = task.evaluate(model)
    with tracking.stage_run(
        task.config,
        "evaluate",
        model=source_model_label(source),
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
        nested=nested,
    ) as run:
        mlflow.log_metrics(report.metrics)
        for path, text in report.texts.items():
            mlflow.log_text(text, path)
        for path, data in report.json.items():
            tracking.log_json(data, path)
        for path, figure in report.figures.items():
            tracking.log_figure(figure, path)
        return StageResult(run.info.run_id, "evaluate", report.outputs, extra=report.extra)
