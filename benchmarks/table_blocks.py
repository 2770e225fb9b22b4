"""What every generated results table is made of: the committed JSON under
``benchmarks/results/`` (:func:`load`), the Markdown table with its provenance line
(:func:`markdown`) and the cell formats. The renderers are in ``tables_models.py``,
``tables_studies.py`` and ``tables_speed.py``; ``tables.py`` writes them into the docs."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the benchmark that writes it")
    return json.loads(path.read_text())


def _source_line(results: list) -> str:
    seen = []
    for r in results:
        p = r["provenance"]
        item = f"commit {p['commit'][:12]}, {p['date'][:10]}, {p['machine']['cpu']} x{p['machine']['cores']}"
        if item not in seen:
            seen.append(item)
    return f"\n_Measured: {'; '.join(seen)}._\n"


def markdown(header: str, rows: list, results: list, *, intro: str = "", note: str = "") -> str:
    """A generated block: ``intro``, the table, ``note`` and the line naming where ``results`` were
    measured. ``header`` names the columns, ``|``-separated; a name ending in ``:`` is a
    right-aligned (number) column. ``rows`` are lists of cells."""
    names = [h.strip() for h in header.split("|")]
    lines = [
        "| " + " | ".join(n.removesuffix(":") for n in names) + " |",
        "| " + " | ".join("---:" if n.endswith(":") else "---" for n in names) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in cells) + " |" for cells in rows]
    body = "\n".join(lines) + "\n"
    return (f"{intro}\n\n" if intro else "") + body + (f"\n{note}\n" if note else "") + _source_line(results)


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _latency(ms) -> str:
    return "n/a" if ms is None else f"{ms:.1f} ms"


NAMES = {
    "rcnn": "R-CNN",
    "yolo": "YOLO v1",
    "ssd300": "SSD300",
    "sppnet": "SPP-net",
    "fast_rcnn": "Fast R-CNN",
    "faster_rcnn": "Faster R-CNN",
    "yolo_v1": "YOLO v1",
    "ssd": "SSD",
    "fcn32s": "FCN-32s",
    "fcn16s": "FCN-16s",
    "fcn8s": "FCN-8s",
    "segnet": "SegNet",
    "unet": "U-Net",
}


def _name(key) -> str:
    return NAMES.get(str(key), str(key))


def _study(kind: str, config: str) -> dict:
    return load(f"study_{kind}_{config}")
