"""Train and evaluate the region-proposal detectors that live partly outside TensorFlow:
R-CNN and SPP-net (``task: detection``, ``model.architecture: rcnn | sppnet``).

Their proposals come from OpenCV and their classifiers are scikit-learn SVMs, so they are
Python pipeline objects (:mod:`cnn_apps.detection.rcnn`, :mod:`cnn_apps.detection.sppnet`)
saved as a directory (``.keras`` classifier + joblib SVM/regressor weights) under the train
run's artifacts ``region_detector/``; they are evaluate-only (no SavedModel export:
:func:`check_exportable` says why).

Options come from ``model.architecture_args`` (see ``RCNN.valid_args()``); the backbone,
its arguments and width from ``model``, dropout from ``regularization``, the image size from
``data.image_size``, ``max_detections`` from ``detection``. NMS (``nms_iou``, 0.3 in the
paper) and the score threshold (``score_threshold``, an SVM margin, default -1) are
architecture_args, not the ``detection`` section, because the scores are margins, not
probabilities.
"""

from __future__ import annotations

import time

import numpy as np

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.common import StageResult, dataset_label, log, split_dataset

ARTIFACT = "region_detector"
MAX_GRID_IMAGES = 16


def _rcnn():
    from cnn_apps.detection.rcnn import RCNN

    return RCNN


def _sppnet():
    from cnn_apps.detection.sppnet import SPPNet

    return SPPNet


REGION_DETECTORS = {"rcnn": _rcnn, "sppnet": _sppnet}  # name -> the class (imported on use)


def is_region_detector(name) -> bool:
    return name in REGION_DETECTORS


def check_exportable(name) -> None:
    """Export refuses R-CNN and SPP-net with a ConfigError that says why."""
    if is_region_detector(name):
        raise ConfigError(
            f"model.architecture '{name}' cannot be exported as a SavedModel: its selective-search "
            "proposals (OpenCV) and linear SVMs / box regressors (scikit-learn) live outside "
            "TensorFlow. Evaluate it with `cnn-apps evaluate --from-run TRAIN_RUN`; for an "
            "exportable proposal-based detector use fast_rcnn or faster_rcnn."
        )


def region_detector_from_config(config: Config, class_names):
    """The R-CNN / SPP-net a config describes; unknown ``architecture_args`` raise a ConfigError
    listing the valid keys."""
    name = config.model.architecture
    if not is_region_detector(name):
        raise ConfigError(
            f"model.architecture '{name}' is not a region detector ({', '.join(REGION_DETECTORS)})"
        )
    cls = REGION_DETECTORS[name]()
    args = dict(config.model.architecture_args)
    valid = cls.valid_args()
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ConfigError(
            f"model.architecture_args: {', '.join(unknown)} not taken by '{name}'. "
            f"Valid keys: {', '.join(valid)}"
        )
    defaults = dict(
        image_size=config.data.image_size,
        backbone=config.model.backbone,
        backbone_args=dict(config.model.backbone_args),
        width=config.model.width,
        dropout=config.regularization.dropout,
        seed=config.training.seed,
        max_detections=config.detection.max_detections,
    )
    defaults.update(args)
    return cls(len(class_names), list(class_names), **defaults)


