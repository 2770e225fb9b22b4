"""Semantic segmentation metrics: confusion matrix, pixel accuracy, mean accuracy, mean IoU,
frequency weighted IoU.

Pure NumPy, importable without TensorFlow. Masks hold int class ids, (H, W) or (B, H, W), a
trailing channel axis of 1 allowed; class 0 is background and counts as a class; pixels whose
truth is ``ignore_label`` (255, VOC's "void") are left out of everything.

The definitions are those of FCN (Long, Shelhamer, Darrell 2015, section 5), with n_ij the
number of pixels of class i predicted as class j, t_i = Σ_j n_ij the pixels of class i and
n_cl the number of classes:

- pixel accuracy           Σ_i n_ii / Σ_i t_i
- mean accuracy            (1/n_cl) Σ_i n_ii / t_i
- mean IU                  (1/n_cl) Σ_i n_ii / (t_i + Σ_j n_ji − n_ii)
- frequency weighted IU    (Σ_k t_k)^-1 Σ_i t_i n_ii / (t_i + Σ_j n_ji − n_ii)

As in FCN's ``score.py`` (nanmean), n_cl counts only the classes where the ratio is defined:
mean accuracy averages over the classes present in the truth (t_i > 0); mean IU over the
classes present in the truth or the prediction (union > 0). A class predicted but absent
from the truth has IoU 0 and pulls the mean down; a class absent from both has IoU NaN.

Shapes: K classes, B batch, H W mask.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

import numpy as np

from cnn_apps.errors import DataError

_END = object()
_PER_CLASS_COLUMNS = ("class", "iou", "accuracy", "truth_pixels", "predicted_pixels")


class MaskLabelError(DataError, ValueError):
    """A mask holds a value that is neither a class id in [0, K) nor the ignore label."""


class ConfusionMatrix:
    """A (K, K) int64 pixel count accumulated over batches; rows truth, columns prediction.

    ``update(truth, pred)`` takes masks of the same shape, (H, W) or (B, H, W) with an optional
    trailing axis of 1. Pixels whose truth is ``ignore_label`` are skipped (``None``: no
    ignore label); every other pixel must hold a class id in [0, K) in both masks.
    """

    def __init__(self, num_classes: int, ignore_label: int | None = 255):
        if int(num_classes) < 1:
            raise DataError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self._matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """The counts so far, (K, K) int64 (a copy)."""
        return self._matrix.copy()

    def reset(self) -> None:
        self._matrix[:] = 0

    def update(self, truth, pred) -> ConfusionMatrix:
        """Add one batch of masks; returns self."""
        t, p = _class_ids(truth, "truth"), _class_ids(pred, "prediction")
        # a trailing axis of 1 on one side only: (B, H, W, 1) against (B, H, W)
        if t.shape == p.shape + (1,):
            t = t[..., 0]
        elif p.shape == t.shape + (1,):
            p = p[..., 0]
        if t.shape != p.shape:
            hint = (
                " (pass class ids, e.g. logits_to_class_map(scores), not scores)"
                if p.ndim == t.ndim + 1
                else ""
            )
            raise MaskLabelError(
                f"truth has shape {t.shape} but prediction has shape {p.shape}; they must match{hint}"
            )
        t, p = t.ravel(), p.ravel()
        if self.ignore_label is not None:
            keep = t != self.ignore_label
            t, p = t[keep], p[keep]
        k = self.num_classes
        for values, what in ((t, "truth"), (p, "prediction")):
            bad = (values < 0) | (values >= k)
            if bad.any():
                shown = np.unique(values[bad])
                listed = ", ".join(str(v) for v in shown[:10]) + (", ..." if len(shown) > 10 else "")
                where = "" if what == "truth" else " at pixels whose truth is not ignored"
                raise MaskLabelError(
                    f"{what} has values [{listed}] outside the class ids 0..{k - 1}{where} "
                    f"(num_classes={k}, ignore_label={self.ignore_label}); "
                    "check num_classes and the mask's void value"
                )
        self._matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self


def _class_ids(mask, what: str) -> np.ndarray:
    """Any array-like (NumPy, tf.Tensor, jax.Array) -> int64, refusing non-integral floats."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.integer):
        if not np.issubdtype(mask.dtype, np.floating) or not np.all(
            np.isfinite(mask) & (mask == np.round(mask))
        ):
            raise MaskLabelError(
                f"{what} must hold integer class ids, got dtype {mask.dtype} with "
                "non-integral values (scores? take logits_to_class_map first)"
            )
    return mask.astype(np.int64)


def logits_to_class_map(scores) -> np.ndarray:
    """Per-pixel scores (..., H, W, K) (logits or probabilities) -> class ids (..., H, W) int32."""
    return np.argmax(np.asarray(scores), axis=-1).astype(np.int32)


