"""Credentials for the tracking server, and a real MLflow server with basic auth in front of it.

* ``http://USER:PASSWORD@host`` tracking URIs and ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` both work: the URI's credentials go to MLflow's variables and
  MLflow gets the URI without them; the reachability check sends them.
* A 401 says "needs credentials" or "wrong credentials for user X", never "unreachable"; a 403
  (a READ-only user creating a run or moving the champion alias) is one line naming the user.
* No password appears in any message, log record, param, tag or logged text artifact.

The fast tests use a stand-in HTTP server; the ``slow`` ones start ``mlflow server --app-name
basic-auth`` on a free loopback port (default permission READ, SQLite users beside the runs).
"""

import base64
import contextlib
import http.server
import logging
import socket
import threading
import urllib.parse
from pathlib import Path

import mlflow
import pytest
from conftest import set_args, tiny_overrides
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST
from mlflow_server import create_user, grant, request, start_auth_server, stop_server

from cnn_apps import tracking
from cnn_apps.cli import main
from cnn_apps.errors import TrackingError

WRITER, WRITER_PASSWORD = "writer", "wr1ter:p@ss/word%42"  # URL-special characters: percent-encoded in URIs
READER, READER_PASSWORD = "reader", "reader-pa55word-Q7"
ADMIN_PASSWORD = "admin-pa55word-Z3"
MODEL_TEXT_FILES = {"MLmodel", "requirements.txt", "conda.yaml", "python_env.yaml"}
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _forms(secret: str) -> set[str]:
    """The ways a secret could be written: as it is and percent-encoded."""
    return {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}


SECRETS = _forms(WRITER_PASSWORD) | _forms(READER_PASSWORD) | _forms(ADMIN_PASSWORD) | {"pw-in-the-uri-9"}


def _leaks(text: str) -> set[str]:
    return {secret for secret in SECRETS if secret in text}


def _uri(server_url: str, user: str, password: str) -> str:
    host = server_url.split("://", 1)[1]
    return f"http://{user}:{urllib.parse.quote(password, safe='')}@{host}"


@pytest.fixture
def clean_env(monkeypatch):
    """No credentials or tracking URI in the environment, none left behind by the test, and the
    tracking module's per-process state fresh."""
    for name in (*CREDENTIAL_ENV, "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "-")  # so that the undo removes what the test (or code) set
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking, "_ENV_BEFORE_URI_CREDENTIALS", None, raising=False)
    monkeypatch.setattr(tracking, "_CHECKED_SERVERS", set())
    saved = mlflow.get_tracking_uri()
    yield monkeypatch
    mlflow.set_tracking_uri(saved)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- without a server
def test_credentials_in_a_uri_go_to_mlflows_variables_and_mlflow_gets_the_uri_without_them(clean_env):
    clean = tracking.set_tracking_uri(_uri("http://127.0.0.1:5000/", "alice", WRITER_PASSWORD))
    assert clean == mlflow.get_tracking_uri() == "http://127.0.0.1:5000/"
    assert tracking.current_user() == "alice"
    assert tracking.os.environ["MLFLOW_TRACKING_PASSWORD"] == WRITER_PASSWORD  # percent-decoded
    # a URI without credentials puts back what the environment had (here: nothing)
    tracking.set_tracking_uri("sqlite:///elsewhere.db")
    assert not {name for name in CREDENTIAL_ENV if name in tracking.os.environ}
    # ... or the user's own variables
    clean_env.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    clean_env.setenv("MLFLOW_TRACKING_PASSWORD", "bobs-password")
    tracking.set_tracking_uri("https://carol:pw-in-the-uri-9@mlflow.example.com")
    assert tracking.current_user() == "carol"
    tracking.set_tracking_uri("https://mlflow.example.com")
    assert tracking.current_user() == "bob"
    assert tracking.os.environ["MLFLOW_TRACKING_PASSWORD"] == "bobs-password"
    # what messages and tags show
    assert tracking.display_uri("https://carol:pw-in-the-uri-9@h:5000/x") == "https://h:5000/x"
    assert (
        tracking.display_uri("postgresql://mlflow:pw-in-the-uri-9@db/mlflow")
        == "postgresql://mlflow:***@db/mlflow"
    )
    assert tracking.display_uri("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
    reason = tracking._reason(ConnectionError("no answer from http://carol:pw-in-the-uri-9@h:5000"))
    assert "pw-in-the-uri-9" not in reason and "bobs-password" not in tracking.redact("x bobs-password y")


@pytest.mark.parametrize("where", ["MLFLOW_TRACKING_URI", "tracking.uri"])
def test_an_unreachable_server_is_named_without_its_password(clean_env, tmp_path, capsys, where):
    port = _closed_port()
    uri = f"http://alice:pw-in-the-uri-9@127.0.0.1:{port}"
    if where == "MLFLOW_TRACKING_URI":
        clean_env.setenv("MLFLOW_TRACKING_URI", uri)
        overrides = tiny_overrides(tmp_path)
    else:
        overrides = tiny_overrides(tmp_path, **{"tracking.uri": uri})
    assert main(["train", *set_args(overrides)]) == 2
    out, err = capsys.readouterr()
    assert f"error: cannot reach the tracking server http://127.0.0.1:{port} (" in err
    assert not _leaks(out + err), err


def test_serve_hands_the_model_server_the_uri_without_its_password(clean_env, capsys):
    from cnn_apps.serving import model_server

    started = {}

    def execvpe(file, argv, env):  # instead of becoming the server
        started.update(argv=argv, env=env)

    clean_env.setattr(model_server.os, "execvpe", execvpe)
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://alice:pw-in-the-uri-9@127.0.0.1:5000")
    assert main(["serve", "--model", "models:/tiny@champion"]) == 0
    env = started["env"]
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "pw-in-the-uri-9")
    out, err = capsys.readouterr()
    assert not _leaks(" ".join(started["argv"]) + out + err)


