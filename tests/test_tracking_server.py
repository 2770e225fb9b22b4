"""The pipeline against a real MLflow tracking server over HTTP (not a SQLite file).

A session fixture starts ``mlflow server`` on a free loopback port (SQLite backend, artifacts
proxied by the server into its own folder, one worker, no job runner), runs the tiny
classification pipeline (``cnn-apps all``) against it, and stops it by its process id at the
end of the session; the UI test (test_mlflow_ui.py) looks at the same runs."""

from pathlib import Path

import pytest
from mlflow_server import pipeline_on_server, port_is_open, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def on_server(request, tmp_path_factory):
    return pipeline_on_server(request, tmp_path_factory)


def _artifact_paths(client, run_id, path=None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_pipeline_runs_land_on_the_server_over_http(on_server, tmp_path):
    import mlflow

    server, runs = on_server.server, on_server.runs
    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    got = {stage: client.get_run(run_id) for stage, run_id in runs.items()}
    assert {s: r.data.tags["stage"] for s, r in got.items()} == {s: s for s in runs}
    assert got["train"].data.tags["source_run"] == runs["prepare"]
    assert got["evaluate"].data.tags["source_run"] == runs["train"]
    assert got["export"].data.tags["source_run"] == runs["train"]
    assert got["train"].info.run_name == "train:resnet_mini:shapes"
    experiment = client.get_experiment(got["train"].info.experiment_id)
    assert experiment.name == "classification"

    # metrics
    assert got["prepare"].data.metrics["count_train"] == 48
    assert [m.step for m in client.get_metric_history(runs["train"], "val_loss")] == [0, 1]
    assert 0 <= got["evaluate"].data.metrics["test_accuracy"] <= 1
    assert got["export"].data.metrics["export_max_abs_diff"] < 1e-4

    # artifacts, listed through the server
    assert {"dataset.json", "config.yaml", "samples.png"} <= _artifact_paths(client, runs["prepare"])
    assert {"learning_curves.png", "config.yaml"} <= _artifact_paths(client, runs["train"])
    assert {"confusion_matrix.png", "per_class.csv"} <= _artifact_paths(client, runs["evaluate"])

    # the registered model version, and the model it points at loads over HTTP
    version = client.get_model_version("tiny", "1")
    assert version.run_id == runs["train"] and version.tags["source_run"] == runs["train"]
    assert Path(version.tags["export_path"]) == on_server.exports_dir / "tiny" / "1"
    assert (on_server.exports_dir / "tiny" / "1" / "saved_model.pb").is_file()
    model_files = client.get_model_version_download_uri("tiny", "1")
    assert model_files.startswith("mlflow-artifacts:/"), model_files  # the model went through the server too
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=model_files, dst_path=str(tmp_path / "model"), tracking_uri=server.url
        )
    )
    assert (local / "MLmodel").is_file()


def test_artifacts_go_through_the_server_not_the_client_disk(on_server, tmp_path):
    import mlflow

    server, runs = on_server.server, on_server.runs
    client = mlflow.MlflowClient(tracking_uri=server.url)
    train = client.get_run(runs["train"])
    # the server hands out proxied locations: the client never sees a file path
    assert train.info.artifact_uri.startswith("mlflow-artifacts:/"), train.info.artifact_uri
    assert client.get_experiment(train.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    # ... and the files are in the server's artifact folder
    stored = list(server.artifacts_dir.rglob("learning_curves.png"))
    assert any(runs["train"] in p.parts for p in stored), stored
    # nothing was written where the client ran (no ./mlruns, ./mlartifacts or ./mlflow.db)
    leftovers = {p.name for p in on_server.client_dir.iterdir()}
    assert not leftovers & {"mlruns", "mlartifacts", "mlflow.db"}, leftovers
    # a download over HTTP gives the server's bytes
    got = Path(client.download_artifacts(runs["train"], "learning_curves.png", str(tmp_path)))
    original = next(p for p in stored if runs["train"] in p.parts)
    assert got.read_bytes() == original.read_bytes()
    assert got.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_server_helper_stops_by_process_group_and_reports_its_log(tmp_path):
    server = start_server(tmp_path / "s")
    assert port_is_open(server.port)
    assert stop_server(server) is not None
    assert not port_is_open(server.port)
    # a server that cannot start fails with its log in the message
    bad = [
        "server",
        "--backend-store-uri",
        "nosuchscheme://x",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "--workers",
        "1",
    ]
    with pytest.raises(RuntimeError, match="its log"):
        start_server(tmp_path / "bad", argv=bad, port=server.port, timeout=60)
