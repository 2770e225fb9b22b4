"""Run one of the package's studies the way a user would, and keep its table with its provenance.

Runs ``cnn-apps study KIND --config C`` into a private MLflow store, then writes the parent run's
result table (its ``results.csv``, ``ladder.csv`` or ``segmenters.csv`` artifact, one row per
child), every other CSV table it logged (the transfer study's ``summary.csv`` and layer curve)
and every child run's final metrics, parameters and tags to
``benchmarks/results/study_<kind>_<config stem>.json`` with the config, the overrides, the
commit, the date and the machine. For ``detectors`` it then times the trained ladder side by
side (``benchmarks/ladder.py --study <parent>``, ``benchmarks/results/ladder.json``). The docs'
tables are generated from those files (``benchmarks/tables.py``).

    python benchmarks/study.py regularization --config pipelines/configs/fashion_mnist_regularization.yaml
    python benchmarks/study.py detectors --config pipelines/configs/shapes_detector_ladder.yaml

``--store DIR`` runs in (and keeps) that MLflow store instead of a temporary one, so that a transfer
study can reuse a source trained there by an earlier call (``--set study.source_run=RUN_ID``); the
result is the study that this call started.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TABLE_ARTIFACTS = ("results.csv", "ladder.csv", "segmenters.csv")
CHILD_PARAMS = ("model.architecture", "model.backbone", "data.image_size", "training.epochs")


def _number(text: str):
    """A CSV cell as the number it was written from, when it is one."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _csv_rows(client, run_id: str, name: str) -> list[dict]:
    text = Path(client.download_artifacts(run_id, name)).read_text(encoding="utf-8")
    return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _tables(client, run_id: str) -> tuple[str, list[dict], dict[str, list[dict]]]:
    """The parent's main table (the first of TABLE_ARTIFACTS it logged) and every other CSV it logged."""
    names = sorted(a.path for a in client.list_artifacts(run_id))
    main = next((name for name in TABLE_ARTIFACTS if name in names), None)
    if main is None:
        raise SystemExit(f"the study run {run_id} logged none of {', '.join(TABLE_ARTIFACTS)}: {names}")
    extra = {n: _csv_rows(client, run_id, n) for n in names if n.endswith(".csv") and n != main}
    return main, _csv_rows(client, run_id, main), extra


def measure(kind: str, config: str, overrides: list[str], store: Path) -> dict:
    """Run the study; its parent's table and each child run's metrics, keyed by run id."""
    import time

    import mlflow

    from cnn_apps.cli import main as cli

    started_ms = int(time.time() * 1000)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    sets = [*overrides, f"tracking.uri={uri}", f"export.dir={store / 'exports'}"]
    args = ["study", kind, "--config", config, *[a for s in sets for a in ("--set", s)]]
    if cli(args) != 0:
        raise SystemExit(f"cnn-apps {' '.join(args)} failed")
    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=5000)
    parents = [
        r
        for r in runs
        if r.data.tags.get("stage") == "study"
        and "mlflow.parentRunId" not in r.data.tags
        and r.info.start_time >= started_ms
    ]
    if len(parents) != 1:
        raise SystemExit(f"expected one study run started by this call in {store}, found {len(parents)}")
    parent = parents[0]
    artifact, rows, extra = _tables(client, parent.info.run_id)
    children = {}
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
            continue
        children[r.info.run_id] = {
            "name": r.data.tags.get("mlflow.runName"),
            "stage": r.data.tags.get("stage"),
            "setting": r.data.tags.get("setting"),
            "params": {k: r.data.params[k] for k in CHILD_PARAMS if k in r.data.params},
            "metrics": dict(sorted(r.data.metrics.items())),
        }
    return {
        "study": kind,
        "parent_run": parent.info.run_id,
        "parent_metrics": dict(sorted(parent.data.metrics.items())),
        "table_artifact": artifact,
        "rows": rows,
        "tables": extra,
        "children": children,
        "uri": uri,
    }


def main(argv=None) -> dict:
    from cnn_apps.stages.study import STUDIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=STUDIES)
    parser.add_argument("--config", required=True, help="a shipped study config (pipelines/configs/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    parser.add_argument("--out", default=None, help="JSON path (default results/study_<kind>_<stem>.json)")
    parser.add_argument("--no-ladder-timing", action="store_true", help="detectors: no benchmarks/ladder.py")
    parser.add_argument(
        "--store",
        default=None,
        help="an MLflow store folder to run in and keep (default: a temporary one); a transfer study "
        "can then reuse a source trained there (--set study.source_run=RUN_ID)",
    )
    args = parser.parse_args(argv)

    from provenance import write_result

    config = Path(args.config)
    shown = config.resolve().relative_to(ROOT) if config.resolve().is_relative_to(ROOT) else config
    kept = contextlib.nullcontext(args.store) if args.store else None
    with kept or tempfile.TemporaryDirectory(prefix="study-") as tmp:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        result = measure(args.kind, str(config), args.overrides, Path(tmp))
        uri = result.pop("uri")
        payload = {"config": str(shown), "overrides": args.overrides, **result}
        path = write_result(f"study_{args.kind.replace('-', '_')}_{config.stem}", payload, args.out)
        print(f"{args.kind} on {config.stem}: {path}")
        if args.kind == "detectors" and not args.no_ladder_timing:
            import ladder

            sets = [a for s in [*args.overrides, f"tracking.uri={uri}"] for a in ("--set", s)]
            ladder.main(["--study", result["parent_run"], "--config", str(config), *sets])
    return payload


if __name__ == "__main__":
    main()
