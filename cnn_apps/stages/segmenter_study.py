"""``cnn-apps study segmentation``: every segmenter config in ``study.segmenters`` trained
and evaluated on the same prepared images (:mod:`cnn_apps.stages.config_study`), as nested
runs of one parent, with mIoU, pixel accuracy and speed side by side.

The parent logs ``segmenters.csv``, ``segmenters.md`` (with the FCN paper's ordering,
FCN-32s < FCN-16s < FCN-8s in mean IU: 59.4, 62.4, 62.7 on PASCAL VOC 2011 val, checked
against what was measured here) and ``segmenters.png`` (mIoU against milliseconds per
image, and per-class IoU), and per model ``<name>_miou`` and ``<name>_ms_per_image``.
"""

from __future__ import annotations

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import StageResult
from cnn_apps.stages.config_study import config_study
from cnn_apps.stages.tables import csv_table, markdown_table
from cnn_apps.tasks.inputs import dataset_label

COLUMNS = (
    "segmenter",
    "test_miou",
    "test_pixel_accuracy",
    "test_mean_accuracy",
    "test_fw_iou",
    "ms_per_image",
    "images_per_s",
    "params",
    "train_seconds",
    "epochs",
    "train_run",
    "evaluate_run",
)
FCN_PAPER = {"fcn32s": 59.4, "fcn16s": 62.4, "fcn8s": 62.7}  # mean IU, PASCAL VOC 2011 val (Table 2)


def segmenter_study(config: Config, from_run: str | None = None) -> StageResult:
    import mlflow

    rows, per_class = [], {}
    with config_study(config, "segmentation", list(config.study.segmenters), "segmenters", from_run) as (
        parent,
        spec,
        children,
    ):
        for name, trained, evaluated, metrics, train_metrics in children():
            rows.append(
                {
                    "segmenter": name,
                    "test_miou": metrics["test_miou"],
                    "test_pixel_accuracy": metrics["test_pixel_accuracy"],
                    "test_mean_accuracy": metrics.get("test_mean_accuracy", float("nan")),
                    "test_fw_iou": metrics.get("test_fw_iou", float("nan")),
                    "ms_per_image": metrics["test_latency_ms"],
                    "images_per_s": metrics["test_images_per_s"],
                    "params": int(train_metrics.get("params_total", 0)),
                    "train_seconds": train_metrics.get("train_seconds", 0.0),
                    "epochs": int(train_metrics.get("epochs_trained", 0)),
                    "train_run": trained.run_id,
                    "evaluate_run": evaluated.run_id,
                }
            )
            per_class[name] = {
                k.removeprefix("test_iou_"): v for k, v in metrics.items() if k.startswith("test_iou_")
            }
            mlflow.log_metrics(
                {f"{name}_miou": metrics["test_miou"], f"{name}_ms_per_image": metrics["test_latency_ms"]}
            )
        title = f"Segmenters on {dataset_label(spec)}"
        mlflow.log_text(csv_table(rows, COLUMNS), "segmenters.csv")
        mlflow.log_text(
            markdown_table(rows, title=title, columns=COLUMNS) + fcn_order_note(rows), "segmenters.md"
        )
        tracking.log_figure(_plot(rows, per_class), "segmenters.png")
        best = max(rows, key=lambda r: r["test_miou"])
        return StageResult(
            parent.info.run_id,
            "study",
            {
                "study": "segmentation",
                "children": len(rows),
                "best": best["segmenter"],
                **{f"{r['segmenter']}_miou": round(r["test_miou"], 4) for r in rows},
            },
            extra={"rows": rows},
        )


def fcn_order_note(rows) -> str:
    """Whether FCN-32s < FCN-16s < FCN-8s held here, as in the paper (only the FCNs measured)."""
    measured = {r["segmenter"]: r["test_miou"] for r in rows if r["segmenter"] in FCN_PAPER}
    if len(measured) < 2:
        return ""
    order = [n for n in FCN_PAPER if n in measured]
    holds = all(measured[a] < measured[b] for a, b in zip(order, order[1:]))
    lines = [
        "",
        "FCN paper (mean IU, VOC 2011 val): " + ", ".join(f"{n} {FCN_PAPER[n]}" for n in order) + ".",
        "Here (test mIoU x 100): " + ", ".join(f"{n} {100 * measured[n]:.1f}" for n in order) + ".",
        f"The paper's order {' < '.join(order)} {'holds' if holds else 'does not hold'} here.",
        "",
    ]
    return "\n".join(lines)


def _plot(rows, per_class):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        left.scatter(r["ms_per_image"], r["test_miou"], s=40)
        left.annotate(
            r["segmenter"],
            (r["ms_per_image"], r["test_miou"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    left.set_xscale("log")
    left.set_xlabel("ms per image at batch 1 (log scale)")
    left.set_ylabel("test mIoU")
    left.grid(alpha=0.3)
    left.set_title("accuracy against speed")
    classes = sorted({c for v in per_class.values() for c in v})
    width = 0.8 / max(len(per_class), 1)
    for i, (name, ious) in enumerate(per_class.items()):
        right.bar(
            np.arange(len(classes)) + i * width, [ious.get(c, np.nan) for c in classes], width, label=name
        )
    right.set_xticks(np.arange(len(classes)) + 0.4 - width / 2)
    right.set_xticklabels(classes, rotation=30, fontsize=8)
    right.set_ylabel("test IoU")
    right.set_ylim(0, 1.05)
    right.legend(fontsize=7)
    right.set_title("per-class IoU")
    fig.tight_layout()
    return fig
