"""Measure one model of the zoo the way a user would, and keep the numbers with their provenance.

Runs ``cnn-apps all`` (prepare -> train -> evaluate -> export) for a shipped config into a
private MLflow store, then writes what the docs' result tables show (the evaluate run's
``test_*`` metrics and the train run's epochs, best epoch, seconds and parameters) to
``benchmarks/results/zoo_<config stem>.json`` with the config, the overrides, the commit, the
date and the machine. The tables are generated from those files (``benchmarks/tables.py``).

    python benchmarks/zoo.py --config pipelines/configs/shapes_yolo.yaml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TRAIN_KEYS = ("epochs_trained", "best_epoch", "train_seconds", "params_total")


def measure(config: str, overrides: list[str], store: Path) -> dict:
    """Run the pipeline; the train and evaluate runs' metrics and the resolved config."""
    import mlflow

    from cnn_apps.cli import main as cli
    from cnn_apps.config import load_config

    uri = f"sqlite:///{store / 'mlflow.db'}"
    sets = [*overrides, f"tracking.uri={uri}", f"export.dir={store / 'exports'}"]
    args = ["all", "--config", config, *[a for s in sets for a in ("--set", s)]]
    if cli(args) != 0:
        raise SystemExit(f"cnn-apps {' '.join(args)} failed")
    resolved = load_config(Path(config), sets)
    client = mlflow.MlflowClient(uri)
    experiment = resolved.tracking.experiment or (
        "classification" if resolved.task == "pretext" else resolved.task
    )
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    train, evaluate = by_stage["train"].data, by_stage["evaluate"].data
    return {
        "task": resolved.task,
        "architecture": resolved.model.architecture,
        "backbone": resolved.model.backbone,
        "image_size": resolved.data.image_size,
        "train": {k: train.metrics[k] for k in TRAIN_KEYS if k in train.metrics},
        "test": {k: v for k, v in evaluate.metrics.items() if k.startswith("test_")},
        "evaluate_resolution": evaluate.params.get("evaluate.resolution"),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", required=True, help="a shipped config, e.g. pipelines/configs/shapes_ssd.yaml"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/zoo_<stem>.json)")
    args = parser.parse_args(argv)

    from provenance import write_result

    config = Path(args.config)
    with tempfile.TemporaryDirectory(prefix="zoo-") as tmp:
        result = measure(str(config), args.overrides, Path(tmp))
    shown = config.resolve().relative_to(ROOT) if config.resolve().is_relative_to(ROOT) else config
    payload = {"config": str(shown), "overrides": args.overrides, **result}
    path = write_result(f"zoo_{config.stem}", payload, args.out)
    print(f"{config.stem}: {path}")
    return payload


if __name__ == "__main__":
    main()
