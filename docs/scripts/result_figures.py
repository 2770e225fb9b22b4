"""The docs' figures, drawn from the committed result files under ``benchmarks/results/`` with
the package's own plotting (the figures the runs logged, redrawn from their numbers):

* ``docs/img/transfer_fashion_split.png`` and ``docs/img/layer_curve_fashion_split.png``: the
  split-class transfer study (``benchmarks/study.py transfer --config
  pipelines/configs/transfer_fashion_split.yaml``).

    python docs/scripts/result_figures.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"


def transfer_figures(stem: str = "transfer_fashion_split", dataset: str = "Fashion-MNIST 5-9") -> list[Path]:
    """The study's two figures; the scratch children rerun with their own budget
    (``study_transfer_<stem>_scratch.json``, when present) join the first as their own line."""
    from cnn_apps.stages.transfer_study import layer_curve_figure, summary_figure

    r = json.loads((RESULTS / f"study_transfer_{stem}.json").read_text())
    summary = r["tables"]["summary.csv"]
    rerun_path = RESULTS / f"study_transfer_{stem}_scratch.json"
    if rerun_path.is_file():
        rerun = json.loads(rerun_path.read_text())["tables"]["summary.csv"]
        summary = [
            *[row for row in summary if row["mode"] != "scratch"],
            *[{**row, "mode": "scratch (its budget)"} for row in rerun if row["mode"] == "scratch"],
            *[{**row, "mode": "scratch (patience 5)"} for row in summary if row["mode"] == "scratch"],
        ]
    short = stem.removeprefix("transfer_")
    figures = {f"transfer_{short}.png": summary_figure(summary, "classification", dataset)}
    curve = r["tables"].get("layer_curve_summary.csv")
    if curve:  # the dashed reference: scratch at the largest size (the curve's 100 per class)
        largest = max(row["examples_per_class"] for row in r["tables"]["summary.csv"])
        base = [
            row["test_accuracy_mean"]
            for row in r["tables"]["summary.csv"]
            if row["mode"] == "scratch" and row["examples_per_class"] == largest
        ]
        figures[f"layer_curve_{short}.png"] = layer_curve_figure(curve, dataset, base[0] if base else None)
    IMG.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        figure.savefig(IMG / name, dpi=100, bbox_inches="tight")
        written.append(IMG / name)
    return written


def main() -> None:
    for path in transfer_figures():
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
