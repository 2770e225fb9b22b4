"""evaluate: measure a trained classifier on the test split.

Input: ``--from-run`` of a train or finetune run. Logs ``test_loss``,
``test_accuracy``, macro precision/recall/F1, per-class ``test_f1_<class>``, a
per-class table (``per_class.csv``), the confusion matrix (PNG and JSON), a grid
of the test images it got wrong, and the inference throughput ``test_images_per_s``
(batches of ``evaluate.batch_size`` after one warm-up batch).
"""

from __future__ import annotations

import csv
import io
import time

import numpy as np

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import (
    StageResult,
    at_model_size,
    check_task,
    dataset_label,
    metric_key,
    split_dataset,
    training_classes,
)

SOURCE_STAGES = ("train", "finetune")
MAX_ERROR_IMAGES = 32


def evaluate(config: Config, from_run: str, *, nested: bool = False) -> StageResult:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    import mlflow
    from cnn_apps import plots

    check_task(config, ("classification", "pretext", "detection", "segmentation"))
    tracking.setup(config)
    source = tracking.get_run(from_run, expect_stage=SOURCE_STAGES)
    spec = tracking.load_dataset_spec(from_run)
    if spec.task == "detection":
        from cnn_apps.stages.region_detectors import evaluate_region_detector, is_region_detector

        if is_region_detector(source.data.params.get("model.architecture")):  # not a Keras model
            return evaluate_region_detector(config, spec, from_run, source, nested=nested)
    model = tracking.load_keras_model(from_run)
    config = at_model_size(config, model)  # evaluate at the size it was trained at
    if spec.task == "detection":
        from cnn_apps.stages.detection import evaluate_detector

        return evaluate_detector(config, spec, from_run, source, model, nested=nested)
    if spec.task == "segmentation":
        from cnn_apps.stages.segmentation import evaluate_segmenter

        return evaluate_segmenter(config, spec, from_run, source, model, nested=nested)
    test_ds = split_dataset(spec, config, "test", training=False, batch_size=config.evaluate.batch_size)

    probs, labels, wrong_images = [], [], []  # keep only a few misclassified images in memory
    for x, y in test_ds:
        p_batch = np.asarray(model.predict_on_batch(x))
        y = y.numpy()
        probs.append(p_batch)
        labels.append(y)
        if sum(len(w) for w in wrong_images) < MAX_ERROR_IMAGES:
            wrong_images.append(x.numpy()[p_batch.argmax(axis=1) != y].astype(np.uint8))
    probs = np.concatenate(probs)
    labels = np.concatenate(labels)
    pred = probs.argmax(axis=1)
    class_names, _ = training_classes(spec, config)
    k = len(class_names)
    eps = 1e-7
    test_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))
    accuracy = float(np.mean(pred == labels))
    p, r, f1, support = precision_recall_fscore_support(labels, pred, labels=np.arange(k), zero_division=0)
    cm = confusion_matrix(labels, pred, labels=np.arange(k))
    speed = _images_per_second(model, test_ds, config.evaluate.speed_batches)

    model_name = source.data.params.get("model.backbone", "model")
    with tracking.stage_run(
        config,
        "evaluate",
        model=model_name,
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
        nested=nested,
    ) as run:
        metrics = {
            "test_loss": test_loss,
            "test_accuracy": accuracy,
            "test_macro_precision": float(p.mean()),
            "test_macro_recall": float(r.mean()),
            "test_macro_f1": float(f1.mean()),
            "test_images_per_s": speed,
            "test_examples": int(len(labels)),
        }
        for i, name in enumerate(class_names):
            metrics[f"test_f1_{metric_key(name)}"] = float(f1[i])
        mlflow.log_metrics(metrics)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for i, name in enumerate(class_names):
            w.writerow([name, f"{p[i]:.4f}", f"{r[i]:.4f}", f"{f1[i]:.4f}", int(support[i])])
        mlflow.log_text(buf.getvalue(), "per_class.csv")
        tracking.log_json({"class_names": class_names, "matrix": cm.tolist()}, "confusion_matrix.json")
        tracking.log_figure(plots.confusion_matrix(cm, class_names), "confusion_matrix.png")
        wrong = np.flatnonzero(pred != labels)[:MAX_ERROR_IMAGES]
        if len(wrong):
            titles = [f"{class_names[labels[i]]}->{class_names[pred[i]]}" for i in wrong]
            images = np.concatenate(wrong_images)[: len(wrong)]
            tracking.log_figure(
                plots.image_grid(images, titles, title="test errors (true->predicted)"), "test_errors.png"
            )
        return StageResult(
            run.info.run_id,
            "evaluate",
            {
                "test_accuracy": round(accuracy, 4),
                "test_loss": round(test_loss, 4),
                "test_images_per_s": round(speed, 1),
            },
        )


def _images_per_second(model, ds, batches: int) -> float:
    """Inference throughput on already-loaded batches (input pipeline excluded)."""
    xs = [x for x, _ in ds.take(batches + 1)]
    model.predict_on_batch(xs[0])  # warm-up: tracing and allocation
    timed = xs[1:] or xs
    start = time.perf_counter()
    for x in timed:
        model.predict_on_batch(x)
    seconds = time.perf_counter() - start
    return float(sum(int(x.shape[0]) for x in timed) / max(seconds, 1e-9))
