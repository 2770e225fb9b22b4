"""A real ``mlflow server`` for tests: start it on a free loopback port, wait for it, stop it.

    server = start_server(tmp_dir)          # SQLite backend + proxied artifacts under tmp_dir
    ... MLFLOW_TRACKING_URI=server.url ...
    stop_server(server)                     # SIGTERM to its process group, then SIGKILL

    server = start_auth_server(tmp_dir, admin_password=pw)   # MLflow's basic-auth app (mlflow[auth])
    create_user(server, "alice", "a-long-password"); grant(server, "alice", "experiment", "*", "EDIT")

The server runs one uvicorn worker and no job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``),
in its own process group so that stopping it by its process id also stops the uvicorn child.
Its output goes to ``server.log_path``; a server that does not come up fails with that log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


@dataclass
class MlflowServer:
    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    workdir: Path
    argv: list[str] = field(default_factory=list)
    backend_store_uri: str = ""
    artifacts_dir: Path | None = None
    admin: tuple[str, str] | None = None  # (user, password) of a basic-auth server's admin

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "(no log)"


def free_port() -> int:
    """A TCP port nothing listens on at the moment (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_argv(workdir: Path, port: int, app_name: str | None = None) -> tuple[list[str], str, Path]:
    """``mlflow server`` arguments (after ``mlflow``): SQLite backend, artifacts proxied by the
    server; ``app_name``: ``--app-name`` (``basic-auth``: MLflow's authentication app)."""
    backend = f"sqlite:///{workdir / 'mlflow.db'}"
    artifacts = workdir / "mlartifacts"
    argv = [
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if app_name:
        argv += ["--app-name", app_name]
    return argv, backend, artifacts


def start_server(
    workdir: Path,
    *,
    argv: list[str] | None = None,
    port: int | None = None,
    timeout: float = 120.0,
    app_name: str | None = None,
    env: dict | None = None,
) -> MlflowServer:
    """Start ``python -m mlflow ARGV`` in ``workdir`` and wait until ``/health`` answers.

    Without ``argv``: :func:`server_argv` on a free port (with ``app_name``). With ``argv``,
    ``port`` must be the port it listens on. ``env``: added to the server's environment (e.g.
    ``MLFLOW_AUTH_CONFIG_PATH``). Raises ``RuntimeError`` with the server's log if it exits or
    does not answer within ``timeout`` seconds."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backend, artifacts = "", None
    if argv is None:
        port = port or free_port()
        argv, backend, artifacts = server_argv(workdir, port, app_name)
    elif port is None:
        raise ValueError("start_server(argv=...) needs the port the server listens on")
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's own store comes from its arguments
    log_path = workdir / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", *argv],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # its own process group: stop takes uvicorn too
    server = MlflowServer(
        url=f"http://{HOST}:{port}",
        port=port,
        proc=proc,
        log_path=log_path,
        workdir=workdir,
        argv=argv,
        backend_store_uri=backend,
        artifacts_dir=artifacts,
    )
    try:
        wait_healthy(server, timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_healthy(server: MlflowServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with code {server.proc.returncode} before answering "
                f"on {server.url}; its log:\n{server.log()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as resp:
                body = resp.read().decode(errors="replace").strip()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}: {body}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(
        f"mlflow server on {server.url} did not answer /health within {timeout:.0f} s "
        f"(last: {last}); its log:\n{server.log()}"
    )


def stop_server(server: MlflowServer, timeout: float = 15.0) -> int | None:
    """SIGTERM to the server's process group, SIGKILL after ``timeout``; returns its exit code."""
    proc = server.proc
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the server's pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    # the group may outlive its leader (a uvicorn worker): make sure nothing is left listening
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.poll()


def port_is_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


# ------------------------------------------------------------------ basic auth (mlflow[auth])
ADMIN = "admin"


def write_auth_config(
    path: Path,
    *,
    database_uri: str,
    admin_password: str | None = None,
    admin_username: str = ADMIN,
    default_permission: str = "READ",
    cache_seconds: int = 300,
) -> Path:
    """The ini file of MLflow's basic-auth app (``MLFLOW_AUTH_CONFIG_PATH``). ``cache_seconds``:
    how long a worker trusts a checked password (each check is a slow PBKDF2 hash otherwise)."""
    lines = [
        "[mlflow]",
        f"default_permission = {default_permission}",
        f"database_uri = {database_uri}",
        f"admin_username = {admin_username}",
        f"auth_cache_ttl_seconds = {cache_seconds}",
    ]
    if admin_password is not None:
        lines.append(f"admin_password = {admin_password}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def auth_environment(config_path: Path) -> dict:
    """What the basic-auth app needs besides its ini file: a static CSRF key."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config_path),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }


def start_auth_server(
    workdir: Path, *, admin_password: str, default_permission: str = "READ", timeout: float = 240.0
) -> MlflowServer:
    """:func:`start_server` with ``--app-name basic-auth``: users in SQLite beside the runs, the
    admin ``admin`` with ``admin_password`` (MLflow wants 12 characters or more)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ini = write_auth_config(
        workdir / "basic_auth.ini",
        database_uri=f"sqlite:///{workdir / 'basic_auth.db'}",
        admin_password=admin_password,
        default_permission=default_permission,
    )
    server = start_server(workdir, app_name="basic-auth", env=auth_environment(ini), timeout=timeout)
    server.admin = (ADMIN, admin_password)
    return server


def request(
    server: MlflowServer,
    method: str,
    path: str,
    body: dict | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """``(status, body text)`` of one HTTP request to the server, with basic ``auth`` if given."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _as_admin(server: MlflowServer, method: str, path: str, body: dict) -> dict:
    status, text = request(server, method, path, body, auth=server.admin)
    if status != 200:
        raise RuntimeError(f"{method} {path} as {ADMIN}: HTTP {status}: {text[:500]}")
    return json.loads(text) if text.strip() else {}


def create_user(server: MlflowServer, username: str, password: str) -> dict:
    """A new user (not an admin) through the REST API, as the admin: the ``curl`` of docs/serving.md."""
    return _as_admin(
        server, "POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password}
    )


def grant(server: MlflowServer, username: str, resource_type: str, resource_id: str, permission: str):
    """Give ``username`` ``permission`` (READ, EDIT, MANAGE) on a resource (``experiment`` or
    ``registered_model``; ``*``: all of them), as the admin: the ``curl`` of docs/serving.md."""
    return _as_admin(
        server,
        "POST",
        "/api/3.0/mlflow/users/permissions/grant",
        {
            "username": username,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "permission": permission,
        },
    )


# ------------------------------------------------------------------ one tiny pipeline, shared
@dataclass
class PipelineOnServer:
    """A server and the tiny classification pipeline (``cnn-apps all``) run once against it."""

    server: MlflowServer
    runs: dict[str, str]  # stage -> run id (prepare, train, evaluate, export)
    client_dir: Path  # the client's working directory while the pipeline ran
    exports_dir: Path
    stdout: str
    seconds: float


_PIPELINE = None  # a pytest.StashKey, made on first use (this module is also imported outside pytest)


def pipeline_on_server(request, tmp_path_factory) -> PipelineOnServer:
    """Start a server and run the tiny pipeline against it over HTTP, once per pytest session
    (the tracking and the UI tests share it); the server is stopped when the session ends.

    Call it from a session-scoped fixture: ``pipeline_on_server(request, tmp_path_factory)``."""
    import pytest

    global _PIPELINE
    if _PIPELINE is None:
        _PIPELINE = pytest.StashKey[dict]()
    stash = request.config.stash.setdefault(_PIPELINE, {})
    if "result" in stash:
        return stash["result"]
    if "error" in stash:
        raise RuntimeError(f"the shared pipeline on a tracking server failed earlier: {stash['error']}")
    base = tmp_path_factory.mktemp("mlflow-server")
    server = start_server(base / "server")
    request.config.add_cleanup(lambda: stop_server(server))
    try:
        stash["result"] = _run_tiny_pipeline(server, base)
    except BaseException as exc:
        stash["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        raise
    return stash["result"]


def _run_tiny_pipeline(server: MlflowServer, base: Path) -> PipelineOnServer:
    import io
    from contextlib import redirect_stdout

    import mlflow
    from conftest import set_args, tiny_overrides

    from cnn_apps.cli import main

    client_dir = base / "client"
    client_dir.mkdir()
    data_root = base / "work"
    # tiny_overrides points tracking.uri at a SQLite file: point it at the server instead
    sets = set_args(tiny_overrides(data_root, **{"tracking.uri": server.url}))
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved_uri, saved_cwd = mlflow.get_tracking_uri(), os.getcwd()
    out = io.StringIO()
    os.environ["MLFLOW_TRACKING_URI"] = server.url
    t0 = time.monotonic()
    try:
        os.chdir(client_dir)
        with redirect_stdout(out):
            rc = main(["all", *sets])
    finally:
        os.chdir(saved_cwd)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
        mlflow.set_tracking_uri(saved_uri)
    seconds = time.monotonic() - t0
    text = out.getvalue()
    if rc != 0:
        raise RuntimeError(f"cnn-apps all exited {rc}; stdout:\n{text[-3000:]}\nserver log:\n{server.log()}")
    values = dict(line.split(": ", 1) for line in text.strip().splitlines() if ": " in line)
    runs = {
        "prepare": values["prepare_run"],
        "train": values["train_run"],
        "evaluate": values["evaluate_run"],
        "export": values["run_id"],
    }
    return PipelineOnServer(
        server=server,
        runs=runs,
        client_dir=client_dir,
        exports_dir=data_root / "exports",
        stdout=text,
        seconds=seconds,
    )
