"""The docs' result tables, generated from the committed JSON under ``benchmarks/results/``.

A table lives in a Markdown file between two markers::

    <!-- results: detection_zoo -->
    ... generated, do not edit ...
    <!-- /results -->

``python benchmarks/tables.py`` rewrites every such block of README.md and of the pages under
``docs/`` from their JSON files; ``--check`` only compares and exits 1 naming the stale tables
(``tests/test_result_tables.py`` runs the same check, so a figure typed by hand, or a JSON
re-measured without regenerating the docs, fails the suite). Each table ends with a line naming
its files' commits and dates.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from table_blocks import ROOT
from tables_models import (
    backbones,
    classifier_zoo,
    coco_eval,
    detection_zoo,
    model_sizes,
    segmentation_zoo,
    yolo_heads,
)
from tables_speed import (
    backbone_speed,
    batch_norm,
    cpu_peers,
    data_pipeline,
    demo_time,
    detector_speed,
    fold_batch_norm,
    ladder_paper,
    ladder_timing,
    pointwise_conv,
)
from tables_studies import (
    depth_study,
    detector_ladder,
    learning_curve,
    regularization_study,
    segmenter_study,
    transfer_far_domain,
    transfer_layer_curve,
    transfer_pretext,
    transfer_split,
)


def docs() -> list[Path]:
    """The Markdown files that may hold result blocks: README.md and the docs site's pages."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


TABLES = {
    "model_sizes": model_sizes,
    "detection_zoo": detection_zoo,
    "coco_eval": coco_eval,
    "classifier_zoo": classifier_zoo,
    "backbones": backbones,
    "backbone_speed": backbone_speed,
    "detector_speed": detector_speed,
    "data_pipeline": data_pipeline,
    "segmenter_study": segmenter_study,
    "cpu_peers": cpu_peers,
    "ladder_paper": ladder_paper,
    "batch_norm": batch_norm,
    "pointwise_conv": pointwise_conv,
    "fold_batch_norm": fold_batch_norm,
    "transfer_split": transfer_split,
    "transfer_layer_curve": transfer_layer_curve,
    "regularization_study": regularization_study,
    "learning_curve": learning_curve,
    "depth_study": depth_study,
    "yolo_heads": yolo_heads,
    "detector_ladder": detector_ladder,
    "ladder_timing": ladder_timing,
    "demo_time": demo_time,
    "transfer_far_domain": transfer_far_domain,
    "transfer_pretext": transfer_pretext,
    "segmentation_zoo": segmentation_zoo,
}


def render(text: str) -> tuple[str, list]:
    """``text`` with every results block regenerated, and the names of the blocks that changed."""
    changed = []

    def replace(match):
        name = match.group("name")
        if name not in TABLES:
            raise SystemExit(f"unknown results table {name!r}; known: {', '.join(TABLES)}")
        body = TABLES[name]()
        if body != match.group("body"):
            changed.append(name)
        return f"{match.group(1)}{body}{match.group(4)}"

    return BLOCK.sub(replace, text), changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    stale = []
    for doc in docs():
        text = doc.read_text(encoding="utf-8")
        new, changed = render(text)
        stale += [f"{doc.relative_to(ROOT)}: {name}" for name in changed]
        if changed and not args.check:
            doc.write_text(new, encoding="utf-8")
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
