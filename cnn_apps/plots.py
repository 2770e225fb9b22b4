"""Figures logged to MLflow: learning curves, confusion matrix, sample grids.

Each function returns a matplotlib Figure (Agg backend, no display needed).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: dict, title: str = "learning curves"):
    """Loss and accuracy per epoch, train vs validation (keys as in ``History.history``)."""
    pairs = [("loss", "val_loss", "loss"), ("accuracy", "val_accuracy", "accuracy")]
    pairs = [p for p in pairs if p[0] in history]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 3.6), squeeze=False)
    for ax, (train_key, val_key, label) in zip(axes[0], pairs):
        epochs = np.arange(1, len(history[train_key]) + 1)
        ax.plot(epochs, history[train_key], "o-", label="train")
        if val_key in history:
            ax.plot(epochs, history[val_key], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(matrix: np.ndarray, class_names, title: str = "confusion matrix (test)"):
    """Counts with row-normalised colour; rows are true classes, columns predictions."""
    matrix = np.asarray(matrix)
    k = len(class_names)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_title(title)
    fig.tight_layout()
    return fig


def image_grid(images, titles=None, cols: int = 8, title: str = "", boxes=None):
    """A grid of uint8 images (N, H, W, C) with optional titles and xyxy pixel boxes."""
    images = np.asarray(images)
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
        if boxes is not None:
            for x1, y1, x2, y2 in np.asarray(boxes[i]).reshape(-1, 4):
                if x2 > x1 and y2 > y1:
                    ax.add_patch(
                        plt.Rectangle(
                            (x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1
                        )
                    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def class_balance(class_counts: dict, title: str = "examples per class"):
    """Bars per class, one group per split: ``{split: {class: count}}``."""
    splits = list(class_counts)
    names = list(next(iter(class_counts.values()))) if class_counts else []
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) * max(1, len(splits)) / 2 + 3), 3.6))
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        ax.bar(
            np.arange(len(names)) + i * width,
            [class_counts[split].get(n, 0) for n in names],
            width,
            label=split,
        )
    ax.set_xticks(np.arange(len(names)) + width * (len(splits) - 1) / 2, names, rotation=30, ha="right")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def error_curves(series: dict, title: str = "error per epoch"):
    """Training error (inference mode) and validation error per epoch: the gap is the variance."""
    lines = {
        label: series.get(key) or []
        for key, label in (
            ("train_error", "training error (inference mode)"),
            ("val_error", "validation error"),
        )
    }
    longest = max((len(v) for v in lines.values()), default=0)
    return curves(
        list(range(1, longest + 1)), {k: v for k, v in lines.items() if v}, title=title, xlabel="epoch"
    )


def grouped_bars(labels, groups: dict, title: str = "", ylabel: str = "error"):
    """Bars per label, one colour per group: ``groups = {"train error": [...], ...}``."""
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(labels) + 2), 3.8))
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(groups.items()):
        bars = ax.bar(x + i * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x + width * (len(groups) - 1) / 2, labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves(
    xs,
    series: dict,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "error",
    logx: bool = False,
    logy: bool = False,
    errors: dict | None = None,
):
    """Lines sharing one x axis: ``series = {"train error": [...], ...}``; ``logy`` for losses
    whose first epoch dwarfs the rest; ``errors`` (same keys) draws +- bars, e.g. a spread over
    seeds."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, values in series.items():
        spread = (errors or {}).get(name)
        if spread is not None:
            ax.errorbar(
                xs[: len(values)], values, yerr=spread[: len(values)], fmt="o-", capsize=3, label=name
            )
        else:
            ax.plot(xs[: len(values)], values, "o-", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _all_point_ap(recall, precision) -> float:
    """VOC all-point AP of a curve (the same rule as ``detection.evaluation.voc_ap``)."""
    mrec = np.concatenate(([0.0], np.asarray(recall, float), [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], np.asarray(precision, float), [0.0]))[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def pr_curves(curves: dict, title: str = "precision-recall at IoU 0.5"):
    """One precision-recall line per class, its AP (VOC all-point) in the legend:
    ``curves = {class name: (recall (D,), precision (D,))}`` as ``DetectionMetrics.pr_curves``."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, (recall, precision) in curves.items():
        recall, precision = np.asarray(recall, float), np.asarray(precision, float)
        label = f"{name} (AP {_all_point_ap(recall, precision):.3f})"
        if len(recall):
            ax.plot(
                np.concatenate(([0.0], recall)),
                np.concatenate(([precision[0]], precision)),
                drawstyle="steps-post",
                label=label,
            )
        else:  # no detections: recall stays 0
            ax.plot([], [], label=label)
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def detection_grid(images, true, predicted, class_names, cols: int = 4, title: str = ""):
    """Images (N, H, W, C) uint8 with ground truth boxes in green and predictions in red,
    labelled "class score". ``true``: N dicts ``{"boxes": (n, 4) xyxy, "labels": (n,)}``;
    ``predicted``: N dicts that also hold ``"scores"``. Rows with label < 0 are padding."""
    images = np.asarray(images)
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)

    def name(label):
        label = int(label)
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        # pixel i covers [i, i + 1) and imshow centres it on i: shift boxes by half a pixel
        for box, label in zip(
            np.asarray(true[i]["boxes"]).reshape(-1, 4), np.asarray(true[i]["labels"]).ravel()
        ):
            if label < 0:
                continue
            x1, y1, x2, y2 = box
            ax.add_patch(
                plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="lime", lw=2.5)
            )
        pred = predicted[i]
        for box, score, label in zip(
            np.asarray(pred["boxes"]).reshape(-1, 4),
            np.asarray(pred["scores"]).ravel(),
            np.asarray(pred["labels"]).ravel(),
        ):
            if label < 0:
                continue
            x1, y1, x2, y2 = box
            ax.add_patch(
                plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="red", lw=1.2)
            )
            inside = y1 < 0.08 * img.shape[0]  # no room above the box: write the label inside it
            ax.text(
                x1 - 0.5,
                y1 - 0.5,
                f"{name(label)} {float(score):.2f}",
                color="white",
                fontsize=7,
                va="top" if inside else "bottom",
                ha="left",
                clip_on=True,
                bbox={"facecolor": "red", "alpha": 0.7, "pad": 1, "edgecolor": "none"},
            )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def segmentation_grid(
    images,
    truth,
    predicted,
    class_names,
    cols: int = 4,
    title: str = "",
    ignore_label: int = 255,
    max_images: int = 8,
):
    """Per image three panels: the image, the truth overlay, the prediction overlay (titled with
    the image's pixel accuracy), the overlays on a dimmed grey copy of the image. Images
    (N, H, W, C) uint8 (or float 0..255); masks (N, h, w) class ids (a trailing axis of 1
    allowed), stretched over the image when smaller. Class k > 0 has a fixed colour (tab10, then
    tab20's light ones, cycling), class 0 leaves the image as it is, ``ignore_label`` pixels are
    white; a legend names them. ``cols`` images (3 * cols panels) per row."""
    from matplotlib.patches import Patch

    images = np.asarray(images)[:max_images]
    truth, predicted = np.asarray(truth)[:max_images], np.asarray(predicted)[:max_images]
    if truth.ndim == 4:
        truth = truth[..., 0]
    if predicted.ndim == 4:
        predicted = predicted[..., 0]
    n, k = len(images), len(class_names)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2]  # the ten strong colours first, then their light twins
    lut = np.zeros((k, 4))  # class 0 stays transparent
    for c in range(1, k):
        lut[c] = (*palette[(c - 1) % len(palette)], 0.85)
    white = (1.0, 1.0, 1.0, 0.9)

    def overlay(mask):
        out = np.zeros(mask.shape + (4,))
        inside = (mask >= 0) & (mask < k)
        out[inside] = lut[mask[inside]]
        out[mask == ignore_label] = white
        return out

    legend_rows = int(np.ceil((k + 1) / 6))
    fig_h = 2.4 * rows + 0.5 + 0.25 * legend_rows
    fig, axes = plt.subplots(rows, 3 * cols, figsize=(2.2 * 3 * cols, fig_h), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= 3 * n:
            fig.delaxes(ax)
            continue
        ax.axis("off")
        j, panel = divmod(i, 3)
        img = images[j]
        if img.dtype != np.uint8:  # float 0..255 (the library's convention)
            img = np.clip(img, 0, 255).astype(np.uint8)
        gray = img.ndim == 2 or img.shape[-1] == 1
        height, width = img.shape[:2]
        if panel == 0:
            ax.imshow(img.reshape(img.shape[:2]) if gray else img, cmap="gray" if gray else None)
            ax.set_title(f"image {j}", fontsize=8)
            continue
        # the overlays sit on a dimmed grey copy, so busy (e.g. the shapes') colours do not hide them
        luminance = img.reshape(height, width, -1).astype(np.float32).mean(-1) / 255.0
        ax.imshow(0.35 * luminance, cmap="gray", vmin=0.0, vmax=1.0)
        mask = np.asarray(truth[j] if panel == 1 else predicted[j]).astype(np.int64)
        ax.imshow(overlay(mask), extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
        if panel == 1:
            ax.set_title("truth", fontsize=8)
        else:
            valid = truth[j] != ignore_label
            same_size = predicted[j].shape == truth[j].shape
            acc = (
                f" (acc {np.mean(predicted[j][valid] == truth[j][valid]):.2f})"
                if same_size and valid.any()
                else ""
            )
            ax.set_title(f"prediction{acc}", fontsize=8)
    handles = [Patch(facecolor="none", edgecolor="gray", label=f"{class_names[0]} (no overlay)")] if k else []
    handles += [Patch(facecolor=lut[c], edgecolor="none", label=str(class_names[c])) for c in range(1, k)]
    handles.append(Patch(facecolor=white, edgecolor="black", label=f"ignore ({ignore_label})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.05) / fig_h, 1, 1))
    return fig
