"""``cnn-apps serve``: a registered model behind MLflow's scoring server.

    cnn-apps serve --model models:/shapes-classifier@champion [--port 5001]
    cnn-apps serve --from-run TRAIN_RUN [--config C] [--set k=v ...]   (export, register, serve)

It runs ``mlflow models serve -m URI --env-manager local`` in this environment, bound to
127.0.0.1 unless ``--host`` says otherwise. With ``--from-run`` it first runs the export
stage on that train/finetune run (SavedModel, verification, a new registered version) and
serves the version it registered. The server answers ``POST /invocations`` with
``{"inputs": <(B, H, W, 3) raw pixels as nested lists>}``: the Keras model's outputs as
``{"predictions": ...}`` (a classifier's probabilities (B, K), a segmenter's logits
(B, H, W, K), a detector's raw head outputs; detectors are best served by TF Serving or
``cnn-apps predict``, which decode and run NMS).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        metavar="URI",
        help="models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/model",
    )
    source.add_argument(
        "--from-run",
        dest="from_run",
        metavar="RUN_ID",
        help="a train/finetune run: export and register it first, then serve that version",
    )
    p.add_argument("--config", help="with --from-run: the export's config (default: the run's own)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --from-run: export config overrides (repeatable)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--port", type=int, default=5001, help="default 5001 (the UI of `make mlflow-ui` has 5000)"
    )
    p.add_argument("--workers", type=int, default=1)


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1) -> list[str]:
    """The ``mlflow models serve`` command line for ``model_uri`` in this Python environment."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def serve_environment(tracking_uri: str) -> dict:
    """The server's environment: the tracking URI that resolves ``models:/``, and this
    environment's bin folder first on PATH (MLflow starts ``uvicorn`` by name)."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_serve(args, run_export=None) -> int:
    """``cnn-apps serve``: export first when asked, then replace this process by the server.

    ``run_export(config_path, overrides, from_run)`` runs the export stage and returns its
    result (outputs ``registered``, ``export_path``); the CLI passes its stage runner, so that
    the library never imports the CLI (nor, from serving, the stages)."""
    from cnn_apps import tracking
    from cnn_apps.errors import ConfigError

    model_uri, tracking_uri = args.model, tracking.tracking_uri()
    if args.from_run:
        if run_export is None:
            raise ConfigError("serve --from-run needs the export stage: run it through `cnn-apps serve`")
        result = run_export(args.config, args.overrides, args.from_run)
        model_uri = result.outputs.get("registered")
        if model_uri is None:
            raise ConfigError(
                "export.register is false, so there is no registered version to serve; "
                "drop that override or serve runs:/<run_id>/model with --model"
            )
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()  # the export's, which may come from the run's config
        print(f"exported {result.outputs['export_path']}, registered {model_uri}", flush=True)
    command = serve_command(model_uri, args.host, args.port, args.workers)
    print(f"serving {model_uri} on http://{args.host}:{args.port}/invocations", flush=True)
    os.execvpe(command[0], command, serve_environment(tracking_uri))
    return 0  # pragma: no cover - execvpe does not return
