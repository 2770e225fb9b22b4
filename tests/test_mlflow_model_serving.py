"""``mlflow models serve`` on a registered classifier and segmenter: a real server process on a
loopback port, a real HTTP request with the body docs/serving.md documents, answers equal to the
Keras model's."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from cnn_apps import tracking
from cnn_apps.classification import ImageClassifier
from cnn_apps.segmentation.unet import UNet
from cnn_apps.serving.model_server import serve_command, serve_environment
from cnn_apps.serving.registry import register_export

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 60) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


def _serve(command: list[str], env: dict, port: int, log: Path):
    """Start a model server; returns (process, base URL) once /ping answers."""
    out = open(log, "w")
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{command[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    _stop(proc)
    pytest.fail(f"{command[:3]} did not answer /ping within 180 s:\n{log.read_text()[-3000:]}")


def _stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)

    def register(name, model, task, metric):
        experiment = mlflow.set_experiment(task).experiment_id
        sample = np.zeros((2, 32, 32, 3), np.float32)
        with mlflow.start_run(experiment_id=experiment, tags={"stage": "train"}) as train:
            model_uri = tracking.log_keras_model(model, sample)
        with mlflow.start_run(
            experiment_id=experiment, tags={"stage": "evaluate", "source_run": train.info.run_id}
        ):
            mlflow.log_metric(metric, 0.9)
        result = register_export(
            name,
            mlflow.get_run(train.info.run_id),
            model_uri,
            task=task,
            export_path=str(tmp_path / name / "1"),
            export_version=1,
        )
        assert result["champion"]
        return f"models:/{name}@champion"

    register.uri = uri
    return register


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)


def test_registered_classifier_and_segmenter_are_served_over_loopback(registry, tmp_path):
    classifier = ImageClassifier(
        3,
        (32, 32, 3),
        class_names=["circle", "square", "star"],
        backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)},
    )
    segmenter = UNet(3, image_size=32, filters=4, depth=2, class_names=["background", "circle", "square"])
    cases = [
        (registry("shapes-classifier", classifier, "classification", "test_accuracy"), classifier),
        (registry("shapes-unet", segmenter, "segmentation", "test_miou"), segmenter),
    ]
    images = _images()
    env = serve_environment(registry.uri)
    for model_uri, model in cases:
        port = _free_port()
        if model is classifier:  # through `cnn-apps serve`, which runs the command below
            command = [
                sys.executable,
                "-m",
                "cnn_apps.cli",
                "serve",
                "--model",
                model_uri,
                "--port",
                str(port),
            ]
        else:  # MLflow's own command, as docs/serving.md shows it
            command = serve_command(model_uri, port=port)
            assert command[1:] == [
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ]
        proc, url = _serve(command, env, port, tmp_path / f"serve-{model.name}.log")
        try:
            # the request of docs/serving.md: {"inputs": (B, H, W, 3) raw pixels as nested lists}
            reply = _post(f"{url}/invocations", {"inputs": images.astype(int).tolist()})
        finally:
            _stop(proc)
        got = np.asarray(reply["predictions"], np.float32)
        want = np.asarray(model.predict(images, verbose=0))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)
