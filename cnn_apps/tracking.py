"""MLflow: where runs go, how a stage run is opened, and how a stage finds its input.

* Tracking URI: ``MLFLOW_TRACKING_URI``, else ``tracking.uri`` from the config,
  else a local SQLite store ``./mlruns/mlflow.db`` with artifacts in
  ``./mlruns/artifacts/<experiment>/`` (``make mlflow-ui`` serves it).
* Credentials for a server with basic auth: ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``), or ``http://USER:PASSWORD@host``
  in the URI, which :func:`set_tracking_uri` moves into those two variables so that MLflow (and
  every message) only sees the URI without them. No password or token is printed, logged or
  recorded: messages name the user and the URI without its credentials (:func:`display_uri`).
* One experiment per task (``classification``, ``detection``, ``segmentation``).
* A stage run is named ``stage:model:dataset`` and tagged ``stage``,
  ``source_run`` (the run whose output it consumed), ``dataset_fingerprint`` and
  ``git_commit``; its params are the flattened config and its resolved config is
  logged as ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

from cnn_apps.config import URI_PASSWORD, Config, mask_secrets
from cnn_apps.errors import TrackingError

DEFAULT_STORE_DIR = "mlruns"
MODEL_ARTIFACT = "model"  # MLflow model (Keras flavour) logged by train / finetune
DATASET_ARTIFACT = "dataset.json"


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


def default_tracking_uri() -> str:
    store = Path(DEFAULT_STORE_DIR).resolve()
    return f"sqlite:///{store / 'mlflow.db'}"


def tracking_uri(config: Config | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if config is not None and config.tracking.uri:
        return config.tracking.uri
    return default_tracking_uri()


USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"  # MLflow's client sends these two as basic auth
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"  # ... or this one as a bearer token


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user:password@, user, password)`` of an http(s) URI, percent-decoded; any
    other URI (and one without credentials) comes back as it is with ``None, None``."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return (
        clean,
        urllib.parse.unquote(user) or None,
        urllib.parse.unquote(password) if has_password else None,
    )


def display_uri(uri: str) -> str:
    """``uri`` as messages show it: an http(s) URI without ``user:password@``, any other with its
    password masked (``postgresql://mlflow:***@db/mlflow``)."""
    clean, _, _ = split_credentials(uri)
    return URI_PASSWORD.sub(r"\g<scheme>\g<user>:***@", clean)


def redact(text: str) -> str:
    """``text`` without the credentials in use: the password and token of the environment (where
    :func:`set_tracking_uri` also puts a URI's) and any ``scheme://user:password@`` in it."""
    text = URI_PASSWORD.sub(r"\g<scheme>\g<user>:***@", str(text))
    for name in (PASSWORD_ENV, TOKEN_ENV):
        secret = os.environ.get(name)
        if secret and len(secret) >= 3:  # a one- or two-letter "secret" would mask half the text
            for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
                text = text.replace(form, "***")
    return text


_ENV_BEFORE_URI_CREDENTIALS: dict[str, str | None] | None = None  # what a URI's credentials replaced


def _use_uri_credentials(user: str | None, password: str | None) -> None:
    """Put a URI's credentials in MLflow's variables (remembering what they replace), or, for a
    URI without any, put back what the last URI with credentials replaced."""
    global _ENV_BEFORE_URI_CREDENTIALS
    if user is None and password is None:
        if _ENV_BEFORE_URI_CREDENTIALS is not None:
            for name, value in _ENV_BEFORE_URI_CREDENTIALS.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _ENV_BEFORE_URI_CREDENTIALS = None
        return
    if _ENV_BEFORE_URI_CREDENTIALS is None:
        _ENV_BEFORE_URI_CREDENTIALS = {name: os.environ.get(name) for name in (USERNAME_ENV, PASSWORD_ENV)}
    for name, value in ((USERNAME_ENV, user), (PASSWORD_ENV, password)):
        if value is not None:
            os.environ[name] = value


def set_tracking_uri(uri: str) -> str:
    """``mlflow.set_tracking_uri`` without its side effect of exporting MLFLOW_TRACKING_URI,
    which would then outrank the next config's ``tracking.uri`` in this process.

    ``http://USER:PASSWORD@host`` goes to MLflow as ``http://host`` with USER and PASSWORD in
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (its client sends them as basic
    auth), so that no MLflow message or link holds the password. Returns the URI MLflow got."""
    mlflow = _mlflow()
    clean, user, password = split_credentials(uri)
    _use_uri_credentials(user, password)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(clean)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return clean


def setup(config: Config) -> str:
    """Point MLflow at the store and make sure the task's experiment exists; returns its id."""
    mlflow = _mlflow()
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    set_tracking_uri(uri)  # first: a URI's credentials go where MLflow (and the check) reads them
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    # a pretext task is classification on made-up labels: same experiment
    name = config.tracking.experiment or ("classification" if config.task == "pretext" else config.task)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if _is_local_sqlite(uri):  # keep artifacts beside the database, not in the cwd
        db_dir = Path(uri[len("sqlite:///") :]).parent
        artifact_location = (db_dir / "artifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


_CHECKED_SERVERS: set[tuple] = set()
# a read any user with READ may make; MLflow's basic-auth app leaves /health open, not this
_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
USERS_HELP = "docs/serving.md, 'Users and permissions'"


def _credentials(uri: str) -> tuple[str | None, str | None, str | None]:
    """``(user, password, token)`` a request to ``uri`` carries: the URI's own, else MLflow's
    (its environment variables, then ~/.mlflow/credentials)."""
    _, user, password = split_credentials(uri)
    if user is None and password is None:
        from mlflow.utils.credentials import read_mlflow_creds

        user, password = read_mlflow_creds()
    return user, password, os.environ.get(TOKEN_ENV) or None


def current_user(uri: str | None = None) -> str | None:
    """The user name requests to the tracking server carry (never the password), or None."""
    return _credentials(uri or _mlflow().get_tracking_uri())[0]


def _auth_header(user, password, token) -> dict:
    """The Authorization header MLflow's client would send: basic auth with both a user and a
    password, else the token as a bearer token."""
    import base64

    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def access_message(
    uri: str,
    status: int,
    user: str | None,
    token: str | None,
    doing: str = "read runs",
    grant: str = "READ",
) -> str:
    """One line for an HTTP 401 or 403 from the tracking server at ``uri``: missing credentials,
    wrong credentials (naming the user, never the password), or a missing permission."""
    where = display_uri(uri)
    who = f"user '{user}'" if user else "the token in MLFLOW_TRACKING_TOKEN" if token else None
    if status == 401 and who is None:
        return (
            f"the tracking server {where} needs credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME "
            f"and MLFLOW_TRACKING_PASSWORD, or put USER:PASSWORD@ in the tracking URI ({USERS_HELP})"
        )
    if status == 401:
        fix = "the password in MLFLOW_TRACKING_PASSWORD or the tracking URI" if user else TOKEN_ENV
        return f"wrong credentials for {who} on the tracking server {where} (HTTP 401): check {fix}"
    return (
        f"{who or 'this client'} has no permission to {doing} on the tracking server {where} "
        f"(HTTP {status}): an admin can grant {grant} ({USERS_HELP})"
    )


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` within ``timeout`` seconds when the tracking server at ``uri``
    does not answer ``/health`` (MLflow's own client retries for minutes before failing), or
    refuses this client's credentials; checked once per process (per server and credentials).

    The requests carry the credentials MLflow's client would send (basic auth, or the token), and
    a read of the REST API follows ``/health``, which an authenticating server leaves open: a 401
    says "needs credentials" or "wrong credentials for user X", a 403 "no permission"."""
    import urllib.error
    import urllib.request

    clean = split_credentials(uri)[0]
    user, password, token = _credentials(uri)
    key = (clean, user, password, token)
    if key in _CHECKED_SERVERS:
        return
    headers = _auth_header(user, password, token)
    for path in ("/health", _PROBE):
        request = urllib.request.Request(clean.rstrip("/") + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                reply.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403) and (
                os.environ.get("MLFLOW_TRACKING_AUTH") or os.environ.get("MLFLOW_TRACKING_AWS_SIGV4")
            ):
                break  # an auth plugin or AWS SigV4 signs MLflow's requests, not these: it is up
            if exc.code in (401, 403):
                raise TrackingError(access_message(clean, exc.code, user, token)) from None
            if path == "/health":
                raise TrackingError(
                    f"tracking server {display_uri(clean)} answered /health with HTTP {exc.code}; is it "
                    "an MLflow server? (MLFLOW_TRACKING_URI or tracking.uri)"
                ) from None
            # another answer to the read (a server-side error): MLflow's client will report it
        except (OSError, ValueError) as exc:
            reason = redact(getattr(exc, "reason", exc))
            raise TrackingError(
                f"cannot reach the tracking server {display_uri(clean)} ({reason}); start it (see "
                "mlflow/compose.yaml or `make mlflow-ui`), or unset MLFLOW_TRACKING_URI / "
                "tracking.uri to use the local ./mlruns store"
            ) from None
    _CHECKED_SERVERS.add(key)


# what a 403 on an endpoint means to a user, and the permission that would allow it
_DENIED = {
    "runs/create": ("create runs in this experiment", "EDIT on the experiment"),
    "experiments/create": ("create experiments", "permission to create experiments"),
    "registered-models/alias": ("move a registered model's alias", "EDIT on the registered model"),
    "registered-models/create": ("create registered models", "permission to create registered models"),
    "model-versions/create": ("register a model version", "EDIT on the registered model"),
}
_ENDPOINT = re.compile(r"endpoint (?P<endpoint>/\S+) failed with error code (?P<status>\d{3})")


def access_error(exc: BaseException) -> TrackingError | None:
    """A one-line :class:`TrackingError` when ``exc`` (or what caused it) is the tracking server
    refusing this client (HTTP 401 / 403 from MLflow's client), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "error_code", None)
        if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") and type(exc).__module__.startswith("mlflow"):
            uri = _mlflow().get_tracking_uri()
            user, _, token = _credentials(uri)
            match = _ENDPOINT.search(str(exc))
            endpoint = match["endpoint"] if match else ""
            status = 401 if code == "UNAUTHENTICATED" else 403
            doing, grant = next(
                (v for k, v in _DENIED.items() if endpoint.endswith("/mlflow/" + k)),
                (f"call {endpoint}" if endpoint else "do this", "the permission it needs"),
            )
            error = TrackingError(access_message(uri, status, user, token, doing, grant))
            error.status = status
            return error
        exc = exc.__cause__ or exc.__context__
    return None


def _is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def git_commit() -> str:
    """The commit of the code that ran (``-dirty`` when the tree has changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def stage_run(
    config: Config,
    stage: str,
    *,
    model: str,
    dataset: str,
    source_run: str | None = None,
    fingerprint: str | None = None,
    nested: bool = False,
    tags: dict | None = None,
    run_name: str | None = None,
    resume_run: str | None = None,
):
    """Open the MLflow run of one stage, with the conventions above; yields the active run.

    ``nested`` makes it a child of the active run (a study's setting); ``resume_run``
    reopens that (killed) run instead of starting one (``cnn-apps train --resume``)."""
    mlflow = _mlflow()
    experiment_id = setup(config)
    all_tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "task": config.task,
        "source_run": source_run or "",
        **(tags or {}),
    }
    if fingerprint:
        all_tags["dataset_fingerprint"] = fingerprint
    # a stage started inside another stage's run (a study's child preparing its data) nests under it
    nested = nested or mlflow.active_run() is not None
    if resume_run:
        run = mlflow.start_run(run_id=resume_run, nested=nested)
        resumed = int(run.data.tags.get("resumed", "0")) + 1
        mlflow.set_tags({"resumed": str(resumed), "git_commit": all_tags["git_commit"]})
        if "failure_reason" in run.data.tags:  # from the interruption (Ctrl-C, SIGTERM): no longer true
            mlflow.MlflowClient().delete_tag(resume_run, "failure_reason")
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name or f"{stage}:{model}:{dataset}",
            tags=all_tags,
            nested=nested,
        )
    try:
        if not resume_run:  # params are write-once; a resumed run has them
            mlflow.log_params({k: param_text(v) for k, v in mask_secrets(config.flat()).items()})
            mlflow.log_text(config.to_yaml(masked=True), "config.yaml")
        yield run
    except BaseException as exc:  # never leave a run RUNNING: say how it ended and why
        killed = isinstance(exc, (KeyboardInterrupt, Terminated))
        _end_run(run, "KILLED" if killed else "FAILED", _reason(exc))
        raise
    _end_run(run, "FINISHED")


class Terminated(BaseException):
    """SIGTERM arrived (``cnn-apps`` turns it into this, so the run is marked KILLED)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {first}")[:500]


def _end_run(run, status: str, reason: str | None = None) -> None:
    """End ``run`` (the innermost active one) with ``status``; a tracking error here must not
    hide the error that ended the stage."""
    mlflow = _mlflow()
    try:
        if reason:
            mlflow.MlflowClient().set_tag(run.info.run_id, "failure_reason", reason)
        mlflow.end_run(status)
    except Exception as exc:  # pragma: no cover - the server went away mid-run
        import logging

        logging.getLogger("cnn_apps").warning(
            "could not mark run %s %s: %s", run.info.run_id, status, redact(str(exc).splitlines()[0])
        )


def param_text(value) -> str:
    """A config value as MLflow keeps it in a run's params (lists and mappings as JSON)."""
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)


# ---------------------------------------------------------------------- reading other runs
def get_run(run_id: str, expect_stage: tuple[str, ...] | None = None):
    """The MLflow run ``run_id``; checks its ``stage`` tag when ``expect_stage`` is given."""
    mlflow = _mlflow()
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception as exc:
        refused = access_error(exc)
        if refused is not None and refused.status == 403:  # MLflow's auth app: also for a missing run
            who = f"user '{current_user()}'" if current_user() else "this client"
            raise TrackingError(
                f"run {run_id} not found in {display_uri(mlflow.get_tracking_uri())}, or {who} may not "
                "read it (HTTP 403: the server does not say which)"
            ) from exc
        raise TrackingError(
            f"run {run_id} not found in {display_uri(mlflow.get_tracking_uri())}: "
            f"{redact(str(exc).splitlines()[0])}"
        ) from exc
    stage = run.data.tags.get("stage")
    if expect_stage and stage not in expect_stage:
        raise TrackingError(
            f"run {run_id} is a '{stage}' run; this stage needs a run of stage {' or '.join(expect_stage)}"
        )
    return run


def load_text_artifact(run_id: str, path: str) -> str:
    mlflow = _mlflow()
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
    except Exception as exc:
        raise TrackingError(f"run {run_id} has no artifact '{path}': {str(exc).splitlines()[0]}") from exc


def load_dataset_spec(run_id: str):
    from cnn_apps.data.spec import DatasetSpec

    return DatasetSpec.from_json(
        load_text_artifact(run_id, DATASET_ARTIFACT), where=f"runs:/{run_id}/{DATASET_ARTIFACT}"
    )


def load_run_config(run_id: str) -> dict:
    import yaml

    return yaml.safe_load(load_text_artifact(run_id, "config.yaml")) or {}


def log_keras_model(model, sample_input) -> str:
    """Log ``model`` as the run's MLflow model (Keras flavour, ``.keras`` inside); returns its URI."""
    _mlflow()
    import mlflow
    import mlflow.tensorflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        outputs = model(sample_input, training=False)  # predict cannot run under it (keras#20585)
        outputs = {k: v.numpy() for k, v in outputs.items()} if isinstance(outputs, dict) else outputs.numpy()
    else:
        outputs = model.predict(sample_input, verbose=0)
    signature = infer_signature(sample_input, outputs)
    info = mlflow.tensorflow.log_model(
        model, name=MODEL_ARTIFACT, signature=signature, pip_requirements=_requirements()
    )
    mlflow.set_tag("model_uri", info.model_uri)  # MLflow 3 keeps logged models outside the run
    return info.model_uri


def _requirements() -> list[str]:
    from importlib import metadata

    reqs = []
    for name in ("tensorflow", "keras", "cnn-apps"):
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def model_uri(run_id: str) -> str:
    """The URI of the model a train/finetune run logged."""
    run = get_run(run_id)
    return run.data.tags.get("model_uri") or f"runs:/{run_id}/{MODEL_ARTIFACT}"


def load_keras_model(uri_or_run: str):
    """Load a Keras model from a train/finetune run id, a ``runs:/`` or a ``models:/`` URI."""
    _mlflow()
    import mlflow.tensorflow

    import cnn_apps.classification  # noqa: F401  (registers the custom classes)
    import cnn_apps.detection  # noqa: F401

    uri = uri_or_run if ":/" in uri_or_run else model_uri(uri_or_run)
    try:
        return mlflow.tensorflow.load_model(uri, keras_model_kwargs={"safe_mode": not unsafe_load()})
    except Exception as exc:
        _raise_if_unsafe(exc, uri)
        raise TrackingError(f"cannot load a Keras model from {uri}: {str(exc).splitlines()[0]}") from exc


UNSAFE_LOAD_ENV = "CNN_APPS_UNSAFE_LOAD"  # set by `cnn-apps --unsafe-load`


def unsafe_load() -> bool:
    """Whether ``.keras`` files may run code they carry (Lambda layers): only when the user said
    so (``cnn-apps --unsafe-load`` or ``CNN_APPS_UNSAFE_LOAD=1``); Keras' safe mode otherwise."""
    return os.environ.get(UNSAFE_LOAD_ENV, "") not in ("", "0")


def _raise_if_unsafe(exc: Exception, where) -> None:
    if "safe_mode" in str(exc) or "unsafe" in str(exc).lower():
        from cnn_apps.errors import ModelError

        raise ModelError(
            f"{where} holds code (a Lambda layer or a pickled function), which Keras' safe mode "
            "will not run; if you trust where it came from, pass --unsafe-load"
        ) from exc


def load_keras_file(path, **kwargs):
    """``keras.saving.load_model`` of a file the user named, in safe mode unless :func:`unsafe_load`."""
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=not unsafe_load(), **kwargs)
    except Exception as exc:
        _raise_if_unsafe(exc, path)
        raise


def log_json(data, path: str) -> None:
    _mlflow().log_text(json.dumps(data, indent=2, sort_keys=True), path)


def log_figure(fig, path: str) -> None:
    """Log a matplotlib figure as a PNG artifact and close it."""
    import matplotlib.pyplot as plt

    _mlflow().log_figure(fig, path)
    plt.close(fig)


def temp_dir():
    return tempfile.TemporaryDirectory(prefix="cnn-apps-")
