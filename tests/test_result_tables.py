"""The README's result tables are generated from committed JSON under benchmarks/results/, written
by the runs that measured them (config, commit, date, machine): a figure typed by hand, or a
re-measured JSON whose table was not regenerated, fails here."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402


def test_every_readme_table_matches_its_json():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    _, stale = tables.render(text)
    assert not stale, f"regenerate with `python benchmarks/tables.py`: {stale}"
    found = [m.group("name") for m in tables.BLOCK.finditer(text)]
    assert sorted(found) == sorted(tables.TABLES), "every generated table appears once in the README"


def test_a_figure_typed_by_hand_is_caught():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
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
        if path.stem.startswith("zoo_") or path.stem in ("coco_eval",):
            assert f"benchmarks/results/{path.name}" in tracked, f"{path.name} is not committed"
