"""Semantic segmentation (``task: segmentation``; FCN-32s/16s/8s, SegNet, U-Net, ...).

Batches are ``(images (B, S, S, 3) float 0..255, masks (B, S, S, 1) uint8)``; mask value 0 is
the background, k + 1 the dataset's class k, and ``segmentation.ignore_label`` (255) marks
pixels that count in neither the loss nor the metrics. The model's classes are therefore
``["background", *spec.class_names]``.
"""

from __future__ import annotations

import numpy as np

from cnn_apps import registry
from cnn_apps.errors import ConfigError
from cnn_apps.tasks.base import Report, Task
from cnn_apps.tasks.inputs import resolution_note
from cnn_apps.tasks.speed import images_per_second, latency_ms

MAX_GRID_IMAGES = 8


def model_classes(spec) -> list[str]:
    """The segmenter's K class names: background, then the dataset's classes."""
    names = list(spec.class_names)
    return names if names and names[0] == "background" else ["background", *names]


def evaluate_on(model, ds, class_names, ignore_label: int, keep_images: int = 0, resolution: str = "model"):
    """Class maps over ``ds`` scored against its masks: (SegmentationMetrics, (images, truth,
    predictions) of the first ``keep_images``, at the model's input size).

    ``resolution="source"`` (``ds`` made with ``keep_source``): each image's class scores are
    resized (bilinear) to its original mask's size before the argmax and scored against that
    mask, as FCN and the benchmarks score; ``"model"``: against the masks resized (nearest) to
    the model's input."""
    from cnn_apps.segmentation.metrics import ConfusionMatrix, logits_to_class_map, segmentation_metrics

    confusion = ConfusionMatrix(len(class_names), ignore_label=ignore_label)
    kept = ([], [], [])
    for x, y in ds:
        scores = np.asarray(model.predict_on_batch(x))
        pred = logits_to_class_map(scores)
        truth = np.asarray(y["mask"] if isinstance(y, dict) else y)[..., 0]
        if resolution == "source":
            if not isinstance(y, dict) or "source_mask" not in y:
                raise ValueError("scoring at the source resolution needs a dataset made with keep_source")
            masks = np.asarray(y["source_mask"])
            for i, (h, w) in enumerate(np.asarray(y["source_size"])):
                confusion.update(masks[i, :h, :w, 0], source_class_map(scores[i], h, w))
        else:
            confusion.update(truth, pred)
        if len(kept[0]) < keep_images:
            n = keep_images - len(kept[0])
            kept[0].extend(np.asarray(x)[:n].astype(np.uint8))
            kept[1].extend(truth[:n])
            kept[2].extend(pred[:n])
    return segmentation_metrics(confusion.matrix, class_names), kept


def source_class_map(scores, height: int, width: int) -> np.ndarray:
    """Class ids (height, width) of one image's scores (S, S, K) resized bilinearly (half-pixel
    centres) to its original size, then the argmax over classes."""
    import tensorflow as tf

    resized = tf.image.resize(np.asarray(scores, np.float32), (int(height), int(width)), method="bilinear")
    return np.argmax(resized.numpy(), axis=-1)


@registry.register("task", "segmentation")
class SegmentationTask(Task):
    """A segmenter trained on the pixel cross-entropy (the ignore label left out) with
    per-epoch ``miou``; mean IoU, per-class IoU, pixel accuracy and overlays on the test split."""

    main_metric = "miou"
    studies = ("learning-curve", "segmentation")

    @property
    def class_names(self) -> list[str]:
        return model_classes(self.spec)

    @property
    def ignore_label(self) -> int:
        return self.config.segmentation.ignore_label

    def build_model(self):
        from cnn_apps.segmentation.factory import segmenter_from_config

        names = self.class_names
        model = segmenter_from_config(self.config, len(names), names)
        if self.config.data.image_size % model.stride:
            raise ConfigError(
                f"data.image_size {self.config.data.image_size} is not divisible by "
                f"{self.config.model.architecture}'s stride {model.stride}"
            )
        return model

    def compile_args(self) -> dict:
        import keras

        from cnn_apps.segmentation.segmenter import segmentation_loss

        k = len(self.class_names)
        miou = keras.metrics.MeanIoU(k, ignore_class=self.ignore_label, sparse_y_pred=False, name="miou")
        return {"loss": segmentation_loss(self.ignore_label), "metrics": [miou]}

    def error(self, model, ds) -> float:
        return 1.0 - float(evaluate_on(model, ds, self.class_names, self.ignore_label)[0].miou)

    def validate(self, model, summary: dict):
        result, _ = evaluate_on(
            model, self.dataset("validation", training=False), self.class_names, self.ignore_label
        )  # at the model's input size, as the per-epoch val_miou
        # the kept (best val_loss) weights; per-epoch val_miou is Keras' own at each epoch's end
        outputs = {
            "best_val_miou": round(result.miou, 4),
            "epochs": summary["epochs_trained"],
            "seconds": round(summary["train_seconds"], 1),
        }
        return result.metrics(prefix="best_val_"), outputs, {"metrics": result}

    def evaluate(self, model) -> Report:
        """Mean IoU, per-class IoU, pixel accuracy, mean accuracy and frequency-weighted IoU on
        the test split (``test_*``) at ``evaluate.resolution`` (default: each original mask's
        size, see :func:`evaluate_on`), ``per_class_iou.csv``, ``segmentation_report.md``, a grid of
        test images with truth and prediction overlays, and the speed of the forward pass at
        batch ``evaluate.batch_size`` (``test_images_per_s``) and at batch 1 (``test_latency_ms``)."""
        from cnn_apps import plots

        class_names = list(getattr(model, "class_names", self.class_names))
        ignore = int(getattr(model, "ignore_label", self.ignore_label))
        resolution = self.config.evaluate.resolution
        test_ds = self.test_dataset(keep_source=resolution == "source")
        result, (images, truth, pred) = evaluate_on(
            model, test_ds, class_names, ignore, keep_images=MAX_GRID_IMAGES, resolution=resolution
        )
        speed = images_per_second(model, test_ds, self.config.evaluate.speed_batches)
        latency = latency_ms(model, test_ds)
        grid = plots.segmentation_grid(
            np.stack(images),
            np.stack(truth),
            np.stack(pred),
            class_names,
            title="test: image, truth, prediction",
            cols=2,
            ignore_label=ignore,
            max_images=MAX_GRID_IMAGES,
        )
        metrics = {
            **result.metrics(prefix="test_"),
            "test_images_per_s": speed,
            "test_latency_ms": latency,
            "test_pixels": result.num_pixels,
        }
        outputs = {
            "test_miou": round(result.miou, 4),
            "test_pixel_accuracy": round(result.pixel_accuracy, 4),
            "test_images_per_s": round(speed, 1),
            "test_latency_ms": round(latency, 1),
            "resolution": resolution,
        }
        return Report(
            metrics,
            outputs,
            texts={
                "per_class_iou.csv": result.per_class_table(),
                "segmentation_report.md": f"{resolution_note(resolution)}\n\n{result.markdown()}",
            },
            figures={"test_segmentations.png": grid},
            extra={"metrics": result},
        )

    def export(self, model, path) -> dict:
        from cnn_apps.serving import export_segmenter, verify_segmenter_export

        export_segmenter(model, path, model.class_names)
        return verify_segmenter_export(
            path, model, self.export_batch(), tolerance=self.config.export.tolerance
        )
