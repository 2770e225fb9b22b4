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
from cnn_apps.tasks.inputs import input_shape, resolution_note
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
    removed): the evaluator's input. Boxes are xyxy pixels at the model's input size; truth
    dicts also hold ``iscrowd`` (the ignore flags; all False when the data has none) and
    ``size`` (height, width). When ``ds`` keeps the source truth (``keep_source``), each
    truth and detection dict also holds ``source``: the same at the source resolution (the
    detections mapped back through the pipeline's resize). See :func:`at_resolution`."""
    truth, dets, images = [], [], []
    for x, y in ds:
        out = {k: np.asarray(v) for k, v in model.predict_on_batch(x).items()}
        batch = batch_images(x)
        side_h, side_w = batch.shape[1:3]
        y = {k: np.asarray(v) for k, v in y.items()}
        boxes, labels = y["boxes"], y["labels"]
        ignore = y["ignore"].astype(bool) if "ignore" in y else np.zeros(labels.shape, bool)
        for i in range(len(labels)):
            keep = labels[i] >= 0
            t = {"boxes": boxes[i][keep], "labels": labels[i][keep], "iscrowd": ignore[i][keep]}
            t["size"] = (side_h, side_w)
            n = int(out["num_detections"][i])
            d = {"boxes": out["boxes"][i, :n], "scores": out["scores"][i, :n], "labels": out["labels"][i, :n]}
            if "source_size" in y:
                h, w = (int(v) for v in y["source_size"][i])
                t["source"] = {**t, "boxes": y["source_boxes"][i][keep], "size": (h, w)}
            truth.append(t)
            dets.append(d)
        if len(images) < keep_images:
            images.extend(batch[: keep_images - len(images)].astype(np.uint8))
    return truth, with_source_boxes(dets, truth), images


def with_source_boxes(dets: list, truth: list) -> list:
    """Each detection dict with ``source``: its boxes mapped from the model's input back to the
    source image through the pipeline's resize (a stretch of each side), when ``truth`` (from
    :func:`collect`) holds the source sizes; else ``dets`` unchanged."""
    if not truth or "source" not in truth[0]:
        return dets
    out = []
    for d, t in zip(dets, truth):
        (side_h, side_w), (h, w) = t["size"], t["source"]["size"]
        scale = np.array([w / side_w, h / side_h, w / side_w, h / side_h])
        out.append({**d, "source": {**d, "boxes": np.asarray(d["boxes"], np.float64) * scale}})
    return out


def source_coco_file(task, resolution: str) -> dict | None:
    """The COCO annotation file the test split came from (see ``Source.coco_ground_truth``),
    when scoring at the source resolution; else None."""
    from cnn_apps.tasks.inputs import spec_source

    if resolution != "source":
        return None
    return spec_source(task.spec, task.config).coco_ground_truth(task.spec, "test")


def at_resolution(truth: list, dets: list, resolution: str):
    """(truth, detections) of :func:`collect` in the model's input pixels (``"model"``) or the
    source images' (``"source"``; a ValueError when the data did not keep the source)."""
    if resolution == "source":
        if truth and "source" not in truth[0]:
            raise ValueError("these detections were collected without the source truth (keep_source)")
        return [t["source"] for t in truth], [d["source"] for d in dets]
    strip = lambda items: [{k: v for k, v in item.items() if k != "source"} for item in items]  # noqa: E731
    return strip(truth), strip(dets)


def official_coco(result, truth: list, dets: list, class_names, coco_file: dict | None = None):
    """``result`` with its COCO numbers from pycocotools on the files it logs; returns
    (DetectionMetrics, {artifact path: JSON}). ``coco_file``: the source's
    ``coco_ground_truth`` (the original annotation file, its image and category ids), else the
    ground truth is ``ground_truth.json``, made from ``truth``."""
    from cnn_apps.detection.pycocotools_eval import cocoeval, ground_truth_json, results_json

    files = {}
    if coco_file is not None:
        ground, image_ids, categories = (
            coco_file["annotation_file"],
            coco_file["image_ids"],
            coco_file["category_ids"],
        )
    else:
        ground = ground_truth_json(truth, class_names)
        image_ids, categories = [im["id"] for im in ground["images"]], None
        files["ground_truth.json"] = ground
    files["detections.json"] = results_json(dets, image_ids, categories)
    coco = cocoeval(ground, files["detections.json"], image_ids)
    return result.with_coco(coco["precision"], coco["recall"]), files


def score_test_detections(task, truth: list, dets: list, class_names):
    """The test split's detections scored by the official rules at ``evaluate.resolution``: VOC
    mAP (the devkit's rules) and pycocotools' COCO suite; returns (DetectionMetrics, {artifact
    path: JSON}: ``detections.json`` and, unless the source is a COCO annotation file,
    ``ground_truth.json``)."""
    from cnn_apps.detection.evaluation import evaluate_detections

    resolution = task.config.evaluate.resolution
    scored_truth, scored_dets = at_resolution(truth, dets, resolution)
    result = evaluate_detections(scored_truth, scored_dets, len(class_names), class_names)
    return official_coco(result, scored_truth, scored_dets, class_names, source_coco_file(task, resolution))


def confident(dets, threshold: float = 0.3):
    """The detections scoring at least ``threshold`` (for the plotted grids)."""
    return [{k: v[d["scores"] >= threshold] for k, v in d.items()} for d in dets]


def detection_report(
    result, class_names, images, truth, dets, *, threshold: float, note: str, resolution: str
) -> dict:
    """The artifacts every detector's evaluation logs: per-class AP, the report (saying at which
    resolution it was scored), PR curves and a grid of test images (at the model's input size)
    with true (green) and predicted (red) boxes."""
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
        "texts": {
            "per_class_ap.csv": result.per_class_table(),
            "detection_report.md": f"{resolution_note(resolution)}\n\n{result.markdown()}",
        },
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
        """VOC mAP and the COCO suite (this package's NumPy COCOeval) at the model's input size,
        ignore regions honoured when ``ds`` flags them: validation and diagnosis."""
        from cnn_apps.detection.evaluation import evaluate_detections

        truth, dets = at_resolution(*collect(model, ds)[:2], "model")
        return evaluate_detections(truth, dets, len(self.class_names), self.class_names)

    def error(self, model, ds) -> float:
        return 1.0 - float(self.score(model, ds).map50)

    def validate(self, model, summary: dict):
        result = self.score(model, self.dataset("validation", training=False, keep_source=True))
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
        image is added to both (``test_proposal_ms``; the network alone: ``test_network_*``).

        Scored at ``evaluate.resolution`` (default the source images' pixels), ignore regions
        (VOC difficult, COCO crowd) ignored as the devkit and COCOeval do; the COCO numbers are
        pycocotools' on the logged ``detections.json`` (see :func:`score_test_detections`)."""
        class_names = list(getattr(model, "class_names", self.class_names))
        test_ds = self.test_dataset(keep_source=True)
        truth, dets, images = collect(model, test_ds, keep_images=MAX_GRID_IMAGES)
        result, files = score_test_detections(self, truth, dets, class_names)
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
            "resolution": self.config.evaluate.resolution,
        }
        if timing:
            outputs["test_proposal_ms"] = round(timing["test_proposal_ms"], 1)
        artifacts = detection_report(
            result,
            class_names,
            images,
            *at_resolution(truth, dets, "model"),
            threshold=0.3,
            note="predictions ≥ 0.3 (red)",
            resolution=self.config.evaluate.resolution,
        )
        return Report(metrics, outputs, extra={"metrics": result}, json=files, **artifacts)

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
