"""Object detection with a Keras detector (``task: detection``; YOLO, SSD, Fast and Faster
R-CNN, ...): one network from pixels to padded detections, decoding and NMS in the graph.

Targets travel as ``{"boxes": (B, N, 4), "labels": (B, N)}``, boxes xyxy pixels at the
model's input size, padded with -1 (:mod:`cnn_apps.data.pipeline`). A detector fed region
proposals (Fast R-CNN: ``model.proposal_settings``) gets its inputs as ``{"images",
"proposals"}``, the proposals computed once by selective search and cached on disk
(:mod:`cnn_apps.data.proposal_cache`); its speed figures include the search's measured
time per image (``test_proposal_ms``).
"""

from __future__ import annotations

import logging

import numpy as np

from cnn_apps import registry
from cnn_apps.tasks.base import Report, Task
from cnn_apps.tasks.inputs import input_shape
from cnn_apps.tasks.speed import batch_images, images_per_second, latency_ms

MAX_GRID_IMAGES = 16
log = logging.getLogger("cnn_apps")


# per-split tallies a detection source may keep in ``spec.extra`` (objects left out of the targets)
DETECTION_TALLIES = ("images_without_objects", "difficult_boxes", "crowd_annotations", "left_out_boxes")


def box_counts(spec) -> dict:
    """Boxes per split (``boxes_<split>``) and the source's tallies of objects left out."""
    metrics = {f"boxes_{split}": sum(per_class.values()) for split, per_class in spec.class_counts.items()}
    for tally in DETECTION_TALLIES:
        for split, n in (spec.extra.get(tally) or {}).items():
            metrics[f"{tally}_{split}"] = n
    return metrics


def collect(model, ds, keep_images: int = 0):
    """Run the detector (``predict_on_batch``: the compiled ``detect``) over ``ds``; returns
    (ground truth, detections, first images) as per-image dicts of NumPy arrays (padding
    removed), boxes xyxy pixels at the model's input size: the evaluator's input."""
    truth, dets, images = [], [], []
    for x, y in ds:
        out = {k: np.asarray(v) for k, v in model.predict_on_batch(x).items()}
        boxes, labels = y["boxes"].numpy(), y["labels"].numpy()
        for i in range(len(labels)):
            keep = labels[i] >= 0
            truth.append({"boxes": boxes[i][keep], "labels": labels[i][keep]})
            n = int(out["num_detections"][i])
            dets.append(
                {"boxes": out["boxes"][i, :n], "scores": out["scores"][i, :n], "labels": out["labels"][i, :n]}
            )
        if len(images) < keep_images:
            images.extend(batch_images(x)[: keep_images - len(images)].astype(np.uint8))
    return truth, dets, images


def confident(dets, threshold: float = 0.3):
    """The detections scoring at least ``threshold`` (for the plotted grids)."""
    return [{k: v[d["scores"] >= threshold] for k, v in d.items()} for d in dets]


def detection_report(result, class_names, images, truth, dets, *, threshold: float, note: str) -> dict:
    """The artifacts every detector's evaluation logs: per-class AP, the report, PR curves
    and a grid of test images with true (green) and predicted (red) boxes."""
    from cnn_apps import plots

    n = len(images)
    grid = plots.detection_grid(
        np.stack(images),
        truth[:n],
        confident(dets[:n], threshold),
        class_names,
        title=f"test: truth (green), {note}",
    )
    return {
        "texts": {"per_class_ap.csv": result.per_class_table(), "detection_report.md": result.markdown()},
        "figures": {"pr_curves.png": plots.pr_curves(result.pr_curves), "test_detections.png": grid},
    }


