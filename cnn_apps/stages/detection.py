"""The detection branch of the stages: train and evaluate a detector by config
(``task: detection``, ``model.architecture: yolo_v1 | ssd | ssd300_vgg16 | ...``).

Targets travel as ``{"boxes": (B, N, 4), "labels": (B, N)}``, boxes xyxy pixels at the
model's input size, padded with -1 (:mod:`cnn_apps.data.pipeline`). A detector fed region
proposals (Fast R-CNN: ``model.proposal_settings``) gets its inputs as ``{"images",
"proposals"}``, the proposals computed once by selective search and cached on disk
(:mod:`cnn_apps.data.proposal_cache`); its speed figures include the search's measured
time per image (``test_proposal_ms``).
"""

from __future__ import annotations

import numpy as np

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import (
    StageResult,
    batch_images,
    dataset_label,
    first_examples,
    images_per_second,
    input_shape,
    latency_ms,
    log,
    split_dataset,
)

MAX_GRID_IMAGES = 16


def train_detector(
    config: Config,
    spec,
    from_run: str,
    *,
    nested: bool = False,
    tags: dict | None = None,
    run_name: str | None = None,
) -> StageResult:
    import keras

    import mlflow
    from cnn_apps.data.proposal_cache import ProposalSettings
    from cnn_apps.detection.factory import detector_from_config
    from cnn_apps.serving import image_input_shape
    from cnn_apps.training.fit_dense import fit_dense

    keras.utils.set_random_seed(config.training.seed)
    class_names = list(spec.class_names)
    num_train = spec.counts["train"]
    model = detector_from_config(config, len(class_names), class_names)
    if image_input_shape(model) != input_shape(spec, config):
        log.warning("model input %s, data %s", image_input_shape(model), input_shape(spec, config))
    proposals = ProposalSettings.of(model)  # None unless the model is fed proposals
    train_ds = split_dataset(spec, config, "train", training=True, proposals=proposals)
    val_ds = split_dataset(spec, config, "validation", training=False, proposals=proposals)
    architecture = config.model.architecture
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
        mlflow.log_metrics({"params_total": model.count_params(), "train_examples": num_train})
        summary = fit_dense(
            model,
            train_ds,
            val_ds,
            config.training,
            num_train=num_train,
            title=f"train: {architecture} on {dataset_label(spec)}",
        )
        result = evaluate_on(model, val_ds, class_names)
        mlflow.log_metrics(result.metrics(prefix="val_"))
        sample = first_examples(next(iter(val_ds))[0], 2, numpy=True)
        tracking.log_keras_model(model, sample)
        return StageResult(
            run.info.run_id,
            "train",
            {
                "val_map50": round(result.map50, 4),
                "epochs": summary["epochs_trained"],
                "seconds": round(summary["train_seconds"], 1),
            },
            extra={"summary": summary, "metrics": result},
        )


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
            dets.append(
                {"boxes": out["boxes"][i, :n], "scores": out["scores"][i, :n], "labels": out["labels"][i, :n]}
            )
        if len(images) < keep_images:
            images.extend(batch_images(x)[: keep_images - len(images)].astype(np.uint8))
    return truth, dets, images


def evaluate_on(model, ds, class_names):
    from cnn_apps.detection.evaluation import evaluate_detections

    truth, dets, _ = collect(model, ds)
    return evaluate_detections(truth, dets, len(class_names), class_names)


def evaluate_detector(
    config: Config, spec, from_run: str, source, model, *, nested: bool = False
) -> StageResult:
    """mAP (VOC all-point and 11-point at IoU 0.5), the COCO suite, per-class AP, PR curves,
    a grid of test images with true (green) and predicted (red) boxes, and the speed of the
    whole inference path (NMS included) at batch ``evaluate.batch_size`` and at batch 1;
    for a detector fed proposals, the selective search's measured time per image is added
    to both (``test_proposal_ms``; the network alone: ``test_network_*``)."""
    import mlflow
    from cnn_apps import plots
    from cnn_apps.data.proposal_cache import ProposalSettings
    from cnn_apps.detection.evaluation import evaluate_detections

    class_names = list(getattr(model, "class_names", spec.class_names))
    proposals = ProposalSettings.of(model)
    test_ds = split_dataset(
        spec, config, "test", training=False, batch_size=config.evaluate.batch_size, proposals=proposals
    )
    truth, dets, images = collect(model, test_ds, keep_images=MAX_GRID_IMAGES)
    result = evaluate_detections(truth, dets, len(class_names), class_names)
    speed = images_per_second(model, test_ds, config.evaluate.speed_batches)
    latency = latency_ms(model, test_ds)
    timing = {}
    if proposals is not None:  # test time per image, proposals included
        proposal_ms = _proposal_ms(test_ds, proposals)
        timing = {
            "test_proposal_ms": proposal_ms,
            "test_network_images_per_s": speed,
            "test_network_latency_ms": latency,
        }
        speed = 1.0 / (1.0 / max(speed, 1e-9) + proposal_ms / 1000.0)
        latency = latency + proposal_ms
    architecture = source.data.params.get("model.architecture", "detector")
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
            {"test_images_per_s": speed, "test_latency_ms": latency, "test_examples": len(truth), **timing}
        )
        mlflow.log_metrics(metrics)
        mlflow.log_text(result.per_class_table(), "per_class_ap.csv")
        mlflow.log_text(result.markdown(), "detection_report.md")
        tracking.log_figure(plots.pr_curves(result.pr_curves), "pr_curves.png")
        n = len(images)
        tracking.log_figure(
            plots.detection_grid(
                np.stack(images),
                truth[:n],
                _confident(dets[:n]),
                class_names,
                title="test: truth (green), predictions ≥ 0.3 (red)",
            ),
            "test_detections.png",
        )
        outputs = {
            "test_map50": round(result.map50, 4),
            "test_map50_voc07": round(result.map50_voc07, 4),
            "test_coco_ap": round(result.coco_ap, 4),
            "test_images_per_s": round(speed, 1),
            "test_latency_ms": round(latency, 1),
        }
        if timing:
            outputs["test_proposal_ms"] = round(timing["test_proposal_ms"], 1)
        return StageResult(run.info.run_id, "evaluate", outputs, extra={"metrics": result})


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


def _confident(dets, threshold: float = 0.3):
    return [{k: v[d["scores"] >= threshold] for k, v in d.items()} for d in dets]
