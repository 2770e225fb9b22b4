"""The ``cnn-apps`` command.

    cnn-apps prepare  --config C [--set k=v ...]
    cnn-apps train    --config C [--set k=v ...] [--from-run PREPARE_RUN]
    cnn-apps train    --resume TRAIN_RUN                (continue a killed run)
    cnn-apps finetune [--config C] [--set k=v ...] --from-run TRAIN_RUN
    cnn-apps evaluate [--config C] [--set k=v ...] --from-run TRAIN_RUN
    cnn-apps export   [--config C] [--set k=v ...] --from-run TRAIN_RUN
    cnn-apps all      --config C [--set k=v ...]     (prepare, train, evaluate, export)
    cnn-apps study    {regularization,learning-curve,depth,transfer,detectors,segmentation}
                      --config C [--from-run PREPARE_RUN]
    cnn-apps models                                  (the backbone zoo: parameters, FLOPs)
    cnn-apps predict  --model M --input I [--output results.jsonl] [--coco-json F] [--masks DIR]
                      (M: an exports folder, runs:/..., models:/..., or a TF Serving URL)
    cnn-apps serve    --model models:/NAME@champion | --from-run TRAIN_RUN   (MLflow's scoring API)
    cnn-apps promote  NAME VERSION [--alias champion]  (move a registered model's alias)

Without ``--config``, a stage that reads another run starts from that run's
config. Every command that makes an MLflow run prints ``run_id: <id>`` last.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import shlex
import signal
import sys

STAGES = ("prepare", "train", "finetune", "evaluate", "export", "all")
STUDY_KINDS = ("regularization", "learning-curve", "depth", "transfer", "detectors", "segmentation")
NEEDS_RUN = ("finetune", "evaluate", "export")


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnn-apps",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--unsafe-load",
        dest="unsafe_load",
        action="store_true",
        help="let .keras models run code they carry (Lambda layers); only for files you trust",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "prepare": "build/scan a dataset and record it",
        "train": "train a model (on a prepare run, or prepares first)",
        "finetune": "continue training a trained model, possibly on new data",
        "evaluate": "test metrics, confusion matrix and speed of a trained model",
        "export": "SavedModel for TF Serving + MLflow registry",
        "all": "prepare, train, evaluate and export in a row",
    }
    for stage in STAGES:
        p = sub.add_parser(stage, help=helps[stage])
        add_stage_arguments(p, stage)
    p = sub.add_parser("study", help="nested runs comparing settings: " + ", ".join(STUDY_KINDS))
    p.add_argument("kind", choices=STUDY_KINDS)
    add_stage_arguments(p, "study")
    sub.add_parser(
        "models", help="list the registered backbones (parameters, FLOPs), detectors and segmenters"
    )
    from cnn_apps.serving.predict import add_predict_arguments

    add_predict_arguments(
        sub.add_parser(
            "predict", help="predict image files with an export, an MLflow model or a TF Serving URL"
        )
    )
    from cnn_apps.serving.model_server import add_serve_arguments

    add_serve_arguments(
        sub.add_parser(
            "serve",
            help="serve a registered model with MLflow's scoring API and request limits "
            "(--from-run: export it first)",
        )
    )
    p = sub.add_parser("promote", help="point a registered model's alias (champion) at a version")
    p.add_argument("name", help="the registered model (export.name)")
    p.add_argument("version", help="the version to promote")
    p.add_argument(
        "--alias",
        default="champion",
        help="the alias to move (default: champion; 'latest' is MLflow's own and always the newest version)",
    )
    p.add_argument("--tracking-uri", dest="tracking_uri", help="default: MLFLOW_TRACKING_URI, else ./mlruns")
    return parser


def add_stage_arguments(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--config", help="experiment YAML (pipelines/configs/*.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. training.epochs=3 (repeatable)",
    )
    if stage in ("train", "study", *NEEDS_RUN):
        p.add_argument(
            "--from-run",
            dest="from_run",
            required=stage in ("evaluate", "export"),
            metavar="RUN_ID",
            help="the MLflow run whose output this stage consumes",
        )
    if stage == "train":
        p.add_argument(
            "--resume",
            metavar="RUN_ID",
            help="continue a killed train run from its last finished "
            "epoch (same MLflow run, same config; the result equals an uninterrupted run's)",
        )


def resolve_config(stage: str, config_path: str | None, overrides: list[str], from_run: str | None):
    """The config file, or (for stages reading a run) the source run's config; then overrides."""
    from cnn_apps import config as cfg

    if config_path is None and from_run and stage in (*NEEDS_RUN, "resume"):
        from cnn_apps import tracking

        current = cfg.load_config(None, overrides)  # the tracking URI may come from overrides
        tracking.setup(current)
        tracking.get_run(from_run)  # "run X not found in <store>" before looking for its config
        values = tracking.load_run_config(from_run)
        # the store that holds the run is the one to use (the logged config has secrets masked)
        values.setdefault("tracking", {})["uri"] = current.tracking.uri
        return cfg.from_dict(cfg.apply_overrides(values, overrides))
    return cfg.load_config(config_path, overrides)