@dataclass
class SegmentationMetrics:
    """Results of :func:`segmentation_metrics`. A metric with nothing to average is NaN."""

    miou: float
    # {class name: IoU}, NaN for a class absent from both truth and prediction.
    per_class_iou: dict
    pixel_accuracy: float
    mean_accuracy: float
    frequency_weighted_iou: float
    confusion: np.ndarray = field(repr=False)  # (K, K) int64, rows truth, columns prediction
    num_pixels: int = 0  # pixels counted (ignored ones excluded)

    @property
    def class_names(self) -> list:
        return list(self.per_class_iou)

    @property
    def per_class_accuracy(self) -> dict:
        """{class name: recall n_ii / t_i}, NaN for a class absent from the truth."""
        tp, t, _ = _counts(self.confusion)
        return dict(zip(self.class_names, _ratio(tp, t).tolist()))

    def metrics(self, prefix: str = "") -> dict:
        """Flat floats for ``mlflow.log_metrics``: ``{prefix}miou``, ``{prefix}pixel_accuracy``,
        ``{prefix}mean_accuracy``, ``{prefix}fw_iou`` and ``{prefix}iou_<class>`` (class names
        reduced to [A-Za-z0-9_]). NaNs are left out: MLflow cannot store them."""
        out = {
            f"{prefix}miou": self.miou,
            f"{prefix}pixel_accuracy": self.pixel_accuracy,
            f"{prefix}mean_accuracy": self.mean_accuracy,
            f"{prefix}fw_iou": self.frequency_weighted_iou,
        }
        for key, value in zip(_metric_names(self.class_names), self.per_class_iou.values()):
            out[f"{prefix}iou_{key}"] = value
        return {k: float(v) for k, v in out.items() if not math.isnan(v)}

    def per_class_table(self) -> str:
        """The per-class results as CSV text with a header row (NaN written as ``nan``)."""
        _, t, p = _counts(self.confusion)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_PER_CLASS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for k, (name, acc) in enumerate(self.per_class_accuracy.items()):
            writer.writerow(
                {
                    "class": name,
                    "iou": f"{self.per_class_iou[name]:.6f}",
                    "accuracy": f"{acc:.6f}",
                    "truth_pixels": int(t[k]),
                    "predicted_pixels": int(p[k]),
                }
            )
        return out.getvalue()

    def markdown(self) -> str:
        """A summary table and the per-class table, in Markdown."""
        _, t, p = _counts(self.confusion)
        summary = [
            ("mean IoU", self.miou),
            ("pixel accuracy", self.pixel_accuracy),
            ("mean accuracy", self.mean_accuracy),
            ("frequency weighted IoU", self.frequency_weighted_iou),
        ]
        lines = ["| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in summary]
        lines += [f"| pixels counted | {self.num_pixels} |"]
        lines += [
            "",
            "| class | IoU | accuracy | truth pixels | predicted pixels |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {_fmt(self.per_class_iou[name])} | {_fmt(acc)} | {int(t[k])} | {int(p[k])} |"
            for k, (name, acc) in enumerate(self.per_class_accuracy.items())
        ]
        return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _counts(matrix: np.ndarray):
    """(K, K) -> n_ii, t_i (truth pixels), p_i (predicted pixels), float64 (K,) each."""
    matrix = np.asarray(matrix, np.float64)
    return np.diag(matrix).copy(), matrix.sum(axis=1), matrix.sum(axis=0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _metric_names(class_names) -> list:
    """Class names -> distinct MLflow-safe keys: [A-Za-z0-9_], index suffix on a clash."""
    keys, seen = [], set()
    for k, name in enumerate(class_names):
        key = re.sub(r"[^A-Za-z0-9_]", "_", str(name)) or str(k)
        if key in seen:
            key = f"{key}_{k}"
        seen.add(key)
        keys.append(key)
    return keys


def _names(class_names, num_classes: int) -> list:
    names = [str(k) for k in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise DataError(f"class_names has {len(names)} names but num_classes is {num_classes}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"class_names repeats {dupes}; each class needs its own name")
    return names


def segmentation_metrics(matrix, class_names=None) -> SegmentationMetrics:
    """FCN's four metrics and per-class IoU from a (K, K) confusion matrix (rows truth,
    columns prediction), e.g. ``ConfusionMatrix.matrix``. ``class_names``: K names
    (default "0".."K-1")."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise DataError(f"the confusion matrix must be (K, K), got shape {matrix.shape}")
    if np.any(matrix < 0):
        raise DataError("the confusion matrix has negative counts")
    names = _names(class_names, matrix.shape[0])
    tp, t, p = _counts(matrix)
    iou = _ratio(tp, t + p - tp)  # NaN where the class is in neither truth nor prediction
    recall = _ratio(tp, t)  # NaN where the class is not in the truth
    total = t.sum()
    in_truth, in_either = t > 0, (t + p) > 0
    return SegmentationMetrics(
        miou=float(iou[in_either].mean()) if in_either.any() else math.nan,
        per_class_iou=dict(zip(names, iou.tolist())),
        pixel_accuracy=float(tp.sum() / total) if total else math.nan,
        mean_accuracy=float(recall[in_truth].mean()) if in_truth.any() else math.nan,
        frequency_weighted_iou=float((t[in_truth] * iou[in_truth]).sum() / total) if total else math.nan,
        confusion=np.asarray(matrix, np.int64),
        num_pixels=int(total),
    )


def evaluate_segmentation(
    truth_masks, pred_masks, num_classes: int, class_names=None, ignore_label: int | None = 255
) -> SegmentationMetrics:
    """Metrics over paired iterables of mask batches (each (H, W) or (B, H, W), optional
    trailing axis of 1), e.g. the label and the ``logits_to_class_map`` of each test batch."""
    names = _names(class_names, num_classes)  # fail before a long pass over the data
    confusion = ConfusionMatrix(num_classes, ignore_label)
    truth_iter, pred_iter = iter(truth_masks), iter(pred_masks)
    batches = 0
    for truth in truth_iter:
        try:
            pred = next(pred_iter)
        except StopIteration:
            raise DataError(
                f"pred_masks ran out after {batches} batches but truth_masks has more; "
                "give one prediction batch per truth batch"
            ) from None
        confusion.update(truth, pred)
        batches += 1
    if next(pred_iter, _END) is not _END:
        raise DataError(
            f"truth_masks has {batches} batches but pred_masks has more; "
            "give one prediction batch per truth batch"
        )
    return segmentation_metrics(confusion.matrix, names)
