"""A tiny study end to end: one parent run, nested children, comparison table and plot."""

import pytest
from conftest import set_args, tiny_overrides

from cnn_apps.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "kind, extra, children",
    [
        (
            "regularization",
            ["regularization.l2=1e-3", "regularization.dropout=0.3", "study.settings=[none,l2,all]"],
            ["none", "l2", "all"],
        ),
        ("learning-curve", ["study.train_sizes=[16,48]"], ["16", "48"]),
    ],
)
def test_study_makes_a_parent_with_one_child_per_setting(
    kind, extra, children, tmp_path, capsys, monkeypatch
):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(tmp_path, **{"training.epochs": 1}) + extra
    assert main(["study", kind, *set_args(sets)]) == 0
    parent_id = capsys.readouterr().out.strip().splitlines()[-1].split()[1]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(parent_id)
    assert parent.data.tags["stage"] == "study" and parent.data.tags["study"] == kind
    kids = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(k.data.tags["setting"] for k in kids) == sorted(children)
    for kid in kids:
        assert (
            kid.data.tags["stage"] == "train"
            and kid.data.tags["source_run"] == parent.data.tags["source_run"]
        )
        assert kid.data.tags["diagnosis"] in (
            "good_fit",
            "high_bias",
            "high_variance",
            "high_bias_and_variance",
        )
        assert {"bias", "variance", "final_train_error"} <= set(kid.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"results.csv", "results.md", f"{kind}.png"} <= artifacts
    table = mlflow.artifacts.load_text(f"runs:/{parent_id}/results.csv").splitlines()
    assert table[0].startswith("setting,train_error,val_error") and len(table) == 1 + len(children)
    if kind == "learning-curve":
        sizes = {k.data.tags["setting"]: k.data.metrics["train_examples"] for k in kids}
        assert sizes == {"16": 16, "48": 48}


def test_transfer_study_trains_a_source_then_one_child_per_mode(tmp_path, capsys, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(
        tmp_path,
        **{
            "data.source": "digits",
            "data.image_size": 16,
            "data.channels": 3,
            "training.epochs": 1,
            "finetune.epochs": 1,
            "finetune.fine_tune_epochs": 1,
            "study.modes": "[shallow,fine_tune]",
            "study.examples_per_class": "[3]",
            "study.source_data": "{source: shapes, train_size: 32, val_size: 16, test_size: 16}",
            "study.source_epochs": 1,
        },
    )
    assert main(["study", "transfer", *set_args(sets)]) == 0
    parent_id = capsys.readouterr().out.strip().splitlines()[-1].split()[1]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(parent_id)
    source_run = parent.data.tags["source_model_run"]
    kids = client.search_runs([parent.info.experiment_id], filter_string=f"tags.study_run = '{parent_id}'")
    assert sorted(k.data.tags["setting"] for k in kids) == ["fine_tune@3/seed0", "shallow@3/seed0", "source"]
    assert parent.data.metrics["source_classes"] == 4  # the shapes source's own test split scored
    assert 0 <= parent.data.metrics["source_test_accuracy"] <= 1
    kids = [k for k in kids if k.info.run_id != source_run]
    for kid in kids:
        assert kid.data.tags["source_run"] == source_run and kid.data.metrics["train_examples"] == 30
    table = mlflow.artifacts.load_text(f"runs:/{parent_id}/results.csv").splitlines()
    assert (
        table[0].startswith("mode,examples_per_class,seed,train_examples,test_accuracy") and len(table) == 3
    )
    assert "transfer.png" in {a.path for a in client.list_artifacts(parent_id)}
