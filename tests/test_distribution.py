"""training.distribution and training.mixed_precision: MirroredStrategy over two logical CPU
devices trains a tiny classifier to the single-device result (the global batch split in two,
batch norm synchronized); mixed precision trains with float32 variables and a float32 head;
multi_worker is refused with the reason."""

import os
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest
from conftest import TINY_DENSE, set_args, tiny_overrides

from cnn_apps.cli import main
from cnn_apps.config import load_config
from cnn_apps.errors import ConfigError
from cnn_apps.training import distribute

pytestmark = pytest.mark.slow


def _train(tmp_path, env_extra, **overrides):
    """`cnn-apps train` in a fresh process (logical CPU devices are fixed at TensorFlow's start)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    sets = set_args(
        tiny_overrides(tmp_path, **{"training.epochs": 2, "regularization.dropout": 0.0, **overrides})
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(
        [sys.executable, "-m", "cnn_apps.cli", "train", *sets],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, **env_extra},
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_id = out.stdout.strip().splitlines()[-1].split()[1]
    return mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_run(run_id)


SAME_STEPS = """
import json, sys
import numpy as np, tensorflow as tf, keras
from cnn_apps.classification import ImageClassifier
from cnn_apps.config import TrainingConfig
from cnn_apps.training import distribute
from cnn_apps.training.fit import compile_classifier

distribute.split_cpu(2)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (64, 32, 32, 3)).astype("float32")
y = rng.integers(0, 3, 64)
out = {}
for name in ("none", "mirrored"):
    cfg = TrainingConfig(distribution=name, optimizer="sgd", learning_rate=0.05, lr_schedule="constant")
    keras.utils.set_random_seed(0)
    with distribute.training_scope(cfg) as strategy:
        model = ImageClassifier(3, (32, 32, 3), dropout=0.0,  # each replica draws its own Dropout masks
                                backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)})
        distribute.synchronize_batch_norm(model)
        compile_classifier(model, cfg, steps_per_epoch=4)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # global batch 16: 8 per replica
        history = model.fit(data, epochs=2, verbose=0)
    out[name] = {"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"],
                 "weights": float(sum(np.abs(w).sum() for w in model.get_weights()))}
