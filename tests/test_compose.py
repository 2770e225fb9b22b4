"""mlflow/compose.yaml without a Docker engine: the file is valid YAML naming paths that exist,
every published port is on 127.0.0.1, TF Serving's model config lists the exports, the tracking
server runs MLflow's basic-auth app with its admin password in an env file kept out of git, and
the `mlflow server` command line of the compose file starts here, with its auth config (SQLite
instead of PostgreSQL)."""

import configparser
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow_server import free_port, request, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "mlflow" / "compose.yaml"
TF_SERVING_IMAGE = "tensorflow" + "/serving"  # spelt apart: this file is not a place that names it


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the environment left empty: the defaults."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def _options(command: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs of a command line (``None`` for a flag without a value)."""
    out, i = {}, 0
    while i < len(command):
        arg = command[i]
        if arg.startswith("--"):
            nxt = command[i + 1] if i + 1 < len(command) else None
            if nxt is None or nxt.startswith("--"):
                out[arg] = None
            else:
                out[arg] = nxt
                i += 1
        i += 1
    return out


def test_services_volumes_and_paths(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "tf-serving"}
    named = set(compose["volumes"])
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], f"{name} has no healthcheck"
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                host = (COMPOSE.parent / source).resolve()
                if host == ROOT / "exports":  # made by `cnn-apps export`; the config's default folder
                    from cnn_apps.config import load_config

                    assert load_config(None, []).export.dir == "exports"
                else:
                    assert host.exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    assert services["postgres"]["volumes"][0].startswith("postgres-data:")
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["tf-serving"]["entrypoint"][-1] == "/cnn-apps/tf_serving.sh"
    assert "./tf_serving.sh:/cnn-apps/tf_serving.sh:ro" in services["tf-serving"]["volumes"]
    assert "../exports:/models:ro" in services["tf-serving"]["volumes"]


def test_ports_are_published_on_loopback_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and _interpolate(port).startswith("127.0.0.1:"), (name, port)
            published[name] = published.get(name, []) + [_interpolate(port)]
    assert "postgres" not in published  # only the mlflow service reaches it, on the compose network
    assert published["mlflow"] == ["127.0.0.1:5000:5000"]
    assert "127.0.0.1:8501:8501" in published["tf-serving"]