@registry.register("task", "detection")
class DetectionTask(Task):
    """A Keras detector: trained by the one fit loop (the model's own ``compute_loss``),
    validated and evaluated by VOC mAP (all-point and 11-point at IoU 0.5) and the COCO
    suite, exported with decoding and NMS inside the graph."""

    main_metric = "map50"
    studies = ("learning-curve", "detectors")

    @classmethod
    def dataset_metrics(cls, spec) -> dict:
        return box_counts(spec)

    def __init__(self, config, spec):
        super().__init__(config, spec)
        self.proposals = None  # ProposalSettings of a detector fed proposals (Fast R-CNN)

    def build_model(self):
        from cnn_apps.detection.factory import detector_from_config
        from cnn_apps.serving import image_input_shape

        names = self.class_names
        model = detector_from_config(self.config, len(names), names)
        if image_input_shape(model) != input_shape(self.spec, self.config):
            log.warning(
                "model input %s, data %s", image_input_shape(model), input_shape(self.spec, self.config)
            )
        return model

    def attach(self, model, *, at_model_size_: bool = False) -> None:
        from cnn_apps.data.proposal_cache import ProposalSettings

        super().attach(model, at_model_size_=at_model_size_)
        self.proposals = ProposalSettings.of(model)  # None unless the model is fed proposals

    def input_options(self) -> dict:
        return {"proposals": self.proposals}

    def compile_args(self) -> dict:
        return {}  # the detector's compute_loss

    def score(self, model, ds):
        from cnn_apps.detection.evaluation import evaluate_detections

        truth, dets, _ = collect(model, ds)
        return evaluate_detections(truth, dets, len(self.class_names), self.class_names)

    def error(self, model, ds) -> float:
        return 1.0 - float(self.score(model, ds).map50)

    def validate(self, model, summary: dict):
        result = self.score(model, self.dataset("validation", training=False))
        outputs = {
            "val_map50": round(result.map50, 4),
            "epochs": summary["epochs_trained"],
            "seconds": round(summary["train_seconds"], 1),
        }
        return result.metrics(prefix="val_"), outputs, {"metrics": result}

    def evaluate(self, model) -> Report:
        """mAP (VOC all-point and 11-point at IoU 0.5), the COCO suite, per-class AP, PR
        curves, a grid of test images with true (green) and predicted (red) boxes, and the
        speed of the whole inference path (NMS included) at batch ``evaluate.batch_size`` and
        at batch 1; for a detector fed proposals, the selective search's measured time per
        image is added to both (``test_proposal_ms``; the network alone: ``test_network_*``)."""
        from cnn_apps.detection.evaluation import evaluate_detections

        class_names = list(getattr(model, "class_names", self.class_names))
        test_ds = self.test_dataset()
        truth, dets, images = collect(model, test_ds, keep_images=MAX_GRID_IMAGES)
        result = evaluate_detections(truth, dets, len(class_names), class_names)
        speed = images_per_second(model, test_ds, self.config.evaluate.speed_batches)
        latency = latency_ms(model, test_ds)
        timing = {}
        if self.proposals is not None:  # test time per image, proposals included
            proposal_ms = _proposal_ms(test_ds, self.proposals)
            timing = {
                "test_proposal_ms": proposal_ms,
                "test_network_images_per_s": speed,
                "test_network_latency_ms": latency,
            }
            speed = 1.0 / (1.0 / max(speed, 1e-9) + proposal_ms / 1000.0)
            latency = latency + proposal_ms
        metrics = {
            **result.metrics(prefix="test_"),
            "test_images_per_s": speed,
            "test_latency_ms": latency,
            "test_examples": len(truth),
            **timing,
        }
        outputs = {
            "test_map50": round(result.map50, 4),
            "test_map50_voc07": round(result.map50_voc07, 4),
            "test_coco_ap": round(result.coco_ap, 4),
            "test_images_per_s": round(speed, 1),
            "test_latency_ms": round(latency, 1),
        }
        if timing:
            outputs["test_proposal_ms"] = round(timing["test_proposal_ms"], 1)
        artifacts = detection_report(
            result, class_names, images, truth, dets, threshold=0.3, note="predictions ≥ 0.3 (red)"
        )
        return Report(metrics, outputs, extra={"metrics": result}, **artifacts)

    def export(self, model, path) -> dict:
        from cnn_apps.serving import export_detector, verify_detector_export

        export_detector(model, path, self.class_names)
        return verify_detector_export(
            path, model, self.export_batch(), tolerance=self.config.export.tolerance
        )


def _proposal_ms(ds, settings, max_images: int = 32) -> float:
    """Mean selective-search time (ms) per test image at the model's size, measured now
    (the cached proposals were computed once, possibly long ago)."""
    from cnn_apps.data.proposal_cache import propose

    images = []
    for x, _ in ds:
        images.extend(batch_images(x)[: max_images - len(images)])
        if len(images) >= max_images:
            break
    _, seconds = propose(images, settings)
    return float(seconds * 1000)
