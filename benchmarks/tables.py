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
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def docs() -> list[Path]:
    """The Markdown files that may hold result blocks: README.md and the docs site's pages."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the benchmark that writes it")
    return json.loads(path.read_text())


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _source_line(results: list) -> str:
    seen = []
    for r in results:
        p = r["provenance"]
        item = f"commit {p['commit'][:12]}, {p['date'][:10]}, {p['machine']['cpu']} x{p['machine']['cores']}"
        if item not in seen:
            seen.append(item)
    return f"\n_Measured: {'; '.join(seen)}._\n"


DETECTION_ZOO = ("shapes_yolo", "shapes_ssd", "shapes_faster_rcnn", "shapes_yolov8")


def detection_zoo() -> str:
    """One row per detector config: ``benchmarks/zoo.py --config pipelines/configs/<config>``."""
    rows = [load(f"zoo_{name}") for name in DETECTION_ZOO]
    lines = [
        "| config | model | params | input | test mAP50 | VOC07 | COCO AP | COCO AP75 | epochs (best) "
        "| training | img/s | latency |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        t, m = r["train"], r["test"]
        epochs = f"{int(t['epochs_trained'])} ({int(t['best_epoch']) + 1})"
        model = r["architecture"]  # the backbone key means nothing to keras-cv's YOLOv8: not shown
        lines.append(
            f"| `{Path(r['config']).name}` | {model} | {int(t['params_total']):,} | {r['image_size']} "
            f"| {_number(m['test_map50'])} | {_number(m['test_map50_voc07'])} "
            f"| {_number(m['test_coco_ap'])} | {_number(m['test_coco_ap75'])} | {epochs} "
            f"| {t['train_seconds']:,.0f} s | {m['test_images_per_s']:,.0f} | {m['test_latency_ms']:.1f} ms |"
        )
    return "\n".join(lines) + "\n" + _source_line(rows)


def coco_eval() -> str:
    """``benchmarks/coco_eval.py``: the NumPy COCOeval against pycocotools."""
    r = load("coco_eval")
    c = r["config"]
    lines = [
        "| images | classes | detections per image | NumPy | pycocotools | speed-up | max stat difference |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {c['images']} | {c['classes']} | {c['detections_per_image']} | {r['numpy_seconds']:.2f} s "
        f"| {r['pycocotools_seconds']:.2f} s | {r['speedup']:.2f}x | {r['max_abs_stat_difference']:.1e} |",
    ]
    return "\n".join(lines) + "\n" + _source_line([r])


TABLES = {"detection_zoo": detection_zoo, "coco_eval": coco_eval}


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