def read_split(spec, config: Config, split: str):
    """(images (N, S, S, 3) uint8, boxes N x (G_i, 4), labels N x (G_i,)) of one split, padding removed."""
    images, boxes, labels = [], [], []
    for x, y in split_dataset(spec, config, split, training=False):
        images.append(np.clip(np.rint(np.asarray(x)), 0, 255).astype(np.uint8))
        b, lab = np.asarray(y["boxes"]), np.asarray(y["labels"])
        for i in range(len(lab)):
            keep = lab[i] >= 0
            boxes.append(b[i][keep].astype(np.float32))
            labels.append(lab[i][keep].astype(np.int64))
    if not images:
        raise ConfigError(f"the {split} split of the dataset is empty")
    images = np.concatenate(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images, boxes, labels


def _evaluate(model, images, boxes, labels, class_names, batch: int = 32):
    """Detections over a split in batches -> (DetectionMetrics, detections, seconds per image, timings)."""
    from cnn_apps.detection.evaluation import evaluate_detections

    dets, totals = [], {"proposal_ms": 0.0, "feature_ms": 0.0, "classify_ms": 0.0}
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        dets.extend(model.predict(chunk))
        for k in totals:
            totals[k] += model.last_timings[k] * len(chunk)
    seconds = (time.perf_counter() - start) / max(len(images), 1)
    timings = {k: v / max(len(images), 1) for k, v in totals.items()}
    truth = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
    result = evaluate_detections(
        truth, [{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets], len(class_names), class_names
    )
    return result, dets, seconds, timings


def _log_fit_summary(summary: dict) -> None:
    import mlflow

    ft = summary.get("finetune", {})
    metrics = {
        "train_proposals_per_image": summary["proposals_per_image"],
        "train_proposal_seconds": summary["proposal_seconds"],
        "train_feature_seconds": summary["feature_seconds"],
        "train_svm_seconds": summary["svm_seconds"],
    }
    for key in ("fg_pool", "bg_pool", "train_accuracy", "seconds"):
        if key in ft:
            metrics[f"finetune_{key}"] = ft[key]
    for k, h in summary["svm"].items():
        metrics[f"svm_negatives_used_class{k}"] = h["negatives_used"][-1]
        metrics[f"svm_positives_class{k}"] = h["positives"]
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def train_region_detector(
    config: Config,
    spec,
    from_run: str,
    *,
    nested: bool = False,
    tags: dict | None = None,
    run_name: str | None = None,
) -> StageResult:
    """Fit R-CNN / SPP-net on the train split, log the fit summary and val mAP, save the model
    directory as the run's ``region_detector/`` artifacts."""
    import mlflow

    class_names = list(spec.class_names)
    model = region_detector_from_config(config, class_names)
    architecture = config.model.architecture
    train = read_split(spec, config, "train")
    val = read_split(spec, config, "validation")
    with tracking.stage_run(
        config,
        "train",
        model=architecture,
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
        nested=nested,
        tags=tags,
        run_name=run_name,
    ) as run:
        mlflow.log_text(spec.to_json(), tracking.DATASET_ARTIFACT)
        start = time.perf_counter()
        summary = model.fit(*train)
        seconds = time.perf_counter() - start
        log.info("%s fitted in %.0f s", architecture, seconds)
        mlflow.log_metrics(
            {
                "train_examples": len(train[0]),
                "train_seconds": seconds,
                "params_total": model.classifier.count_params(),
            }
        )
        _log_fit_summary(summary)
        tracking.log_json({k: v for k, v in summary.items()}, "fit_summary.json")
        result, _, _, _ = _evaluate(model, *val, class_names)
        mlflow.log_metrics(result.metrics(prefix="val_"))
        with tracking.temp_dir() as tmp:
            model.save(tmp)
            mlflow.log_artifacts(tmp, ARTIFACT)
        mlflow.set_tag("region_detector", f"runs:/{run.info.run_id}/{ARTIFACT}")
        return StageResult(
            run.info.run_id,
            "train",
            {"val_map50": round(result.map50, 4), "seconds": round(seconds, 1)},
            extra={"summary": summary, "metrics": result, "model": model},
        )


def load_region_detector(run_id: str):
    """The R-CNN / SPP-net a train run saved under ``region_detector/``."""
    import mlflow
    from cnn_apps.detection.rcnn import RegionDetector

    with tracking.temp_dir() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT, dst_path=tmp)
        except Exception as exc:
            raise ConfigError(
                f"run {run_id} has no '{ARTIFACT}/' artifacts (not an rcnn/sppnet train run?): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        return RegionDetector.load(path)


def evaluate_region_detector(
    config: Config, spec, from_run: str, source, *, nested: bool = False
) -> StageResult:
    """The Keras detectors' metrics (VOC mAP, COCO suite, per-class AP, PR curves, a grid of
    test detections) plus the time per image with proposals included
    (``test_seconds_per_image``, ``test_proposal_ms``, ``test_feature_ms``, ``test_classify_ms``)."""
    import dataclasses

    import mlflow
    from cnn_apps import plots
    from cnn_apps.stages.detection import _confident

    model = load_region_detector(from_run)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=model.image_size))
    class_names = list(model.class_names)
    images, boxes, labels = read_split(spec, config, "test")
    model.predict(images[:2])  # warm-up (tracing, OpenCV init)
    result, dets, seconds, timings = _evaluate(model, images, boxes, labels, class_names)
    latencies = []
    for i in range(min(5, len(images))):
        start = time.perf_counter()
        model.predict(images[i : i + 1])
        latencies.append(time.perf_counter() - start)
    latency_ms = float(np.median(latencies) * 1000)
    architecture = source.data.params.get("model.architecture", "region_detector")
    with tracking.stage_run(
        config,
        "evaluate",
        model=architecture,
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
        nested=nested,
    ) as run:
        metrics = result.metrics(prefix="test_")
        metrics.update(
            {
                "test_seconds_per_image": seconds,
                "test_images_per_s": 1.0 / max(seconds, 1e-9),
                "test_latency_ms": latency_ms,
                "test_examples": len(images),
                **{f"test_{k}": v for k, v in timings.items()},
            }
        )
        mlflow.log_metrics(metrics)
        mlflow.log_text(result.per_class_table(), "per_class_ap.csv")
        mlflow.log_text(result.markdown(), "detection_report.md")
        tracking.log_figure(plots.pr_curves(result.pr_curves), "pr_curves.png")
        n = min(MAX_GRID_IMAGES, len(images))
        truth = [{"boxes": b, "labels": lab} for b, lab in zip(boxes[:n], labels[:n])]
        shown = [{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets[:n]]
        tracking.log_figure(
            plots.detection_grid(
                images[:n],
                truth,
                _confident(shown, 0.0),
                class_names,
                title="test: truth (green), SVM margin ≥ 0 (red)",
            ),
            "test_detections.png",
        )
        outputs = {
            "test_map50": round(result.map50, 4),
            "test_map50_voc07": round(result.map50_voc07, 4),
            "test_coco_ap": round(result.coco_ap, 4),
            "test_seconds_per_image": round(seconds, 4),
            "test_proposal_ms": round(timings["proposal_ms"], 1),
        }
        return StageResult(run.info.run_id, "evaluate", outputs, extra={"metrics": result})
