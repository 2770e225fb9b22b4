"""The detector speed ladder (``cnn-apps study detectors``): every detector named in
``study.detectors`` trained and evaluated on the same prepared images, as nested runs of one
parent, with test time per image (proposals included) and mAP side by side.

Each entry of ``study.detectors`` is a detector config file (``pipelines/configs/*.yaml``),
made a child by :mod:`cnn_apps.stages.config_study` (shared data, input size and
post-processing; its own ``model`` and ``training``). The parent logs ``ladder.csv``,
``ladder.md`` and ``ladder.png`` (mAP against seconds per image, log scale) and, per
detector, ``<name>_map50``, ``<name>_ms_per_image``, ``<name>_speedup`` (against the
first detector, R-CNN in the shipped ladder).
"""

from __future__ import annotations

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.common import StageResult
from cnn_apps.stages.config_study import config_study
from cnn_apps.stages.tables import csv_table, markdown_table
from cnn_apps.tasks.inputs import dataset_label

COLUMNS = (
    "detector",
    "test_map50",
    "test_coco_ap",
    "ms_per_image",
    "proposal_ms",
    "speedup",
    "train_seconds",
    "train_run",
    "evaluate_run",
)
# the course's table: test time per image of the R-CNN lineage and its speed-up
COURSE = {"rcnn": (50.0, 1), "fast_rcnn": (2.0, 25), "faster_rcnn": (0.2, 250)}


def time_per_image_ms(metrics: dict) -> tuple[float, float]:
    """(ms per image at batch 1, proposals included; the proposals' share) from an evaluate
    run's ``test_latency_ms``, the course's "test time per image": it counts selective search
    for every detector that needs it (R-CNN and SPP-net time their whole path; Fast R-CNN adds
    the search's measured time to its network's)."""
    if "test_latency_ms" not in metrics:
        raise ConfigError("the evaluate run logged no test_latency_ms (evaluated before the ladder existed?)")
    return float(metrics["test_latency_ms"]), float(metrics.get("test_proposal_ms", 0.0))


def ladder_study(config: Config, from_run: str | None = None) -> StageResult:
    import mlflow

    rows = []
    with config_study(config, "detectors", list(config.study.detectors), "detectors", from_run) as (
        parent,
        spec,
        children,
    ):
        for name, trained, evaluated, metrics, train_metrics in children():
            total, proposal = time_per_image_ms(metrics)
            rows.append(
                {
                    "detector": name,
                    "test_map50": metrics["test_map50"],
                    "test_coco_ap": metrics.get("test_coco_ap", float("nan")),
                    "ms_per_image": total,
                    "proposal_ms": proposal,
                    "train_seconds": train_metrics.get("train_seconds", 0.0),
                    "train_run": trained.run_id,
                    "evaluate_run": evaluated.run_id,
                }
            )
        base = rows[0]["ms_per_image"]
        for row in rows:
            row["speedup"] = base / max(row["ms_per_image"], 1e-9)
            mlflow.log_metrics(
                {
                    f"{row['detector']}_map50": row["test_map50"],
                    f"{row['detector']}_ms_per_image": row["ms_per_image"],
                    f"{row['detector']}_speedup": row["speedup"],
                }
            )
        mlflow.log_text(csv_table(rows, COLUMNS), "ladder.csv")
        mlflow.log_text(
            markdown_table(rows, title=f"Detector ladder on {dataset_label(spec)}", columns=COLUMNS)
            + _course_note(rows),
            "ladder.md",
        )
        tracking.log_figure(_plot(rows), "ladder.png")
        return StageResult(
            parent.info.run_id,
            "study",
            {
                "study": "detectors",
                "children": len(rows),
                **{f"{r['detector']}_speedup": round(r["speedup"], 1) for r in rows},
            },
            extra={"rows": rows},
        )


def _course_note(rows) -> str:
    lines = [
        "",
        "Course table (test time per image, speed-up): R-CNN 50 s (1x), Fast R-CNN 2 s (25x), "
        "Faster R-CNN 0.2 s (250x).",
        "",
    ]
    for r in rows:
        if r["detector"] in COURSE:
            seconds, speedup = COURSE[r["detector"]]
            lines.append(
                f"- {r['detector']}: {r['ms_per_image'] / 1000:.3f} s here, {r['speedup']:.1f}x "
                f"(course: {seconds} s, {speedup}x)"
            )
    return "\n".join(lines) + "\n"


def _plot(rows):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["ms_per_image"] / 1000, r["test_map50"], s=40)
        ax.annotate(
            f"{r['detector']} ({r['speedup']:.{1 if r['speedup'] < 10 else 0}f}x)",
            (r["ms_per_image"] / 1000, r["test_map50"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("test time per image, proposals included (s, log scale)")
    ax.set_ylabel("test mAP50")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("detector ladder: accuracy against speed")
    fig.tight_layout()
    return fig
