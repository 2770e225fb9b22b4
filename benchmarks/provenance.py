"""Where a result came from: every benchmark and measured run writes its JSON through
:func:`write_result`, which adds the commit, the date, the machine and the command line, so a
figure in the docs can be traced to the run that measured it (``benchmarks/results/*.json``,
committed; the docs' tables are generated from them by ``benchmarks/tables.py``)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def commit() -> str:
    """The checkout's commit, ``-dirty`` when it has uncommitted changes (``unknown`` without git):
    the same stamp as the MLflow runs' ``git_commit`` tag, except that result files rewritten
    under ``benchmarks/results/`` (by an earlier benchmark of the same queue) do not count: they
    are outputs, not code that ran."""
    import subprocess

    from cnn_apps.tracking import git_commit

    stamp = git_commit()
    if not stamp.endswith("-dirty"):
        return stamp
    try:
        changed = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benchmarks/results",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return stamp
    return stamp if changed else stamp.removesuffix("-dirty")


def machine() -> dict:
    """The CPU, its core count and the Python and library versions that matter for speed."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "pycocotools", "torch"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), **versions}


def provenance() -> dict:
    return {
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def write_result(name: str, payload: dict, out: Path | None = None) -> Path:
    """Write ``{"provenance": ..., **payload}`` to ``benchmarks/results/<name>.json`` (or ``out``)."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance(), **payload}, indent=2, default=float) + "\n")
    return path
