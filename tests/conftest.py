"""Shared fixtures: tiny configs, a temporary MLflow store, no network."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CNN_APPS_OFFLINE"] = "1"  # tests never reach for the internet
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cnn_apps.config import load_config  # noqa: E402

pytest_plugins = ["strict_ci"]  # under CI=true a skipped test fails (tests/strict_ci.py)


def tiny_overrides(tmp_path, **extra) -> list[str]:
    values = {
        "name": "tiny",
        "data.image_size": 32,
        "data.train_size": 48,
        "data.val_size": 16,
        "data.test_size": 16,
        "data.data_dir": str(tmp_path / "data"),
        "training.epochs": 2,
        "training.batch_size": 16,
        "evaluate.batch_size": 16,
        "evaluate.speed_batches": 1,
        "export.dir": str(tmp_path / "exports"),
        "tracking.uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def set_args(overrides) -> list[str]:
    """``["--set", o1, "--set", o2, ...]``: overrides as cnn-apps command-line arguments."""
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.fixture
def tiny_config(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_config(None, tiny_overrides(tmp_path))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("CNN_APPS_OFFLINE", "1")


def saved_model_cli_signatures(path: Path) -> dict:
    """{signature: {"inputs"/"outputs": {name: (dtype, shape)}}} from `saved_model_cli show --all`."""
    cli = Path(sys.executable).with_name("saved_model_cli")
    text = subprocess.run(
        [str(cli), "show", "--all", "--dir", str(path)], capture_output=True, text=True, check=True
    ).stdout
    sigs, current, side = {}, None, None
    for line in text.splitlines():
        if m := re.match(r"signature_def\['(\w+)'\]:", line):
            current = sigs.setdefault(m.group(1), {"inputs": {}, "outputs": {}})
        elif m := re.match(r"\s+(inputs|outputs)\['(\w+)'\] tensor_info:", line):
            side, name = m.groups()
        elif current is not None and (m := re.match(r"\s+dtype: (\w+)", line)):
            dtype = m.group(1)
        elif current is not None and (m := re.match(r"\s+shape: (.*)", line)):
            current[side][name] = (dtype, m.group(1).strip())
    return sigs


def signal_training_after_first_epoch(folder: Path, sets: list[str], sig: int, timeout: float = 300):
    """Run `cnn-apps train SETS` in a subprocess in ``folder``, send it ``sig`` once its first
    epoch is backed up, and wait for it: returns (run id, exit code, output). It watches files
    only: opening the run's SQLite store meanwhile would race the store's set-up."""
    import os
    import time

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnn_apps.cli", "train", *sets],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)  # a tiny model's epoch can take well under a second
            assert proc.poll() is None, proc.stdout.read()
            if backups := list((folder / "checkpoints").glob("*/progress.json")):
                break
        else:
            pytest.fail(f"the train run did not finish an epoch within {timeout:.0f} s")
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return backups[0].parent.name, proc.returncode, output


ROOT = Path(__file__).resolve().parents[1]
# `--set`s (and --config) for a tiny SSD and a tiny FCN-8s on 64 px shapes: the dense tasks the
# scale tests (distribution, precision, resume) train through the CLI
TINY_DENSE = {
    "ssd": [
        "--config",
        str(ROOT / "pipelines" / "configs" / "shapes_ssd.yaml"),
        *set_args(
            [
                "data.image_size=64",
                "model.backbone_args={stage_filters: [8, 16, 16, 32]}",
                "model.architecture_args={feature_levels: [C3, C4], extra_blocks: [32], "
                "s_min: 0.15, s_max: 0.6}",
            ]
        ),
    ],
    "fcn8s": [
        "--config",
        str(ROOT / "pipelines" / "configs" / "shapes_fcn8s.yaml"),
        *set_args(
            [
                "data.image_size=64",
                "model.backbone_args={width: 0.0625}",
                "model.architecture_args={fc_filters: 16, fc_kernel: 1, dropout: 0.0}",
            ]
        ),
    ],
}
