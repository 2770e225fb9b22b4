"""``cnn-apps train --resume``: a training process killed with SIGKILL mid-training is resumed
in the same MLflow run from its last backed-up epoch and ends with the metrics of a run that
was never interrupted."""

import signal

import mlflow
import numpy as np
import pytest
from conftest import set_args, signal_training_after_first_epoch, tiny_overrides

from cnn_apps.cli import main

pytestmark = pytest.mark.slow
EPOCHS = 4


def _overrides(tmp_path):
    return set_args(
        tiny_overrides(
            tmp_path,
            **{
                "training.epochs": EPOCHS,
                "data.train_size": 192,
                "training.checkpoint_dir": str(tmp_path / "checkpoints"),
            },
        )
    )


def _run_id(out: str) -> str:
    return out.strip().splitlines()[-1].split()[1]


def _client(tmp_path):
    return mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


def test_a_killed_training_resumes_to_the_uninterrupted_result(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
    monkeypatch.chdir(reference)
    assert main(["train", *_overrides(reference)]) == 0
    expected = _client(reference).get_run(_run_id(capsys.readouterr().out))

    run_id, _, _ = signal_training_after_first_epoch(killed, _overrides(killed), signal.SIGKILL)
    client = _client(killed)
    epochs_done = len(client.get_metric_history(run_id, "val_loss"))
    assert 1 <= epochs_done < EPOCHS and client.get_run(run_id).info.status == "RUNNING"

    monkeypatch.chdir(killed)
    assert main(["train", "--resume", run_id, *_overrides(killed)]) == 0
    assert _run_id(capsys.readouterr().out) == run_id  # the same MLflow run, continued
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed"] == "1"
    assert not (killed / "checkpoints" / run_id).exists()  # the backup goes once the run is done

    history = client.get_metric_history(run_id, "val_loss")
    # one value per epoch (an epoch logged just before the kill but not yet backed up is logged twice, alike)
    got = {m.step: m.value for m in history}
    want = {m.step: m.value for m in _client(reference).get_metric_history(expected.info.run_id, "val_loss")}
    assert sorted(got) == list(range(EPOCHS))
    # the epochs before the kill are the uninterrupted run's, to the bit: same seed, same data, same state
    np.testing.assert_array_equal([got[e] for e in range(epochs_done)], [want[e] for e in range(epochs_done)])
    np.testing.assert_allclose([got[e] for e in range(EPOCHS)], [want[e] for e in range(EPOCHS)], rtol=1e-4)
    for key in ("best_val_loss", "best_val_accuracy", "best_epoch", "final_train_error"):
        assert resumed.data.metrics[key] == pytest.approx(expected.data.metrics[key], rel=1e-4, abs=1e-6), key


def test_resume_refuses_a_finished_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = set_args(tiny_overrides(tmp_path, **{"training.epochs": 1}))
    assert main(["train", *sets]) == 0
    run_id = _run_id(capsys.readouterr().out)
    assert main(["train", "--resume", run_id, *sets]) == 2
    assert f"train run {run_id} finished; there is nothing to resume" in capsys.readouterr().err
