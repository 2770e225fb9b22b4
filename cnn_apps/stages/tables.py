"""The studies' result tables: one row per child run, as CSV and as Markdown."""

from __future__ import annotations

import csv
import io


def fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(rows, columns, title: str = "") -> str:
    """``rows`` (dicts) as a Markdown table of ``columns`` (``run_id`` left out)."""
    cols = [c for c in columns if c != "run_id"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows, columns) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows([{k: fmt(r[k]) for k in columns} for r in rows])
    return buf.getvalue()