class _StandIn(http.server.BaseHTTPRequestHandler):
    """Answers every GET with ``status`` (200 where the Authorization header is ``accept``)."""

    status = 404
    accept: str | None = None
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        auth = self.headers.get("Authorization")
        type(self).seen.append((self.path, auth))
        code = 200 if auth is not None and auth == self.accept else self.status
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _stand_in(status: int, accept: str | None = None):
    handler = type("Handler", (_StandIn,), {"status": status, "accept": accept, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_check_sends_the_credentials_and_tells_401_from_unreachable(clean_env):
    with _stand_in(404) as (url, handler):  # not an MLflow server
        with pytest.raises(TrackingError) as info:
            tracking.check_server(_uri(url, "alice", "pw-in-the-uri-9"))
        assert str(info.value).startswith(f"tracking server {url} answered /health with HTTP 404")
        assert not _leaks(str(info.value))
        assert handler.seen == [("/health", _basic("alice", "pw-in-the-uri-9"))]

    with _stand_in(401, accept=_basic("alice", "pw-in-the-uri-9")) as (
        url,
        handler,
    ):  # a proxy with basic auth
        with pytest.raises(
            TrackingError, match=r"needs credentials \(HTTP 401\): set MLFLOW_TRACKING_USERNAME"
        ):
            tracking.check_server(url)
        with pytest.raises(TrackingError) as info:
            tracking.check_server(_uri(url, "alice", "wrong-password-77"))
        assert str(info.value).startswith(f"wrong credentials for user 'alice' on the tracking server {url}")
        assert "(HTTP 401)" in str(info.value) and "wrong-password-77" not in str(info.value)
        tracking.check_server(_uri(url, "alice", "pw-in-the-uri-9"))  # right: no error
        clean_env.setenv("MLFLOW_TRACKING_USERNAME", "alice")  # the same, from the environment
        clean_env.setenv("MLFLOW_TRACKING_PASSWORD", "pw-in-the-uri-9")
        tracking._CHECKED_SERVERS.clear()  # checked once per process: again, for this test
        tracking.check_server(url)
        assert [path for path, _ in handler.seen[-2:]] == ["/health", tracking._PROBE]

    clean_env.delenv("MLFLOW_TRACKING_USERNAME")
    clean_env.delenv("MLFLOW_TRACKING_PASSWORD")
    clean_env.setenv("MLFLOW_TRACKING_TOKEN", "tok-en-123")
    with _stand_in(403, accept="Bearer other") as (url, handler):
        with pytest.raises(TrackingError) as info:
            tracking.check_server(url)
        message = str(info.value)
        assert message.startswith(
            f"the token in MLFLOW_TRACKING_TOKEN has no permission to read runs on the tracking server {url}"
        )
        assert "(HTTP 403)" in message and "tok-en-123" not in message
        assert handler.seen[0][1] == "Bearer tok-en-123"


def test_mlflows_401_and_403_become_one_line_naming_the_user(clean_env):
    tracking.set_tracking_uri(_uri("http://127.0.0.1:5000", "reader", READER_PASSWORD))
    denied = MlflowException(
        "API request to endpoint /api/2.0/mlflow/registered-models/alias failed with error code 403 "
        "!= 200. Response body: 'Permission denied'",
        error_code=PERMISSION_DENIED,
    )
    wrapped = TrackingError("cannot read it")
    wrapped.__cause__ = denied
    for exc in (denied, wrapped):
        assert str(tracking.access_error(exc)) == (
            "user 'reader' has no permission to move a registered model's alias on the tracking server "
            "http://127.0.0.1:5000 (HTTP 403): an admin can grant EDIT on the registered model "
            "(docs/serving.md, 'Users and permissions')"
        )
    assert tracking.access_error(ValueError("no")) is None
    assert tracking.access_error(MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST)) is None


# ---------------------------------------------------------------------- a real server with basic auth
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """``mlflow server --app-name basic-auth`` (default permission READ) with two users: ``writer``
    (EDIT on every experiment and registered model, granted as docs/serving.md says) and ``reader``
    (the default READ). The admin made the experiment ``classification``, so the writer's
    permission is the grant, not a creator's MANAGE."""
    server = start_auth_server(tmp_path_factory.mktemp("auth-server"), admin_password=ADMIN_PASSWORD)
    try:
        create_user(server, WRITER, WRITER_PASSWORD)
        create_user(server, READER, READER_PASSWORD)
        grant(server, WRITER, "experiment", "*", "EDIT")
        grant(server, WRITER, "registered_model", "*", "EDIT")
        status, text = request(
            server, "POST", "/api/2.0/mlflow/experiments/create", {"name": "classification"}, server.admin
        )
        assert status == 200, text
        yield server
    finally:
        stop_server(server)


def _admin_client(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
    return mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)


@pytest.mark.slow
def test_without_credentials_the_server_answers_401_and_the_cli_says_so(
    auth_server, clean_env, tmp_path, capsys
):
    assert request(auth_server, "GET", "/health")[0] == 200  # the basic-auth app leaves it open
    assert request(auth_server, "GET", "/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401
    wrong = (WRITER, "not-the-password")
    assert (
        request(auth_server, "GET", "/api/2.0/mlflow/experiments/search?max_results=1", auth=wrong)[0] == 401
    )
    url = auth_server.url

    clean_env.setenv("MLFLOW_TRACKING_URI", url)
    assert main(["train", *set_args(tiny_overrides(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: the tracking server {url} needs credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD, or put USER:PASSWORD@ in the tracking URI "
        "(docs/serving.md, 'Users and permissions')"
    )
    clean_env.setenv("MLFLOW_TRACKING_URI", _uri(url, WRITER, "not-the-password"))
    assert main(["train", *set_args(tiny_overrides(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: wrong credentials for user 'writer' on the tracking server {url} (HTTP 401): check the "
        "password in MLFLOW_TRACKING_PASSWORD or the tracking URI"
    )
    assert "not-the-password" not in err and not (tmp_path / "data").exists()  # nothing was prepared
    # the environment's credentials are checked the same way, and right ones pass
    clean_env.setenv("MLFLOW_TRACKING_URI", url)
    clean_env.setenv("MLFLOW_TRACKING_USERNAME", READER)
    clean_env.setenv("MLFLOW_TRACKING_PASSWORD", READER_PASSWORD)
    tracking.check_server(url)


def _text_artifacts(client, run_id, path=None):
    """(path, text) of every logged file that is text (config, JSON, CSV, MLmodel, requirements)."""
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            yield from _text_artifacts(client, run_id, item.path)
        elif not item.path.endswith((".png", ".jpg", ".pb", ".keras", ".h5", ".npz", ".index")) and (
            "variables" not in item.path
        ):
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=item.path)
            try:
                with open(local, encoding="utf-8") as f:
                    yield item.path, f.read()
            except UnicodeDecodeError:
                continue


@pytest.mark.slow
def test_a_pipeline_with_credentials_in_the_uri_runs_and_no_password_leaks(
    auth_server, clean_env, tmp_path, capfd, caplog
):
    caplog.set_level(logging.DEBUG)
    clean_env.chdir(tmp_path)
    uri = _uri(auth_server.url, WRITER, WRITER_PASSWORD)
    assert main(["all", *set_args(tiny_overrides(tmp_path, **{"tracking.uri": uri}))]) == 0
    out, err = capfd.readouterr()
    records = "\n".join(record.getMessage() for record in caplog.records)
    assert not _leaks(out) and not _leaks(err) and not _leaks(records), (
        _leaks(out + err + records),
        out,
        err,
    )
    assert f"{auth_server.url}/#/experiments/" in out  # MLflow's "View run ... at" links: the clean URI

    tracking.set_tracking_uri(auth_server.url)  # downloads go to the same server, as the admin
    client = _admin_client(auth_server, clean_env)
    experiment = client.get_experiment_by_name("classification")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["stage"] for r in runs} == {"prepare", "train", "evaluate", "export"}
    assert {r.data.tags.get("mlflow.user") for r in runs} == {WRITER}
    seen = []
    for run in runs:
        assert run.data.params["tracking.uri"] == f"http://writer:***@{auth_server.url.split('://')[1]}"
        seen += [run.info.run_name, *run.data.params.values(), *map(str, run.data.tags.items())]
        texts = dict(_text_artifacts(client, run.info.run_id))
        assert "config.yaml" in texts
        seen += [f"{path}: {text}" for path, text in texts.items()]
    for model in client.search_logged_models([experiment.experiment_id]):
        seen += [*map(str, model.tags.items()), *map(str, model.params.items())]
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location))
        texts = [p.read_text() for p in local.rglob("*") if p.name in MODEL_TEXT_FILES]
        assert texts, sorted(p.name for p in local.rglob("*"))
        seen += texts
    version = client.get_model_version("tiny", "1")
    seen += [version.description or "", *map(str, version.tags.items()), version.source]
    assert len(seen) > 50
    leaked = [text[:200] for text in seen if _leaks(text)]
    assert not leaked, leaked
    assert client.get_model_version_by_alias("tiny", "champion").version == "1"  # the writer moved it


@pytest.mark.slow
def test_a_read_only_user_can_neither_create_runs_nor_move_the_champion(
    auth_server, clean_env, tmp_path, capsys
):
    url = auth_server.url
    admin = _admin_client(auth_server, clean_env)
    experiment_id = admin.get_experiment_by_name("classification").experiment_id
    run = admin.create_run(experiment_id)
    admin.create_registered_model("guarded")
    admin.create_model_version("guarded", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    capsys.readouterr()  # MLflow's "Waiting up to 300 seconds for model version ..."
    clean_env.delenv("MLFLOW_TRACKING_USERNAME")
    clean_env.delenv("MLFLOW_TRACKING_PASSWORD")

    # the environment's credentials
    clean_env.setenv("MLFLOW_TRACKING_URI", url)
    clean_env.setenv("MLFLOW_TRACKING_USERNAME", READER)
    clean_env.setenv("MLFLOW_TRACKING_PASSWORD", READER_PASSWORD)
    assert main(["prepare", *set_args(tiny_overrides(tmp_path))]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == (
        "error: user 'reader' has no permission to create runs in this experiment on the tracking server "
        f"{url} (HTTP 403): an admin can grant EDIT on the experiment "
        "(docs/serving.md, 'Users and permissions')"
    )
    assert "Traceback" not in out + err and not _leaks(out + err)

    # the URI's credentials
    clean_env.delenv("MLFLOW_TRACKING_USERNAME")
    clean_env.delenv("MLFLOW_TRACKING_PASSWORD")
    clean_env.delenv("MLFLOW_TRACKING_URI")
    assert main(["promote", "guarded", "1", "--tracking-uri", _uri(url, READER, READER_PASSWORD)]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == (
        "error: user 'reader' has no permission to move a registered model's alias on the tracking server "
        f"{url} (HTTP 403): an admin can grant EDIT on the registered model "
        "(docs/serving.md, 'Users and permissions')"
    )
    assert "Traceback" not in out + err and not _leaks(out + err)
    admin = _admin_client(auth_server, clean_env)
    with pytest.raises(MlflowException):
        admin.get_model_version_by_alias("guarded", "champion")
    assert not admin.search_runs([experiment_id], "tags.`mlflow.user` = 'reader'")


@pytest.mark.slow
def test_every_message_naming_the_server_leaves_the_password_out(auth_server, clean_env, tmp_path, capsys):
    from PIL import Image

    url, uri = auth_server.url, _uri(auth_server.url, WRITER, WRITER_PASSWORD)
    missing = "0" * 32
    # a stage reading a run that is not there
    assert main(["evaluate", "--from-run", missing, "--set", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: run {missing} not found in {url}") and not _leaks(err)
    # predict with a model the store lacks
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    argv = ["predict", "--model", f"runs:/{missing}/model", "--input", str(tmp_path / "x.png")]
    assert main([*argv, "--tracking-uri", uri, "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"(tracking URI {url})" in err and not _leaks(err)
    # promote a model the registry lacks
    assert main(["promote", "nope", "1", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no registered model 'nope' in {url}; registered: ") and not _leaks(err)