def split_overrides(values: list[str]) -> list[str]:
    """``--set`` values; one value may hold several space-separated pairs (MLproject passes
    them that way) and an empty value is none."""
    out = []
    for value in values:
        parts = shlex.split(value)
        # "a=1 b=2" is two pairs; "study.settings=[none, l2]" is one value with spaces
        if len(parts) > 1 and all(re.match(r"^[A-Za-z_][\w.]*=", p) for p in parts):
            out.extend(parts)
        elif value.strip():
            out.append(value)
    return out


def run_stage(
    stage: str,
    config_path: str | None,
    overrides: list[str],
    from_run: str | None = None,
    kind: str | None = None,
    resume: str | None = None,
):
    from cnn_apps import stages
    from cnn_apps.errors import ConfigError

    config_path = config_path or None  # "" (an MLproject default) means none
    from_run = from_run or None
    overrides = split_overrides(overrides)
    if stage in ("evaluate", "export") and from_run is None:
        raise ConfigError(f"{stage} needs --from-run RUN_ID (a train or finetune run)")
    if resume:
        if from_run or config_path:
            raise ConfigError(
                "--resume takes the killed run's own config and input; drop --from-run/--config"
            )
        config = resolve_config("resume", None, overrides, resume)
    else:
        config = resolve_config(stage, config_path, overrides, from_run)
    if stage == "train" and config.training.distribution == "multi_worker":
        from cnn_apps.training.distribute import start_multi_worker

        start_multi_worker()  # before TensorFlow runs anything
    from cnn_apps import tracking

    tracking.setup(config)  # an unreachable tracking server fails here, before any work
    if stage == "prepare":
        return stages.prepare(config)
    if stage == "train":
        return stages.train(config, from_run=from_run, resume=resume)
    if stage == "all":
        return stages.run_all(config)
    if stage == "study":
        from cnn_apps.stages.study import study

        return study(kind, config, from_run=from_run)
    return getattr(stages, stage)(config, from_run=from_run)


def list_models() -> None:
    """The backbone zoo at paper size with 1000 classes: parameters and multiply-adds."""
    import cnn_apps.builtins  # noqa: F401  (registers the built-in models listed here)
    from cnn_apps.backbones.zoo import zoo_table

    print(f"{'backbone':<12} {'input':>6} {'parameters':>14} {'GMACs':>8}")
    for row in zoo_table():
        print(f"{row['name']:<12} {row['input_size']:>6} {row['params']:>14,} {row['macs'] / 1e9:>8.2f}")
    from cnn_apps.detection.factory import detector_table

    print(f"\n{'detector':<16} {'input':>6} {'parameters':>14}  backbone  (20 classes, model.architecture)")
    for row in detector_table():
        print(f"{row['name']:<16} {row['input_size']:>6} {row['params']:>14,}  {row['backbone']}")
    from cnn_apps.segmentation.factory import segmenter_table

    print(f"\n{'segmenter':<16} {'stride':>6} {'parameters':>14}  (21 classes at 224 px, model.architecture)")
    for row in segmenter_table():
        print(f"{row['name']:<16} {row['stride']:>6} {row['params']:>14,}")


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    if args.unsafe_load:  # read where models are loaded (cnn_apps.tracking.unsafe_load)
        os.environ["CNN_APPS_UNSAFE_LOAD"] = "1"
    if os.environ.get("CNN_APPS_CPU_REPLICAS"):  # before TensorFlow starts (training.distribution on a CPU)
        from cnn_apps.training.distribute import split_cpu

        split_cpu()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "h5py", "matplotlib", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS: "Using custom data configuration"
    from cnn_apps.errors import CnnAppsError
    from cnn_apps.tracking import Terminated, access_error, redact

    def terminate(signum, frame):  # SIGTERM (docker stop, kill): end the MLflow run as KILLED
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        if args.command == "models":
            list_models()
            return 0
        if args.command == "predict":
            from cnn_apps.serving.predict import run_predict

            return run_predict(args)
        if args.command == "serve":
            from cnn_apps.serving.model_server import run_serve

            return run_serve(args, run_export=functools.partial(run_stage, "export"))
        if args.command == "promote":
            from cnn_apps.serving.registry import promote

            print(promote(args.name, args.version, alias=args.alias, tracking_uri=args.tracking_uri))
            return 0
        result = run_stage(
            args.command,
            args.config,
            args.overrides,
            getattr(args, "from_run", None),
            getattr(args, "kind", None),
            getattr(args, "resume", None),
        )
    except CnnAppsError as exc:
        refused = access_error(exc)  # wrong credentials (HTTP 401) under another error are the news
        shown = refused if refused is not None and refused.status == 401 else exc
        print(f"error: {redact(shown)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        print("interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    except Exception as exc:
        refused = access_error(exc)  # MLflow's exception for an HTTP 401/403: one line, no traceback
        if refused is None:
            raise
        print(f"error: {redact(refused)}", file=sys.stderr)
        return 2
    for key, value in result.outputs.items():
        print(f"{key}: {value}")
    print(f"run_id: {result.run_id}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
