"""prepare -> train -> evaluate -> export (and finetune) through the CLI, against a
temporary MLflow store, checking what a user would look for in MLflow."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import set_args, tiny_overrides

from cnn_apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = set_args(tiny_overrides(tmp_path))

    def run(*args):
        rc = main([*args, *sets])
        out = capsys.readouterr().out
        assert rc == 0, out
        last = out.strip().splitlines()[-1]
        assert last.startswith("run_id: "), out
        return last.split()[1]

    run.uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    return run


def _artifacts(client, run_id):
    return {a.path for a in client.list_artifacts(run_id)}


def test_stages_link_up_in_mlflow_and_export_serves(cli, tmp_path, monkeypatch, capsys):
    import mlflow

    prep = cli("prepare")
    train = cli("train", "--from-run", prep)
    ev = cli("evaluate", "--from-run", train)
    exp = cli("export", "--from-run", train)

    client = mlflow.MlflowClient(cli.uri)
    runs = {rid: client.get_run(rid) for rid in (prep, train, ev, exp)}
    assert [runs[r].data.tags["stage"] for r in (prep, train, ev, exp)] == [
        "prepare",
        "train",
        "evaluate",
        "export",
    ]
    assert runs[train].data.tags["source_run"] == prep
    assert runs[ev].data.tags["source_run"] == train and runs[exp].data.tags["source_run"] == train
    fingerprints = {r.data.tags["dataset_fingerprint"] for r in runs.values()}
    assert len(fingerprints) == 1
    assert all(r.data.tags["git_commit"] for r in runs.values())
    assert runs[train].info.run_name == "train:resnet_mini:shapes"
    assert {client.get_experiment(r.info.experiment_id).name for r in runs.values()} == {"classification"}
    assert runs[train].data.params["training.epochs"] == "2"

    assert runs[prep].data.metrics["count_train"] == 48
    assert {"dataset.json", "config.yaml", "samples.png", "class_balance.png"} <= _artifacts(client, prep)

    history = client.get_metric_history(train, "val_loss")
    assert [m.step for m in history] == [0, 1]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "learning_rate"):
        assert len(client.get_metric_history(train, key)) == 2
    assert {"learning_curves.png", "dataset.json", "config.yaml"} <= _artifacts(client, train)

    metrics = runs[ev].data.metrics
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_images_per_s"] > 0
    assert metrics["test_examples"] == 16
    assert {"confusion_matrix.png", "confusion_matrix.json", "per_class.csv"} <= _artifacts(client, ev)

    # the export: TF Serving layout, self-check logged, reload equals the Keras model
    export_path = Path(runs[exp].data.tags["export_path"])
    assert export_path == tmp_path / "exports" / "tiny" / "1"
    assert runs[exp].data.metrics["export_max_abs_diff"] < 1e-4
    from cnn_apps import tracking

    mlflow.set_tracking_uri(cli.uri)
    model = tracking.load_keras_model(train)
    x = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    served = tf.saved_model.load(str(export_path)).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(served["probabilities"].numpy(), model.predict(x, verbose=0), atol=1e-5)

    # the registry: a version per export, newest at models:/tiny@latest, the evaluated one champion
    version = client.get_model_version("tiny", "1")
    assert version.tags["export_path"] == str(export_path) and version.tags["source_run"] == train
    assert version.tags["evaluate_run"] == ev
    assert float(version.tags["metric.test_accuracy"]) == pytest.approx(metrics["test_accuracy"], rel=1e-5)
    assert runs[exp].data.tags["champion"] == "true" and "champion" in version.aliases
    latest = mlflow.tensorflow.load_model("models:/tiny@latest")
    np.testing.assert_allclose(latest.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    exp2 = cli("export", "--from-run", train)  # the same score does not beat the champion
    assert client.get_run(exp2).data.tags["export_path"].endswith(os.path.join("tiny", "2"))
    assert client.get_run(exp2).data.tags["champion"] == "false"
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny", "latest").version) == "2"

    # one command exports, registers and serves: `serve --from-run` hands over to the model server
    served_with = {}
    monkeypatch.setattr(os, "execvpe", lambda file, cmd, env: served_with.update(cmd=cmd, env=env))
    assert main(["serve", "--from-run", train, "--port", "5099", *set_args(tiny_overrides(tmp_path))]) == 0
    assert "registered models:/tiny/3" in capsys.readouterr().out
    assert served_with["cmd"][1:5] == ["-m", "cnn_apps.serving.model_server", "--model", "models:/tiny/3"]
    assert served_with["env"]["MLFLOW_TRACKING_URI"] == cli.uri and "5099" in served_with["cmd"]

    # finetune as feature extraction: backbone weights unchanged by value, head changed
    ft = cli(
        "finetune",
        "--from-run",
        train,
        "--set",
        "finetune.mode=feature_extraction",
        "--set",
        "finetune.epochs=1",
    )
    tuned = tracking.load_keras_model(ft)
    for a, b in zip(model.backbone.get_weights(), tuned.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    head = lambda m: m.get_layer("probabilities").get_weights()[0]  # noqa: E731
    assert not np.allclose(head(model), head(tuned))
    ft_run = client.get_run(ft)
    assert ft_run.data.tags["source_run"] == train
    assert ft_run.data.metrics["head_params_frozen"] > 0


def test_train_without_a_prepare_run_prepares_first(cli):
    import mlflow

    train = cli("train")
    client = mlflow.MlflowClient(cli.uri)
    source = client.get_run(client.get_run(train).data.tags["source_run"])
    assert source.data.tags["stage"] == "prepare"


def test_errors_are_one_line_with_exit_code_2(cli, capsys):
    assert main(["train", "--set", "training.epocs=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'training.epocs'" in err and "Traceback" not in err
    assert (
        main(
            ["evaluate", "--from-run", "0123456789abcdef0123456789abcdef", "--set", f"tracking.uri={cli.uri}"]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    prep = cli("prepare")
    assert main(["export", "--from-run", prep, "--set", f"tracking.uri={cli.uri}"]) == 2
    assert "is a 'prepare' run" in capsys.readouterr().err


def test_pipeline_script_and_mlproject_entry_point(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
    }
    sets = tiny_overrides(tmp_path)
    out = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "prepare.py"), *set_args(sets)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("run_id: ")

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(ROOT / "mlflow"),
            "-e",
            "prepare",
            "--env-manager",
            "local",
            "--experiment-name",
            "classification",
            "-P",
            "overrides=" + " ".join(sets),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "run_id: " in out.stdout
