"""Runs that end badly are recorded as such: an exception marks the stage's MLflow run FAILED,
Ctrl-C and SIGTERM KILLED, each with the reason as a tag (never left RUNNING); a NaN loss
stops training with an error naming the epoch; an unreachable tracking server fails in
seconds before any work; secrets never reach the logged params or config."""

import dataclasses
import signal
import socket
import time

import keras
import mlflow
import numpy as np
import pytest
import yaml
from conftest import set_args, signal_training_after_first_epoch, tiny_overrides

from cnn_apps import tracking
from cnn_apps.cli import main
from cnn_apps.config import load_config, mask_secrets
from cnn_apps.errors import DataError, ModelError, TrainingError
from cnn_apps.training.callbacks import FailOnNaN


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_config(None, tiny_overrides(tmp_path))


def _runs(config):
    client = mlflow.MlflowClient(config.tracking.uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    "error, status, reason",
    [
        (ValueError("bad pixel\nsecond line"), "FAILED", "ValueError: bad pixel"),
        (KeyboardInterrupt(), "KILLED", "interrupted (Ctrl-C)"),
        (tracking.Terminated(), "KILLED", "terminated (SIGTERM)"),
    ],
)
def test_a_stage_that_ends_badly_says_how_and_why(config, error, status, reason):
    with pytest.raises(type(error)):
        with tracking.stage_run(config, "train", model="m", dataset="d"):
            raise error
    (run,) = _runs(config)
    assert run.info.status == status and run.data.tags["failure_reason"] == reason
    assert mlflow.active_run() is None


def test_a_failed_child_leaves_its_parent_running_until_the_parent_ends(config):
    with tracking.stage_run(config, "study", model="m", dataset="d") as parent:
        with pytest.raises(RuntimeError):
            with tracking.stage_run(config, "train", model="m", dataset="d", nested=True):
                raise RuntimeError("one setting diverged")
        assert mlflow.active_run().info.run_id == parent.info.run_id
    runs = {r.data.tags["stage"]: r for r in _runs(config)}
    assert runs["train"].info.status == "FAILED" and runs["study"].info.status == "FINISHED"


def test_nan_loss_stops_training_with_an_error_naming_the_batch():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 3), np.float32)
    y = np.ones((8, 1), np.float32)
    y[5] = np.nan  # the second batch of 4
    with pytest.raises(TrainingError, match=r"became nan at epoch 1, batch 2: lower training.learning_rate"):
        model.fit(x, y, batch_size=4, epochs=2, callbacks=[FailOnNaN()], verbose=0)


def test_an_unreachable_tracking_server_fails_fast(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    assert main(["train", *set_args(tiny_overrides(tmp_path))]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"cannot reach the tracking server http://127.0.0.1:{port}" in err
    assert not (tmp_path / "data").exists()  # nothing was prepared


def test_secrets_are_masked_in_params_and_the_logged_config(config):
    assert mask_secrets(
        {
            "db.password": "hunter2",
            "api_key": "k",
            "token": "",
            "keep_difficult": True,
            "uri": "postgresql://mlflow:hunter2@db:5432/mlflow",
            "nested": {"secret": "s"},
        }
    ) == {
        "db.password": "***",
        "api_key": "***",
        "token": "",
        "keep_difficult": True,
        "uri": "postgresql://mlflow:***@db:5432/mlflow",
        "nested": {"secret": "***"},
    }
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, path="https://reader:hunter2@data.example.com/shapes.zip"),
    )
    with tracking.stage_run(config, "prepare", model="m", dataset="d") as run:
        pass
    logged = mlflow.MlflowClient(config.tracking.uri).get_run(run.info.run_id)
    assert logged.data.params["data.path"] == "https://reader:***@data.example.com/shapes.zip"
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert "hunter2" not in text and yaml.safe_load(text)["data"]["path"].startswith("https://reader:***@")


@pytest.mark.slow
def test_sigterm_marks_the_training_run_killed(tmp_path):
    sets = set_args(tiny_overrides(tmp_path, **{"training.epochs": 200, "data.train_size": 256}))
    run_id, returncode, output = signal_training_after_first_epoch(
        tmp_path, sets, signal.SIGTERM, timeout=240
    )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert returncode == 143, output
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "terminated (SIGTERM)"


# ---------------------------------------------------------------------- loading models safely
def _lambda_model(path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    model.save(path)
    return model


def test_keras_files_with_code_load_only_with_unsafe_load(tmp_path, monkeypatch):
    path = tmp_path / "lambda.keras"
    _lambda_model(path)
    monkeypatch.delenv("CNN_APPS_UNSAFE_LOAD", raising=False)
    with pytest.raises(ModelError, match="holds code .* pass --unsafe-load"):
        tracking.load_keras_file(path)
    monkeypatch.setenv("CNN_APPS_UNSAFE_LOAD", "1")
    loaded = tracking.load_keras_file(path)
    np.testing.assert_allclose(loaded.predict(np.ones((1, 3)), verbose=0), 2.0)


def test_mlflow_models_with_code_load_only_with_unsafe_load(config, monkeypatch):
    monkeypatch.delenv("CNN_APPS_UNSAFE_LOAD", raising=False)
    tracking.setup(config)
    with mlflow.start_run():
        uri = tracking.log_keras_model(
            _lambda_model(config.export.dir + ".keras"), np.ones((2, 3), np.float32)
        )
    with pytest.raises(ModelError, match="pass --unsafe-load"):
        tracking.load_keras_model(uri)
    monkeypatch.setenv("CNN_APPS_UNSAFE_LOAD", "1")
    assert tracking.load_keras_model(uri).predict(np.ones((1, 3)), verbose=0)[0, 0] == 2.0


def test_offline_tfds_fails_in_seconds_naming_the_local_alternative(tmp_path, monkeypatch):
    from cnn_apps.data import sources

    with socket.socket() as s:  # a closed local port stands in for an unreachable download host
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("CNN_APPS_OFFLINE", raising=False)
    monkeypatch.setattr("cnn_apps.data.sources.online._TFDS_HOST", ("127.0.0.1", port))
    config = load_config(
        None, tiny_overrides(tmp_path, **{"data.source": "tfds", "data.tfds_name": "cifar10"})
    )
    start = time.monotonic()
    with pytest.raises(DataError, match="offline. Fix: .*data.source=folder"):
        sources.get_source(config).prepare()
    assert time.monotonic() - start < 10
