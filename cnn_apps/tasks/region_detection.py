"""Region-proposal detection outside one Keras graph (``task: detection``,
``model.architecture: rcnn | sppnet``): selective-search proposals (OpenCV), a fine-tuned
Keras classifier whose features feed linear SVMs and box regressors (scikit-learn).

The model is a Python pipeline object (:mod:`cnn_apps.detection.rcnn`,
:mod:`cnn_apps.detection.sppnet`) saved as a directory (``.keras`` classifier + SVM/regressor
weights) under the train run's artifacts ``region_detector/``. What needs one Keras graph it
refuses, saying why: SavedModel export, a distribution strategy, mixed precision, epoch
backups (``--resume``) and learning curves.

Options come from ``model.architecture_args`` (see ``RCNN.valid_args()``); the backbone, its
arguments and width from ``model``, dropout from ``regularization``, the image size from
``data.image_size``, ``max_detections`` from ``detection``. NMS (``nms_iou``, 0.3 in the
paper) and the score threshold (``score_threshold``, an SVM margin, default -1) are
architecture_args, not the ``detection`` section, because the scores are margins, not
probabilities.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from cnn_apps import registry, tracking
from cnn_apps.config import Config
from cnn_apps.errors import ConfigError
from cnn_apps.tasks.base import FitPlan, Report, Task
from cnn_apps.tasks.detection import (
    MAX_GRID_IMAGES,
    at_resolution,
    box_counts,
    detection_report,
    official_coco,
    source_coco_file,
    with_source_boxes,
)
from cnn_apps.tasks.inputs import split_dataset

ARTIFACT = "region_detector"
WHY = (
    "its selective-search proposals (OpenCV) and linear SVMs / box regressors (scikit-learn) live "
    "outside TensorFlow"
)


def region_detector_names() -> list[str]:
    import cnn_apps.builtins  # noqa: F401  (registers R-CNN and SPP-net)

    return registry.names("region_detector")


def is_region_detector(name) -> bool:
    return name in region_detector_names()


def region_detector_from_config(config: Config, class_names):
    """The R-CNN / SPP-net a config describes; unknown ``architecture_args`` raise a ConfigError
    listing the valid keys."""
    name = config.model.architecture
    if not is_region_detector(name):
        raise ConfigError(
            f"model.architecture '{name}' is not a region detector ({', '.join(region_detector_names())})"
        )
    cls = registry.get("region_detector", name)
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


def read_split(spec, config: Config, split: str, *, keep_source: bool = False):
    """(images (N, S, S, 3) uint8, boxes N x (G_i, 4), labels N x (G_i,)) of one split, padding
    removed; boxes xyxy pixels at the model's input size, ignore regions left out (training
    targets). ``keep_source``: (images, truth), truth one dict per image as
    :func:`~cnn_apps.tasks.detection.collect` gives it (ignore regions flagged, the source
    resolution's truth under ``source``)."""
    images, boxes, labels, truth = [], [], [], []
    for x, y in split_dataset(spec, config, split, training=False, keep_source=keep_source):
        batch = np.clip(np.rint(np.asarray(x)), 0, 255).astype(np.uint8)
        images.append(batch)
        y = {k: np.asarray(v) for k, v in y.items()}
        for i in range(len(y["labels"])):
            keep = y["labels"][i] >= 0
            boxes.append(y["boxes"][i][keep].astype(np.float32))
            labels.append(y["labels"][i][keep].astype(np.int64))
            if keep_source:
                t = {"boxes": boxes[-1], "labels": labels[-1], "iscrowd": y["ignore"][i][keep].astype(bool)}
                t["size"] = batch.shape[1:3]
                h, w = (int(v) for v in y["source_size"][i])
                t["source"] = {**t, "boxes": y["source_boxes"][i][keep], "size": (h, w)}
                truth.append(t)
    if not images:
        raise ConfigError(f"the {split} split of the dataset is empty")
    images = np.concatenate(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return (images, truth) if keep_source else (images, boxes, labels)


def load_region_detector(run_id: str):
    """The R-CNN / SPP-net train run ``run_id`` saved under ``region_detector/``."""
    import mlflow

    from cnn_apps.detection.region_detector import RegionDetector

    with tracking.temp_dir() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT, dst_path=tmp)
        except Exception as exc:
            raise ConfigError(
                f"run {run_id} has no '{ARTIFACT}/' artifacts (not an rcnn/sppnet train run?): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        return RegionDetector.load(path)


def score_split(model, images, truth, class_names, *, batch: int = 32, resolution: str = "model"):
    """Detections over a split in batches, scored at ``resolution`` (truth from
    ``read_split(keep_source=True)``) -> (DetectionMetrics, detections at the model's input
    size, seconds per image, timings)."""
    from cnn_apps.detection.evaluation import evaluate_detections

    dets, totals = [], {"proposal_ms": 0.0, "feature_ms": 0.0, "classify_ms": 0.0}
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        dets.extend({k: d[k] for k in ("boxes", "scores", "labels")} for d in model.predict(chunk))
        for k in totals:
            totals[k] += model.last_timings[k] * len(chunk)
    seconds = (time.perf_counter() - start) / max(len(images), 1)
    timings = {k: v / max(len(images), 1) for k, v in totals.items()}
    scored = at_resolution(truth, with_source_boxes(dets, truth), resolution)
    return evaluate_detections(*scored, len(class_names), class_names), dets, seconds, timings


@registry.register("task", "region_detection")
class RegionDetectionTask(Task):
    """R-CNN and SPP-net: trained by their own three-stage fit, evaluated like the Keras
    detectors (VOC mAP, COCO suite, per-class AP, PR curves, a grid of test detections) plus
    the time per image with proposals included."""

    main_metric = "map50"
    studies = ("detectors",)  # a ladder rung; no learning curve (see check_training)

    @classmethod
    def dataset_metrics(cls, spec) -> dict:
        return box_counts(spec)

    def check_training(self, *, train_limit=None, resume=None) -> None:
        t = self.config.training
        refused = {
            "training.distribution": t.distribution != "none",
            "training.mixed_precision": t.mixed_precision != "none",
            "--resume": bool(resume),
            "a learning-curve study (train_limit)": bool(train_limit),
        }
        named = [k for k, on in refused.items() if on]
        if named:
            raise ConfigError(
                f"model.architecture '{self.config.model.architecture}' cannot train with "
                f"{', '.join(named)}: "
                f"{WHY}; only its fine-tuning is a Keras fit, and its SVM stage has no epochs to back up, "
                "split across devices or cast. Use fast_rcnn or faster_rcnn for that."
            )

    def build_model(self):
        return region_detector_from_config(self.config, self.class_names)

    def error(self, model, ds) -> float:
        raise ConfigError(
            f"{self.config.model.architecture} is not diagnosed on tf.data batches: {WHY}; its train run "
            "logs val_map50 instead"
        )

    def compile_args(self) -> dict:
        raise ConfigError(f"{self.config.model.architecture} is not compiled as one Keras model: {WHY}")

    def fit(self, model, plan: FitPlan) -> dict:
        """Fine-tune, cache features, train the SVMs and box regressors on the train split;
        logs the fit summary (proposals per image, seconds per stage, SVM hard-negative rounds)."""
        import mlflow

        train = read_split(self.spec, self.config, "train")  # targets: ignore regions left out
        start = time.perf_counter()
        summary = model.fit(*train)
        seconds = time.perf_counter() - start
        mlflow.log_metrics(
            {
                "train_examples": len(train[0]),
                "train_seconds": seconds,
                "params_total": model.classifier.count_params(),
            }
        )
        _log_fit_summary(summary)
        tracking.log_json(dict(summary), "fit_summary.json")
        return {**summary, "train_seconds": seconds}

    def validate(self, model, summary: dict):
        images, truth = read_split(self.spec, self.config, "validation", keep_source=True)
        result, _, _, _ = score_split(model, images, truth, self.class_names)
        outputs = {"val_map50": round(result.map50, 4), "seconds": round(summary["train_seconds"], 1)}
        return result.metrics(prefix="val_"), outputs, {"metrics": result, "model": model}

    def save(self, model) -> None:
        import mlflow

        with tracking.temp_dir() as tmp:
            model.save(tmp)
            mlflow.log_artifacts(tmp, ARTIFACT)
        run = mlflow.active_run()
        mlflow.set_tag("region_detector", f"runs:/{run.info.run_id}/{ARTIFACT}")

    def load(self, run_id: str):
        return load_region_detector(run_id)

    def attach(self, model, *, at_model_size_: bool = False) -> None:
        if at_model_size_:
            self.config = dataclasses.replace(
                self.config, data=dataclasses.replace(self.config.data, image_size=model.image_size)
            )

    def evaluate(self, model) -> Report:
        """The Keras detectors' metrics plus the time per image with proposals included
        (``test_seconds_per_image``, ``test_proposal_ms``, ``test_feature_ms``, ``test_classify_ms``)."""
        class_names = list(model.class_names)
        resolution = self.config.evaluate.resolution
        images, truth = read_split(self.spec, self.config, "test", keep_source=True)
        model.predict(images[:2])  # warm-up (tracing, OpenCV init)
        result, dets, seconds, timings = score_split(model, images, truth, class_names, resolution=resolution)
        scored = at_resolution(truth, with_source_boxes(dets, truth), resolution)
        result, files = official_coco(result, *scored, class_names, source_coco_file(self, resolution))
        latencies = []
        for i in range(min(5, len(images))):
            start = time.perf_counter()
            model.predict(images[i : i + 1])
            latencies.append(time.perf_counter() - start)
        metrics = {
            **result.metrics(prefix="test_"),
            "test_seconds_per_image": seconds,
            "test_images_per_s": 1.0 / max(seconds, 1e-9),
            "test_latency_ms": float(np.median(latencies) * 1000),
            "test_examples": len(images),
            **{f"test_{k}": v for k, v in timings.items()},
        }
        outputs = {
            "test_map50": round(result.map50, 4),
            "test_map50_voc07": round(result.map50_voc07, 4),
            "test_coco_ap": round(result.coco_ap, 4),
            "test_seconds_per_image": round(seconds, 4),
            "test_proposal_ms": round(timings["proposal_ms"], 1),
        }
        n = min(MAX_GRID_IMAGES, len(images))
        shown_truth, shown = at_resolution(truth[:n], dets[:n], "model")
        artifacts = detection_report(
            result,
            class_names,
            list(images[:n]),
            shown_truth,
            shown,
            threshold=0.0,
            note="SVM margin ≥ 0 (red)",
            resolution=resolution,
        )
        return Report(metrics, outputs, extra={"metrics": result}, json=files, **artifacts)

    exportable = False

    def export(self, model, path) -> dict:
        self.check_exportable()
        return {}

    def check_exportable(self) -> None:
        raise ConfigError(
            f"model.architecture '{self.config.model.architecture}' cannot be exported as a SavedModel: "
            f"{WHY}. "
            "Evaluate it with `cnn-apps evaluate --from-run TRAIN_RUN`; for an exportable proposal-based "
            "detector use fast_rcnn or faster_rcnn."
        )


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