def test_mlflow_image_matches_the_client_and_has_a_postgres_driver(compose):
    import mlflow

    build = compose["services"]["mlflow"]["build"]["dockerfile_inline"]
    assert f"FROM ghcr.io/mlflow/mlflow:v{mlflow.__version__}" in build
    assert "psycopg2" in build
    assert f"'mlflow[auth]=={mlflow.__version__}'" in build  # the basic-auth app needs Flask-WTF
    options = _options(compose["services"]["mlflow"]["command"])
    assert _interpolate(options["--backend-store-uri"]).startswith(
        "postgresql+psycopg2://mlflow:mlflow@postgres:5432/"
    )
    assert "--serve-artifacts" in options
    artifacts_volume = next(
        v for v in compose["services"]["mlflow"]["volumes"] if v.startswith("mlflow-artifacts:")
    )
    assert options["--artifacts-destination"] == artifacts_volume.split(":")[1]
    env = compose["services"]["mlflow"]["environment"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def _auth_config(compose) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read_string(_interpolate(compose["configs"]["basic-auth"]["content"]))
    return parser["mlflow"]


def test_the_tracking_server_runs_basic_auth_with_its_secrets_out_of_git(compose):
    service = compose["services"]["mlflow"]
    command = [str(arg) for arg in service["command"]]
    assert _options(command)["--app-name"] == "basic-auth"
    # the auth app's config: mounted where MLFLOW_AUTH_CONFIG_PATH says; READ for a new user
    (mount,) = service["configs"]
    assert mount["source"] == "basic-auth"
    assert service["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == mount["target"]
    auth = _auth_config(compose)
    assert auth["default_permission"] == "READ"
    assert auth["admin_username"] == "admin"
    assert "admin_password" not in auth  # the password is not in the compose file ...
    assert auth["database_uri"].startswith("postgresql+psycopg2://mlflow:mlflow@postgres:5432/")
    # ... but in an env file git ignores, of which an example with empty values is in git
    assert service["env_file"] == ["auth.env"]
    example = COMPOSE.parent / "auth.env.example"
    values = dict(
        line.split("=", 1) for line in example.read_text().splitlines() if line and not line.startswith("#")
    )
    assert values == {"MLFLOW_AUTH_ADMIN_PASSWORD": "", "MLFLOW_FLASK_SERVER_SECRET_KEY": ""}
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", "mlflow/auth.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "mlflow/auth.env is not in .gitignore"
    assert (
        subprocess.run(["git", "check-ignore", "--quiet", "mlflow/auth.env.example"], cwd=ROOT).returncode
        == 1
    )


def test_tf_serving_image_is_named_only_in_the_compose_file(compose):
    """One place says which TF Serving image runs: the compose file (a README or script shows
    `docker compose ... up tf-serving`). The SignatureDef method name "<image>/predict" and links
    such as github.com/<image> are not the image."""
    assert compose["services"]["tf-serving"]["image"].startswith(TF_SERVING_IMAGE + ":")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    image = re.compile(r"(?<![\w./-])" + re.escape(TF_SERVING_IMAGE) + r"(?![\w/-])")
    naming = set()
    for name in listed:
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            try:
                if image.search(path.read_text()):
                    naming.add(name)
            except UnicodeDecodeError:
                continue
    assert naming == {"mlflow/compose.yaml"}, (
        f"{sorted(naming - {'mlflow/compose.yaml'})} name TF Serving's image: start it with "
        "`docker compose -f mlflow/compose.yaml up tf-serving` instead"
    )


def test_tf_serving_model_config_lists_each_export(tmp_path):
    exports = tmp_path / "exports"
    for name, version in [
        ("shapes-classifier", 1),
        ("shapes-classifier", 2),
        ("shapes-yolov8", 1),
        ("shapes-unet", 3),
    ]:
        (exports / name / str(version)).mkdir(parents=True)
        (exports / name / str(version) / "saved_model.pb").write_bytes(b"")
    (exports / "not-exported-yet").mkdir()  # no version folder: not listed (TF Serving would wait on it)
    out = subprocess.run(
        ["bash", str(ROOT / "mlflow" / "tf_serving.sh"), "--print-config", str(exports)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("model_config_list {") and out.rstrip().endswith("}")
    configs = re.findall(
        r'config \{\s*name: "([^"]+)"\s*base_path: "([^"]+)"\s*model_platform: "tensorflow"\s*\}', out
    )
    assert configs == [(n, str(exports / n)) for n in ("shapes-classifier", "shapes-unet", "shapes-yolov8")]
    empty = subprocess.run(
        ["bash", str(ROOT / "mlflow" / "tf_serving.sh"), "--print-config", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert empty.split() == ["model_config_list", "{", "}"]


@pytest.mark.slow  # a basic-auth server takes 10-40 s to start
def test_the_compose_mlflow_server_command_starts_here_with_sqlite(compose, tmp_path, monkeypatch):
    """The compose file's `mlflow server` line, all its flags kept, with SQLite instead of
    PostgreSQL (runs and users), a temporary folder for the artifact volume, and loopback
    instead of 0.0.0.0; its auth config and the env file's two variables as compose gives them."""
    import mlflow

    command = [_interpolate(str(arg)) for arg in compose["services"]["mlflow"]["command"]]
    assert command[:2] == ["mlflow", "server"]
    port = free_port()
    artifacts = tmp_path / "mlartifacts"
    replace = {
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": str(artifacts),
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    argv = command[1:]
    for i, arg in enumerate(argv[:-1]):
        if arg in replace:
            argv[i + 1] = replace.pop(arg)
    assert not replace, f"the compose command has no {sorted(replace)}"
    auth = configparser.ConfigParser()
    auth.read_string(_interpolate(compose["configs"]["basic-auth"]["content"]))
    auth["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    with open(tmp_path / "basic_auth.ini", "w") as f:
        auth.write(f)
    admin_password = "compose-admin-" + secrets.token_hex(4)
    env = {
        **compose["services"]["mlflow"]["environment"],
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,  # what auth.env gives the container
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    server = start_server(tmp_path, argv=argv, port=port, env=env, timeout=240)
    try:
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert request(server, "GET", search)[0] == 401  # no credentials
        assert request(server, "GET", search, auth=("admin", "not-" + admin_password))[0] == 401
        assert request(server, "GET", "/health")[0] == 200  # the compose healthcheck's URL stays open
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        client = mlflow.MlflowClient(server.url)
        exp = client.create_experiment("compose-check")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "m", 1.0)
        (tmp_path / "note.txt").write_text("through the server")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert [p.read_text() for p in artifacts.rglob("note.txt")] == ["through the server"]
        assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    finally:
        stop_server(server)
