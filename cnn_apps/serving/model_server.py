"""``cnn-apps serve``: a registered model behind MLflow's scoring protocol, with a guarded edge.

    cnn-apps serve --model models:/shapes-classifier@champion [--port 5001]
    cnn-apps serve --from-run TRAIN_RUN [--config C] [--set k=v ...]   (export, register, serve)

It runs this module's server (``python -m cnn_apps.serving.model_server``) in this
environment, bound to 127.0.0.1 unless ``--host`` says otherwise. With ``--from-run`` it
first runs the export stage on that train/finetune run (SavedModel, verification, a new
registered version) and serves the version it registered. The server loads the model as
``mlflow models serve`` does (an MLflow pyfunc model, run by uvicorn) and answers its routes:
``GET /ping``, ``/health``, ``/version`` and ``POST /invocations`` with
``{"inputs": <(B, H, W, 3) raw pixels as nested lists>}`` (or ``"instances"``,
``"dataframe_split"``, ``"dataframe_records"``): the Keras model's outputs as
``{"predictions": ...}`` (a classifier's probabilities (B, K), a segmenter's logits
(B, H, W, K), a detector's raw head outputs; detectors are best served by TF Serving or
``cnn-apps predict``, which decode and run NMS). An instance may also be an encoded image
``{"b64": "<base64 of a PNG/JPEG/...>"}``, as in TF Serving's REST API: the server decodes
it to RGB pixels (upright by its EXIF orientation), which must be the model's input size.

The edge in front of the model (request limits, 4xx refusals) is :mod:`cnn_apps.serving.edge`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from cnn_apps.serving.edge import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
    JSON_TYPE,
    EdgeApp,
    Limits,
    _error_body,
    one_line,
)

log = logging.getLogger(__name__)

# where the server process finds its model and limits (uvicorn's workers import the app anew)
MODEL_PATH_ENV = "CNN_APPS_SERVE_MODEL_PATH"
LIMITS_ENV = "CNN_APPS_SERVE_LIMITS"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """The request limits of the server (:class:`Limits`)."""
    p.add_argument(
        "--max-request-bytes",
        dest="max_request_bytes",
        type=_positive_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help="refuse (413) a request body over N bytes, by its Content-Length, before reading it "
        f"(default {DEFAULT_MAX_REQUEST_BYTES}: 32 MiB)",
    )
    p.add_argument(
        "--max-instances",
        dest="max_instances",
        type=_positive_int,
        default=DEFAULT_MAX_INSTANCES,
        metavar="N",
        help=f"refuse (413) a request of more than N instances (default {DEFAULT_MAX_INSTANCES})",
    )
    p.add_argument(
        "--max-pixels",
        dest="max_pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse (413) a request whose images hold more than N pixels in all, read from the "
        f"image headers before decoding (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--body-timeout",
        dest="body_timeout",
        type=_positive_float,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="SECONDS",
        help=f"refuse (408) a request whose body has not arrived in time (default {DEFAULT_BODY_TIMEOUT:g})",
    )


def limits_from_args(args) -> Limits:
    return Limits(
        max_request_bytes=args.max_request_bytes,
        max_instances=args.max_instances,
        max_pixels=args.max_pixels,
        body_timeout=args.body_timeout,
    )


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
    p.add_argument("--workers", type=_positive_int, default=1)
    add_limit_arguments(p)


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1) -> list[str]:
    """The ``mlflow models serve`` command line for ``model_uri`` in this Python environment:
    MLflow's own server, the same routes and replies without this module's edge."""
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


def edge_command(
    model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1, limits: Limits | None = None
) -> list[str]:
    """The command line of ``cnn-apps serve``'s server (this module) for ``model_uri``."""
    limits = limits or Limits()
    return [
        sys.executable,
        "-m",
        "cnn_apps.serving.model_server",
        "--model",
        model_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--max-request-bytes",
        str(limits.max_request_bytes),
        "--max-instances",
        str(limits.max_instances),
        "--max-pixels",
        str(limits.max_pixels),
        "--body-timeout",
        f"{limits.body_timeout:g}",
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

    limits = limits_from_args(args)
    # USER:PASSWORD@ of the URI go to MLflow's credential variables (the server inherits them)
    model_uri, tracking_uri = args.model, tracking.set_tracking_uri(tracking.tracking_uri())
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
    command = edge_command(model_uri, args.host, args.port, args.workers, limits)
    print(
        f"serving {model_uri} on http://{args.host}:{args.port}/invocations "
        f"(bodies up to {limits.max_request_bytes} bytes, {limits.max_instances} instances, "
        f"{limits.max_pixels} pixels)",
        flush=True,
    )
    os.execvpe(command[0], command, serve_environment(tracking_uri))
    return 0  # pragma: no cover - execvpe does not return


# ---------------------------------------------------------------------- the server process
def load_app(model_path: str | os.PathLike, limits: Limits | None = None) -> EdgeApp:
    """:class:`EdgeApp` for the MLflow model at a local ``model_path``."""
    from mlflow.pyfunc import scoring_server

    import cnn_apps.classification  # noqa: F401  (registers the custom Keras classes)
    import cnn_apps.detection  # noqa: F401
    import cnn_apps.segmentation  # noqa: F401

    return EdgeApp(scoring_server.load_model_with_mlflow_config(str(model_path)), limits)


def app_from_environment() -> EdgeApp:
    """The app of a uvicorn worker: the model and limits the server process put in the environment
    (a worker is a new process: its logging is set up here)."""
    _quiet_logs()
    return load_app(os.environ[MODEL_PATH_ENV], Limits(**json.loads(os.environ[LIMITS_ENV])))


def _json_errors_protocol():
    """uvicorn's h11 protocol, answering the 400 it sends for a request it cannot parse (a
    malformed request line or header, a Content-Length that is no number, the rest of a body
    longer than its Content-Length) with ``{"error": ...}`` like every other refusal."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JSONErrorsH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = _error_body(
                f"invalid HTTP request ({msg.rstrip('.')}): the request line, a header or the "
                "body's framing (Content-Length) could not be parsed"
            )
            headers = [
                (b"content-type", JSON_TYPE.encode("latin-1")),
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"connection", b"close"),
            ]
            response = h11.Response(status_code=400, headers=headers, reason=b"Bad Request")
            self.transport.write(self.conn.send(response))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

    JSONErrorsH11Protocol.__qualname__ = JSONErrorsH11Protocol.__name__
    return JSONErrorsH11Protocol


def __getattr__(name: str):
    # uvicorn imports the protocol class by name ("cnn_apps.serving.model_server:JSONErrorsH11Protocol"),
    # in each worker too; it is made on first use so that importing this module needs no uvicorn
    if name == "JSONErrorsH11Protocol":
        cls = _json_errors_protocol()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def uvicorn_settings(app, host: str = "127.0.0.1", port: int = 5001, workers: int = 1) -> dict:
    """uvicorn's settings for the server: its own 400s as JSON, no access log (the app logs
    one line per request), no logging setup of its own, keep-alive connections dropped after
    5 s idle."""
    return {
        "http": "cnn_apps.serving.model_server:JSONErrorsH11Protocol",
        "host": host,
        "port": port,
        "workers": workers,
        "factory": isinstance(app, str),
        "access_log": False,
        "log_config": None,
        "timeout_keep_alive": 5,
        "lifespan": "on",
    }


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 5001):
    """A one-process ``uvicorn.Config`` for ``app`` (tests run it in a thread)."""
    import uvicorn

    return uvicorn.Config(app, **uvicorn_settings(app, host, port))


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, level in (
        ("mlflow", logging.ERROR),  # MLflow's warnings about a request's format: the reply says it
        ("tensorflow", logging.ERROR),
        ("absl", logging.ERROR),
        ("h5py", logging.WARNING),
    ):
        logging.getLogger(name).setLevel(level)


def server_parser() -> argparse.ArgumentParser:
    """The options of ``python -m cnn_apps.serving.model_server`` (:func:`edge_command` writes them)."""
    parser = argparse.ArgumentParser(
        prog="python -m cnn_apps.serving.model_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model", required=True, metavar="URI", help="models:/..., runs:/... or a local MLflow model folder"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=_positive_int, default=1)
    add_limit_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m cnn_apps.serving.model_server --model URI ...``: what ``cnn-apps serve`` runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = server_parser().parse_args(argv)
    limits = limits_from_args(args)
    _quiet_logs()
    try:
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(artifact_uri=args.model)
        app = load_app(local, limits)
    except Exception as exc:  # no model to serve: say why on one line
        print(f"error: cannot load {args.model}: {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    import uvicorn

    log.info(
        "serving %s on http://%s:%d/invocations (limits: %s)",
        args.model,
        args.host,
        args.port,
        ", ".join(f"{k}={v}" for k, v in asdict(limits).items()),
    )
    if args.workers > 1:  # each worker process loads the model itself
        os.environ[MODEL_PATH_ENV] = str(local)
        os.environ[LIMITS_ENV] = json.dumps(asdict(limits))
        app = "cnn_apps.serving.model_server:app_from_environment"
    uvicorn.run(app, **uvicorn_settings(app, args.host, args.port, args.workers))
    return 0


if __name__ == "__main__":  # pragma: no cover - run as the package's module, not as __main__
    from cnn_apps.serving.model_server import main as _main

    sys.exit(_main())
