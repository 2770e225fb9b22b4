"""The segmentation branch of the stages: train and evaluate a segmenter by config
(``task: segmentation``, ``model.architecture: fcn32s | fcn16s | fcn8s | segnet | unet``).

Batches are ``(images (B, S, S, 3) float 0..255, masks (B, S, S, 1) uint8)``; mask value 0 is
the background, k + 1 the dataset's class k, and ``segmentation.ignore_label`` (255) marks
pixels that count in neither the loss nor the metrics. The model's classes are therefore
``["background", *spec.class_names]``.
"""

from __future__ import annotations

import numpy as np

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import (
    StageResult,
    dataset_label,
    images_per_second,
    latency_ms,
    log,
    split_dataset,
)

MAX_GRID_IMAGES = 8


def model_classes(spec) -> list[str]:
    """The segmenter's K class names: background, then the dataset's classes."""
    names = list(spec.class_names)
    return names if names and names[0] == "background" else ["background", *names]


def train_segmenter(
    config: Config,
    spec,
    from_run: str,
    *,
    nested: bool = False,
    tags: dict | None = None,
    run_name: str | None = None,
) -> StageResult:
    """Fit the configured segmenter (pixel cross-entropy, the ignore label left out), log
    per-epoch losses and ``miou``, the kept weights' validation metrics (``best_val_*``) and
    the model."""
    import keras

    import mlflow
    from cnn_apps.segmentation.factory import segmenter_from_config
    from cnn_apps.segmentation.segmenter import segmentation_loss
    from cnn_apps.training.fit_dense import fit_dense

    keras.utils.set_random_seed(config.training.seed)
    class_names = model_classes(spec)
    ignore = config.segmentation.ignore_label
    model = segmenter_from_config(config, len(class_names), class_names)
    if config.data.image_size % model.stride:
        from cnn_apps.errors import ConfigError

        raise ConfigError(
            f"data.image_size {config.data.image_size} is not divisible by "
            f"{config.model.architecture}'s stride {model.stride}"
        )
    train_ds = split_dataset(spec, config, "train", training=True)
    val_ds = split_dataset(spec, config, "validation", training=False)
    architecture = config.model.architecture
    miou = keras.metrics.MeanIoU(len(class_names), ignore_class=ignore, sparse_y_pred=False, name="miou")
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
        mlflow.log_metrics({"params_total": model.count_params(), "train_examples": spec.counts["train"]})
        summary = fit_dense(
            model,
            train_ds,
            val_ds,
            config.training,
            num_train=spec.counts["train"],
            title=f"train: {architecture} on {dataset_label(spec)}",
            loss=segmentation_loss(ignore),
            metrics=[miou],
        )
        result, _ = evaluate_on(model, val_ds, class_names, ignore)
        # the kept (best val_loss) weights; per-epoch val_miou is Keras' own at each epoch's end
        mlflow.log_metrics(result.metrics(prefix="best_val_"))
        sample = next(iter(val_ds))[0][:2].numpy()
        tracking.log_keras_model(model, sample)
        return StageResult(
            run.info.run_id,
            "train",
            {
                "best_val_miou": round(result.miou, 4),
                "epochs": summary["epochs_trained"],
                "seconds": round(summary["train_seconds"], 1),
            },
            extra={"summary": summary, "metrics": result},
        )


def evaluate_on(model, ds, class_names, ignore_label: int, keep_images: int = 0):
    """Class maps over ``ds`` scored against its masks: (SegmentationMetrics, (images, truth,
    predictions) of the first ``keep_images``)."""
    from cnn_apps.segmentation.metrics import ConfusionMatrix, logits_to_class_map, segmentation_metrics

    confusion = ConfusionMatrix(len(class_names), ignore_label=ignore_label)
    kept = ([], [], [])
    for x, y in ds:
        pred = logits_to_class_map(model.predict_on_batch(x))
        truth = np.asarray(y)[..., 0]
        confusion.update(truth, pred)
        if len(kept[0]) < keep_images:
            n = keep_images - len(kept[0])
            kept[0].extend(np.asarray(x)[:n].astype(np.uint8))
            kept[1].extend(truth[:n])
            kept[2].extend(pred[:n])
    return segmentation_metrics(confusion.matrix, class_names), kept


def evaluate_segmenter(
    config: Config, spec, from_run: str, source, model, *, nested: bool = False
) -> StageResult:
    """Mean IoU, per-class IoU, pixel accuracy, mean accuracy and frequency-weighted IoU on
    the test split (``test_*``), ``per_class_iou.csv``, ``segmentation_report.md``, a grid of
    test images with truth and prediction overlays, and the speed of the forward pass at
    batch ``evaluate.batch_size`` (``test_images_per_s``) and at batch 1 (``test_latency_ms``)."""
    import mlflow
    from cnn_apps import plots

    class_names = list(getattr(model, "class_names", model_classes(spec)))
    ignore = int(getattr(model, "ignore_label", config.segmentation.ignore_label))
    test_ds = split_dataset(spec, config, "test", training=False, batch_size=config.evaluate.batch_size)
    result, (images, truth, pred) = evaluate_on(
        model, test_ds, class_names, ignore, keep_images=MAX_GRID_IMAGES
    )
    speed = images_per_second(model, test_ds, config.evaluate.speed_batches)
    latency = latency_ms(model, test_ds)
    architecture = source.data.params.get("model.architecture", "segmenter")
    with tracking.stage_run(
        config,
        "evaluate",
        model=architecture,
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
        nested=nested,
    ) as run:
        mlflow.log_metrics(
            {
                **result.metrics(prefix="test_"),
                "test_images_per_s": speed,
                "test_latency_ms": latency,
                "test_pixels": result.num_pixels,
            }
        )
        mlflow.log_text(result.per_class_table(), "per_class_iou.csv")
        mlflow.log_text(result.markdown(), "segmentation_report.md")
        tracking.log_figure(
            plots.segmentation_grid(
                np.stack(images),
                np.stack(truth),
                np.stack(pred),
                class_names,
                title="test: image, truth, prediction",
                cols=2,
                ignore_label=ignore,
                max_images=MAX_GRID_IMAGES,
            ),
            "test_segmentations.png",
        )
        log.info("%s: test mIoU %.4f, pixel accuracy %.4f", architecture, result.miou, result.pixel_accuracy)
        return StageResult(
            run.info.run_id,
            "evaluate",
            {
                "test_miou": round(result.miou, 4),
                "test_pixel_accuracy": round(result.pixel_accuracy, 4),
                "test_images_per_s": round(speed, 1),
                "test_latency_ms": round(latency, 1),
            },
            extra={"metrics": result},
        )
