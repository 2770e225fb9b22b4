"""The docs' result tables (README.md and the pages under docs/) are generated from committed
JSON under benchmarks/results/, written by the runs that measured them (config, commit, date,
machine): a figure typed by hand, or a re-measured JSON whose table was not regenerated, fails
here."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402


def _texts():
    return {doc.relative_to(ROOT): doc.read_text(encoding="utf-8") for doc in tables.docs()}


def test_every_docs_table_matches_its_json():
    found = []
    for doc, text in _texts().items():
        _, stale = tables.render(text)
        assert not stale, f"{doc}: regenerate with `python benchmarks/tables.py`: {stale}"
        found += [m.group("name") for m in tables.BLOCK.finditer(text)]
    assert sorted(found) == sorted(tables.TABLES), "every generated table appears once in the docs"


def test_a_figure_typed_by_hand_is_caught():
    text = next(t for t in _texts().values() if tables.BLOCK.search(t))
    block = next(tables.BLOCK.finditer(text))
    body = block.group("body")
    number = re.search(r"\d+\.\d+", body).group(0)
    edited = text.replace(body, body.replace(number, f"{float(number) + 0.1:.3f}", 1))
    assert tables.render(edited)[1] == [block.group("name")]


def test_result_files_are_committed_with_their_provenance():
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    tracked = subprocess.run(
        ["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    for path in files:
        data = json.loads(path.read_text())
        p = data["provenance"]
        assert re.fullmatch(r"[0-9a-f]{40}", p["commit"]), f"{path.name}: measured on a dirty or unknown tree"
        assert p["date"] and p["machine"]["cpu"] and p["machine"]["cores"], path.name
        assert f"benchmarks/results/{path.name}" in tracked, f"{path.name} is not committed"
