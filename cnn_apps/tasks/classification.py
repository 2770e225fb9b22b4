"""Image classification (``task: classification``) and its self-supervised pretext
(``task: pretext``: predict which of four rotations an unlabelled image was turned by)."""

from __future__ import annotations

import csv
import io

import numpy as np

from cnn_apps import registry
from cnn_apps.tasks.base import Report, Task
from cnn_apps.tasks.inputs import input_shape, metric_key
from cnn_apps.tasks.speed import images_per_second

MAX_ERROR_IMAGES = 32


@registry.register("task", "classification")
class ClassificationTask(Task):
    """A backbone with a softmax head; accuracy, macro precision/recall/F1, the confusion
    matrix and a grid of misclassified test images; per-epoch training error and the
    bias/variance diagnosis."""

    main_metric = "accuracy"
    per_epoch_error = True
    studies = ("regularization", "learning-curve", "depth", "transfer")

    @property
    def model_label(self) -> str:
        return self.config.model.backbone

    @classmethod
    def finetune_config(cls, config):
        return config

    def build_model(self):
        from cnn_apps.classification import classifier_from_config

        names = self.class_names
        return classifier_from_config(self.config, len(names), input_shape(self.spec, self.config), names)

    def compile_args(self) -> dict:
        from cnn_apps.training.fit import classifier_compile_args

        return classifier_compile_args()

    def error(self, model, ds) -> float:
        from cnn_apps.training.diagnosis import classification_error

        return classification_error(model, ds)

    def validate(self, model, summary: dict):
        outputs = {
            "val_accuracy": round(summary["best_val_accuracy"], 4),
            "epochs": summary["epochs_trained"],
            "seconds": round(summary["train_seconds"], 1),
            "diagnosis": summary["diagnosis"].verdict,
        }
        return {}, outputs, {}

    def evaluate(self, model) -> Report:
        """``test_loss``, ``test_accuracy``, macro precision/recall/F1, per-class
        ``test_f1_<class>``, ``per_class.csv``, the confusion matrix (PNG and JSON), a grid of
        the test images it got wrong and the throughput ``test_images_per_s``."""
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        from cnn_apps import plots

        test_ds = self.test_dataset()
        probs, labels, wrong_images = [], [], []  # keep only a few misclassified images in memory
        for x, y in test_ds:
            p_batch = np.asarray(model.predict_on_batch(x))
            y = y.numpy()
            probs.append(p_batch)
            labels.append(y)
            if sum(len(w) for w in wrong_images) < MAX_ERROR_IMAGES:
                wrong_images.append(x.numpy()[p_batch.argmax(axis=1) != y].astype(np.uint8))
        probs, labels = np.concatenate(probs), np.concatenate(labels)
        pred = probs.argmax(axis=1)
        class_names = self.class_names
        k = len(class_names)
        test_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0))))
        accuracy = float(np.mean(pred == labels))
        p, r, f1, support = precision_recall_fscore_support(
            labels, pred, labels=np.arange(k), zero_division=0
        )
        cm = confusion_matrix(labels, pred, labels=np.arange(k))
        speed = images_per_second(model, test_ds, self.config.evaluate.speed_batches)
        metrics = {
            "test_loss": test_loss,
            "test_accuracy": accuracy,
            "test_macro_precision": float(p.mean()),
            "test_macro_recall": float(r.mean()),
            "test_macro_f1": float(f1.mean()),
            "test_images_per_s": speed,
            "test_examples": int(len(labels)),
            **{f"test_f1_{metric_key(name)}": float(f1[i]) for i, name in enumerate(class_names)},
        }
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for i, name in enumerate(class_names):
            w.writerow([name, f"{p[i]:.4f}", f"{r[i]:.4f}", f"{f1[i]:.4f}", int(support[i])])
        figures = {"confusion_matrix.png": plots.confusion_matrix(cm, class_names)}
        wrong = np.flatnonzero(pred != labels)[:MAX_ERROR_IMAGES]
        if len(wrong):
            titles = [f"{class_names[labels[i]]}->{class_names[pred[i]]}" for i in wrong]
            images = np.concatenate(wrong_images)[: len(wrong)]
            figures["test_errors.png"] = plots.image_grid(
                images, titles, title="test errors (true->predicted)"
            )
        outputs = {
            "test_accuracy": round(accuracy, 4),
            "test_loss": round(test_loss, 4),
            "test_images_per_s": round(speed, 1),
        }
        return Report(
            metrics,
            outputs,
            texts={"per_class.csv": buf.getvalue()},
            json={"confusion_matrix.json": {"class_names": class_names, "matrix": cm.tolist()}},
            figures=figures,
        )

    def export(self, model, path) -> dict:
        from cnn_apps.serving import export_classifier, verify_classifier_export

        export_classifier(model, path, self.class_names)
        return verify_classifier_export(
            path, model, self.export_batch(), tolerance=self.config.export.tolerance
        )


@registry.register("task", "pretext")
class PretextTask(ClassificationTask):
    """Rotation prediction on the dataset's images (its labels unused): four examples per
    image, classes 0°, 90°, 180°, 270°; trained, evaluated and exported as a classifier."""

    @property
    def class_names(self) -> list[str]:
        from cnn_apps.data.pretext import ROTATION_CLASSES

        return list(ROTATION_CLASSES)

    def num_train(self, limit: int | None = None) -> int:
        return 4 * super().num_train(limit)

    @classmethod
    def finetune_config(cls, config):
        """A pretext run's model fine-tunes on the data's own labels: a classification config."""
        import dataclasses
        import logging

        logging.getLogger("cnn_apps").info(
            "task pretext -> classification: fine-tuning learns the data's own labels"
        )
        return dataclasses.replace(config, task="classification")
