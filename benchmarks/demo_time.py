"""How long ``make demo`` takes a newcomer: a fresh clone of this repository, then ``make demo``
as the README says, timed in its two parts (``make install``: the virtual environment and the
package; then ``cnn-apps all``: prepare -> train -> evaluate -> export) and split by stage from
the end times of the MLflow runs the demo logs (see :func:`stage_seconds`).

The clone is made from the repository this script sits in (its committed HEAD, like CI's
clean clone), in a temporary folder that is removed afterwards (``--keep`` keeps it). pip's
download cache is whatever this machine has: say so when quoting the install time. Writes
``benchmarks/results/demo_time.json``.

    python benchmarks/demo_time.py [--make-args "CONFIG=..."] [--keep] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ("prepare", "train", "evaluate", "export")


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    """(seconds, the command's output) of one command; its failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}) in {cwd}:\n{tail}")
    return seconds, done.stdout


def stage_seconds(clone: Path, started_ms: float) -> dict:
    """{stage: seconds} of the pipeline, from the stage runs the demo logged in the clone's
    ./mlruns. The stages run one after another in one process, and some (evaluate, export) do
    their work before they open their MLflow run, so a run's own duration undercounts its stage:
    each stage is timed from the end of the previous stage's run to the end of its own, and the
    first from ``started_ms`` (when ``make demo`` was launched: it includes Python's and
    TensorFlow's start-up)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    ends = {}
    for run in client.search_runs(experiments, max_results=100):
        stage = run.data.tags.get("stage")
        if stage in STAGES and run.info.end_time:
            ends[stage] = max(ends.get(stage, 0), run.info.end_time)
    out, previous = {}, started_ms
    for stage in sorted(ends, key=ends.get):
        out[stage] = round((ends[stage] - previous) / 1000.0, 1)
        previous = ends[stage]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-args", default="", help="extra make arguments, e.g. CONFIG=...")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    parser.add_argument("--out", default=None, help="JSON path (default results/demo_time.json)")
    args = parser.parse_args(argv)

    from provenance import write_result

    tmp = Path(tempfile.mkdtemp(prefix="demo-time-"))
    clone = tmp / "cnn-apps"
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI")
    }
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    make_args = shlex.split(args.make_args)
    install_s, _ = timed(["make", "install", *make_args], clone, env)
    started_ms = time.time() * 1000.0
    all_s, output = timed(["make", "demo", *make_args], clone, env)  # install is now up to date
    payload = {
        "benchmark": "demo_time",
        "make_args": make_args,
        "install_seconds": round(install_s, 1),
        "pipeline_seconds": round(all_s, 1),
        "total_seconds": round(install_s + all_s, 1),
        "stage_seconds": stage_seconds(clone, started_ms),
        "pip_cache": "warm" if Path.home().joinpath(".cache", "pip").is_dir() else "cold",
        "output_tail": output.splitlines()[-12:],
    }
    path = write_result("demo_time", payload, args.out)
    print(
        f"make demo: {payload['total_seconds']:.0f} s (install {install_s:.0f} s, pipeline {all_s:.0f} s: "
        f"{payload['stage_seconds']}); wrote {path}"
    )
    if args.keep:
        print(f"the clone: {clone}")
    else:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return payload


if __name__ == "__main__":
    main()
