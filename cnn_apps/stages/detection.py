"""The detection branch of the stages: train and evaluate a detector by config
(``task: detection``, ``model.architecture: yolo_v1 | ssd | ssd300_vgg16 | ...``).

Targets travel as ``{"boxes": (B, N, 4), "labels": (B, N)}``, boxes xyxy pixels at the
model's input size, padded with -1 (:mod:`cnn_apps.data.pipeline`).
"""

from __future__ import annotations

import time

import numpy as np

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import StageResult, dataset_label, input_shape, log, split_dataset

MAX_GRID_IMAGES = 16


def train_detector(config: Config, spec, from_run: str, *, nested: bool = False, tags: dict | None = None,
                   run_name: str | None = None) -> StageResult:
    import keras
    import mlflow

    from cnn_apps.detection.factory import detector_from_config
    from cnn_apps.training.fit_detection import fit_detector

    keras.utils.set_random_seed(config.training.seed)
    class_names = list(spec.class_names)
    num_train = spec.counts["train"]
    train_ds = split_dataset(spec, config, "train", training=True)
    val_ds = split_dataset(spec, config, "validation", training=False)
    model = detector_from_config(config, len(class_names), class_names)
    if tuple(model.input_shape[1:]) != input_shape(spec, config):
        log.warning("model input %s, data %s", model.input_shape[1:], input_shape(spec, config))
    architecture = config.model.architecture
    with tracking.stage_run(config, "train", model=architecture, dataset=dataset_label(spec),
                            source_run=from_run, fingerprint=spec.fingerprint, nested=nested,
                            tags=tags, run_name=run_name) as run:
        mlflow.log_text(spec.to_json(), tracking.DATASET_ARTIFACT)
        mlflow.log_metrics({"params_total": model.count_params(), "train_examples": num_train})
        summary = fit_detector(model, train_ds, val_ds, config.training, num_train=num_train,
                               title=f"train: {architecture} on {dataset_label(spec)}")
        result = evaluate_on(model, val_ds, class_names)
        mlflow.log_metrics(result.metrics(prefix="val_"))
        sample = next(iter(val_ds))[0][:2].numpy()
        tracking.log_keras_model(model, sample)
        return StageResult(run.info.run_id, "train", {
            "val_map50": round(result.map50, 4), "epochs": summary["epochs_trained"],
            "seconds": round(summary["train_seconds"], 1)}, extra={"summary": summary, "metrics": result})


def collect(model, ds, keep_images: int = 0):
    """Run the detector (``predict_on_batch``: the compiled ``detect``) over ``ds``; returns (ground truth, detections, first images)
    as per-image dicts of NumPy arrays (padding removed), the evaluator's input."""
    truth, dets, images = [], [], []
    for x, y in ds:
        out = {k: np.asarray(v) for k, v in model.predict_on_batch(x).items()}
        boxes, labels = y["boxes"].numpy(), y["labels"].numpy()
        for i in range(len(labels)):
            keep = labels[i] >= 0
            truth.append({"boxes": boxes[i][keep], "labels": labels[i][keep]})
            n = int(out["num_detections"][i])
            dets.append({"boxes": out["boxes"][i, :n], "scores": out["scores"][i, :n], "labels": out["labels"][i, :n]})
        if len(images) < keep_images:
            images.extend(x.numpy()[:keep_images - len(images)].astype(np.uint8))
    return truth, dets, images


def evaluate_on(model, ds, class_names):
    from cnn_apps.detection.evaluation import evaluate_detections

    truth, dets, _ = collect(model, ds)
    return evaluate_detections(truth, dets, len(class_names), class_names)


def evaluate_detector(config: Config, spec, from_run: str, source, model, *, nested: bool = False) -> StageResult:
    """mAP (VOC all-point and 11-point at IoU 0.5), the COCO suite, per-class AP, PR curves,
    a grid of test images with true (green) and predicted (red) boxes, and the speed of the
    whole inference path (NMS included) at batch ``evaluate.batch_size`` and at batch 1."""
    import mlflow

    from cnn_apps import plots
    from cnn_apps.detection.evaluation import evaluate_detections

    class_names = list(getattr(model, "class_names", spec.class_names))
    test_ds = split_dataset(spec, config, "test", training=False, batch_size=config.evaluate.batch_size)
    truth, dets, images = collect(model, test_ds, keep_images=MAX_GRID_IMAGES)
    result = evaluate_detections(truth, dets, len(class_names), class_names)
    speed = _detections_per_second(model, test_ds, config.evaluate.speed_batches)
    latency = _latency_ms(model, test_ds)
    architecture = source.data.params.get("model.architecture", "detector")
    with tracking.stage_run(config, "evaluate", model=architecture, dataset=dataset_label(spec),
                            source_run=from_run, fingerprint=spec.fingerprint, nested=nested) as run:
        metrics = result.metrics(prefix="test_")
        metrics.update({"test_images_per_s": speed, "test_latency_ms": latency, "test_examples": len(truth)})
        mlflow.log_metrics(metrics)
        mlflow.log_text(result.per_class_table(), "per_class_ap.csv")
        mlflow.log_text(result.markdown(), "detection_report.md")
        tracking.log_figure(plots.pr_curves(result.pr_curves), "pr_curves.png")
        n = len(images)
        tracking.log_figure(plots.detection_grid(np.stack(images), truth[:n], _confident(dets[:n]), class_names,
                                                 title="test: truth (green), predictions ≥ 0.3 (red)"),
                            "test_detections.png")
        return StageResult(run.info.run_id, "evaluate", {
            "test_map50": round(result.map50, 4), "test_map50_voc07": round(result.map50_voc07, 4),
            "test_coco_ap": round(result.coco_ap, 4), "test_images_per_s": round(speed, 1),
            "test_latency_ms": round(latency, 1)}, extra={"metrics": result})


def _confident(dets, threshold: float = 0.3):
    return [{k: v[d["scores"] >= threshold] for k, v in d.items()} for d in dets]


def _detections_per_second(model, ds, batches: int) -> float:
    """Throughput of the compiled ``detect`` (network, decoding and NMS) on loaded batches."""
    xs = [x for x, _ in ds.take(batches + 1)]
    model.predict_on_batch(xs[0])  # warm-up: tracing
    timed = xs[1:] or xs
    start = time.perf_counter()
    for x in timed:
        model.predict_on_batch(x)
    return float(sum(int(x.shape[0]) for x in timed) / max(time.perf_counter() - start, 1e-9))


def _latency_ms(model, ds, repeats: int = 10) -> float:
    """Median time of one image through the compiled ``detect`` (batch 1)."""
    x = next(iter(ds))[0][:1]
    model.predict_on_batch(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)