json.dump(out, sys.stdout)
"""


def test_mirrored_over_two_cpu_replicas_takes_the_single_device_steps():
    """The same data in the same order: two replicas with half the global batch each (and
    synchronized batch norm) make the steps one device makes on the whole batch."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "CNN_APPS_CPU_REPLICAS"}
    done = subprocess.run(
        [sys.executable, "-c", SAME_STEPS], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["none"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
    np.testing.assert_allclose(out["mirrored"]["loss"], out["none"]["loss"], rtol=1e-4)
    assert out["mirrored"]["weights"] == pytest.approx(out["none"]["weights"], rel=1e-4)


def test_mirrored_through_the_cli(tmp_path):
    """`training.distribution: mirrored` end to end: the training stream's shuffle and
    augmentation seeds are fixed per epoch, so the strategy's copy of the pipeline yields the
    same batches and two replicas end where one device does."""
    single = _train(tmp_path / "one", {})
    mirrored = _train(
        tmp_path / "two", {"CNN_APPS_CPU_REPLICAS": "2"}, **{"training.distribution": "mirrored"}
    )
    assert single.data.metrics["replicas"] == 1 and mirrored.data.metrics["replicas"] == 2
    assert mirrored.data.params["training.distribution"] == "mirrored"
    for key in ("best_val_loss", "best_val_accuracy", "final_train_error"):
        assert mirrored.data.metrics[key] == pytest.approx(single.data.metrics[key], rel=1e-3, abs=1e-4), key


def test_mixed_precision_trains_with_float32_variables_and_head(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = set_args(
        tiny_overrides(tmp_path, **{"training.epochs": 1, "training.mixed_precision": "mixed_bfloat16"})
    )
    assert main(["train", *sets]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[1]
    assert keras.config.dtype_policy().name == "float32"  # restored after the stage
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    from cnn_apps import tracking

    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["dtype_policy"] == "mixed_bfloat16"  # trained in bfloat16
    model = tracking.load_keras_model(run_id)  # float32 variables: it reloads as a float32 model
    conv = next(layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D))
    assert conv.kernel.dtype == "float32"
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(-1), 1, atol=1e-3)
    assert np.isfinite(run.data.metrics["best_val_loss"])


def test_multi_worker_needs_tf_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = load_config(None, tiny_overrides(tmp_path, **{"training.distribution": "multi_worker"}))
    with pytest.raises(ConfigError, match="multi_worker needs TF_CONFIG on every worker"):
        distribute.strategy_for(config.training)


@pytest.mark.parametrize("kind", ["classifier", "ssd"])
def test_two_workers_on_loopback_train_like_one(kind, tmp_path, capsys, monkeypatch):
    """Two `cnn-apps train` processes joined by TF_CONFIG on 127.0.0.1 (one CPU replica each,
    half of every global batch each) end where a single process does: a classifier, and a
    detector (its loss normalizers summed over the workers' replicas)."""
    import json
    import socket

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    overrides = {"training.epochs": 2, "regularization.dropout": 0.0}
    model = TINY_DENSE.get(kind, [])
    assert main(["prepare", *set_args(tiny_overrides(tmp_path, **overrides)), *model]) == 0
    prepared = capsys.readouterr().out.strip().splitlines()[-1].split()[1]
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TF_CONFIG")}
    command = [sys.executable, "-m", "cnn_apps.cli", "train", "--from-run", prepared]
    workers = [
        subprocess.Popen(
            [
                *command,
                *set_args(tiny_overrides(tmp_path, **overrides, **{"training.distribution": "multi_worker"})),
                *model,
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **env,
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            },
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    single = subprocess.run(
        [*command, *set_args(tiny_overrides(tmp_path, **overrides)), *model],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run_of = lambda out: client.get_run(out.strip().splitlines()[-1].split()[1])  # noqa: E731
    chief, other, alone = run_of(outputs[0]), run_of(outputs[1]), run_of(single.stdout)
    assert chief.data.tags["worker"] == "0" and other.data.tags["worker"] == "1"
    assert chief.data.metrics["replicas"] == 2 and alone.data.metrics["replicas"] == 1
    keys = (
        ("best_val_loss", "train_loss")
        if kind == "ssd"
        else ("best_val_loss", "best_val_accuracy", "final_train_error")
    )
    for key in keys:
        assert chief.data.metrics[key] == pytest.approx(alone.data.metrics[key], rel=1e-3, abs=1e-4), key
        assert other.data.metrics[key] == pytest.approx(chief.data.metrics[key], rel=1e-6, abs=1e-7), key


def test_linear_lr_scaling_multiplies_by_the_replicas(tmp_path):
    config = load_config(None, tiny_overrides(tmp_path, **{"training.lr_scaling": "linear"}))
    assert distribute.scaled_learning_rate(config.training, 0.01) == 0.01  # one replica outside a strategy


def _fit_tiny(cfg, steps: int = 4):
    """A tiny classifier trained a few steps under ``cfg``'s scope: (model, per-epoch losses)."""
    from cnn_apps.classification import ImageClassifier
    from cnn_apps.training.fit import compile_classifier

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (steps * 8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, steps * 8)
    keras.utils.set_random_seed(0)
    with distribute.training_scope(cfg):
        model = ImageClassifier(
            3, (32, 32, 3), dropout=0.0, backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)}
        )
        compile_classifier(model, cfg, steps_per_epoch=steps)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model, history.history["loss"]


def test_mixed_float16_scales_the_loss_and_keeps_a_float32_head():
    from cnn_apps.config import TrainingConfig

    model, losses = _fit_tiny(TrainingConfig(mixed_precision="mixed_float16", lr_schedule="constant"))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # added by compile for float16
    assert model.get_layer("probabilities").dtype_policy.name == "float32"
    conv = next(layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == "float32"
    assert np.all(np.isfinite(losses))
    _, reference = _fit_tiny(TrainingConfig(lr_schedule="constant"))
    np.testing.assert_allclose(losses, reference, rtol=0.05)  # float16 compute: close, not equal
    assert keras.config.dtype_policy().name == "float32"


def test_jit_compile_trains_to_the_same_losses():
    from cnn_apps.config import TrainingConfig

    compiled, losses = _fit_tiny(TrainingConfig(jit_compile=True, lr_schedule="constant"))
    assert compiled.jit_compile is True
    plain, reference = _fit_tiny(TrainingConfig(jit_compile=False, lr_schedule="constant"))
    assert plain.jit_compile is False
    np.testing.assert_allclose(losses, reference, rtol=1e-3)
