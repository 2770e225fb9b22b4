"""The split-class transfer study after Yosinski et al. 2014: the source is one half of the digits'
classes, the target the other half; every mode runs once per seed and the summary is checked
against NumPy over the per-seed rows; the layer curve's AnB / BnB networks carry, by value, the
first k blocks of the source / of the network trained on the target, and train the rest."""

import csv
import io
import re

import keras
import numpy as np
import pytest
from conftest import set_args, tiny_overrides

from cnn_apps.classification import ImageClassifier
from cnn_apps.classification.transfer import backbone_blocks, copy_first_blocks
from cnn_apps.cli import main
from cnn_apps.errors import ConfigError

SMALL = {"stage_filters": (8, 16, 16), "blocks_per_stage": (1, 1, 1)}


def test_copy_first_blocks_copies_and_freezes_exactly_the_first_k():
    source = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL)
    keras.utils.set_random_seed(1)
    target = ImageClassifier(5, (32, 32, 3), backbone_args=SMALL)
    names = copy_first_blocks(source, target, 2)
    blocks_src, blocks_dst = backbone_blocks(source.backbone), backbone_blocks(target.backbone)
    assert names == list(blocks_dst)[:2]
    for name, layers in blocks_dst.items():
        same = all(
            np.array_equal(a, b)
            for s, t in zip(blocks_src[name], layers)
            for a, b in zip(s.get_weights(), t.get_weights())
        )
        assert same == (name in names), name
        assert all(layer.trainable == (name not in names) for layer in layers), name
    with pytest.raises(ConfigError, match=r"give 1\.\.4 \(the backbone's blocks: stem, "):
        copy_first_blocks(source, target, 5)


def _table(parent_id, name):
    import mlflow

    return list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent_id}/{name}"))))


def test_mode_training_overrides_one_modes_training_and_names_bad_keys():
    """study.mode_training gives the scratch and fine_tune children their own budgets; the other
    modes keep the training section, the seed stays the child's, and an unknown key is a
    ConfigError listing the valid ones."""
    from cnn_apps.config import load_config
    from cnn_apps.stages.transfer_study import _check, child_config

    config = load_config("pipelines/configs/transfer_fashion_split.yaml")
    assert config.study.mode_training == {
        "scratch": {"epochs": 140, "early_stopping_patience": 20},
        "fine_tune": {"early_stopping_patience": 20},
    }
    scratch = child_config(config, 5, 5, 2, "scratch")
    tuned = child_config(config, 5, 5, 2, "fine_tune")
    frozen = child_config(config, 5, 5, 2, "feature_extraction")
    assert (scratch.training.epochs, scratch.training.early_stopping_patience) == (140, 20)
    assert (tuned.training.epochs, tuned.training.early_stopping_patience) == (40, 20)
    assert (frozen.training.epochs, frozen.training.early_stopping_patience) == (40, 5)
    assert scratch.training.seed == tuned.training.seed == frozen.training.seed == 2
    assert scratch.training.learning_rate == 0.001
    assert config.training.epochs == 40  # the study's own config is untouched
    bad = load_config(
        "pipelines/configs/transfer_fashion_split.yaml", ["study.mode_training={scratch: {epoch: 9}}"]
    )
    with pytest.raises(ConfigError, match=r"study.mode_training.scratch: .*epoch.*epochs"):
        _check(bad)
    with pytest.raises(ConfigError, match="unknown mode 'finetune'"):
        _check(load_config(None, ["study.mode_training={finetune: {epochs: 1}}"]))

    # study.mode_finetune does the same for the finetune section: fine_tune's head phase gets its
    # own rate while feature_extraction's head keeps the section's
    recipe = "study.mode_finetune={fine_tune: {learning_rate: 0.001, reinit_blocks: 1}}"
    config = load_config("pipelines/configs/transfer_fashion_split.yaml", [recipe])
    _check(config)
    tuned = child_config(config, 5, 20, 1, "fine_tune")
    frozen = child_config(config, 5, 20, 1, "feature_extraction")
    assert (tuned.finetune.mode, tuned.finetune.learning_rate, tuned.finetune.reinit_blocks) == (
        "fine_tune",
        0.001,
        1,
    )
    assert (frozen.finetune.mode, frozen.finetune.learning_rate, frozen.finetune.reinit_blocks) == (
        "feature_extraction",
        0.01,
        0,
    )
    assert tuned.training.early_stopping_patience == 20  # mode_training still applies
    bad = load_config(None, ["study.mode_finetune={fine_tune: {learning_rat: 0.1}}"])
    with pytest.raises(ConfigError, match=r"study.mode_finetune.fine_tune: .*learning_rat.*learning_rate"):
        _check(bad)


@pytest.mark.slow
def test_split_class_study_with_seeds_and_the_layer_curve(tmp_path, capsys, monkeypatch):
    import mlflow

    from cnn_apps import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(
        tmp_path,
        **{
            "data.source": "digits",
            "data.classes": "[5,6,7,8,9]",
            "data.image_size": 16,
            "data.channels": 3,
            "model.backbone_args": "{stage_filters: [8, 16, 16], blocks_per_stage: [1, 1, 1]}",
            "training.epochs": 1,
            "finetune.epochs": 1,
            "finetune.fine_tune_epochs": 1,
            "study.modes": "[scratch,feature_extraction]",
            "study.examples_per_class": "[3]",
            "study.seeds": "[0,1]",
            "study.source_data": "{classes: [0,1,2,3,4]}",
            "study.source_epochs": 2,
            "study.layer_curve_blocks": "[2]",
            "study.layer_curve_examples": 3,
        },
    )
    assert main(["study", "transfer", *set_args(sets)]) == 0
    parent_id = capsys.readouterr().out.strip().splitlines()[-1].split()[1]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    mlflow.set_tracking_uri(client.tracking_uri)
    parent = client.get_run(parent_id)
    assert parent.data.metrics["source_classes"] == 5
    source_run = parent.data.tags["source_model_run"]
    source = tracking.load_keras_model(source_run)
    assert source.class_names == ["0", "1", "2", "3", "4"]

    rows = _table(parent_id, "results.csv")
    assert sorted((r["mode"], r["seed"]) for r in rows) == [
        ("feature_extraction", "0"),
        ("feature_extraction", "1"),
        ("scratch", "0"),
        ("scratch", "1"),
    ]
    assert {r["train_examples"] for r in rows} == {"15"}  # 3 per class of the 5 target classes
    for summary in _table(parent_id, "summary.csv"):
        values = [float(r["test_accuracy"]) for r in rows if r["mode"] == summary["mode"]]
        assert float(summary["test_accuracy_mean"]) == pytest.approx(np.mean(values), abs=1e-4)
        assert float(summary["test_accuracy_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    # the two seeds drew different target subsets (their prepare runs have other fingerprints)
    scratch = {r["seed"]: r["run_id"] for r in rows if r["mode"] == "scratch"}
    data_runs = {seed: client.get_run(run).data.tags["data_run"] for seed, run in scratch.items()}
    fingerprints = {client.get_run(run).data.params.get("data.subset_seed") for run in data_runs.values()}
    assert len(set(data_runs.values())) == 2 and fingerprints == {"0", "1"}
    target = tracking.load_keras_model(scratch["0"])
    assert target.class_names == ["5", "6", "7", "8", "9"]

    curve = _table(parent_id, "layer_curve.csv")
    assert sorted((r["network"], r["copied_blocks"], r["seed"]) for r in curve) == sorted(
        (net, "2", seed) for net in ("AnB", "BnB") for seed in ("0", "1")
    )
    assert len(_table(parent_id, "layer_curve_summary.csv")) == 2
    for r in curve:
        k = int(r["copied_blocks"])
        model = tracking.load_keras_model(r["run_id"])
        origin = source if r["network"] == "AnB" else tracking.load_keras_model(scratch[r["seed"]])
        assert client.get_run(r["run_id"]).data.tags["source_run"] == (
            source_run if r["network"] == "AnB" else scratch[r["seed"]]
        )
        ours, theirs = backbone_blocks(model.backbone), backbone_blocks(origin.backbone)
        for i, name in enumerate(ours):
            same = all(
                np.array_equal(a, b)
                for s, t in zip(theirs[name], ours[name])
                for a, b in zip(s.get_weights(), t.get_weights())
            )
            assert same == (i < k), (r["network"], k, name)  # copied frozen below k, trained above
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"transfer.png", "layer_curve.png", "results.md"} <= artifacts

    # study.source_run: a second study transfers from the first one's source without training one
    again = [*sets, f"study.source_run={source_run}", "study.seeds=[0]", "study.layer_curve_blocks=[]"]
    experiments = [e.experiment_id for e in client.search_experiments()]
    trained = len(client.search_runs(experiments, "tags.stage = 'train'"))
    assert trained >= 1  # the first study's source
    assert main(["study", "transfer", *set_args(again)]) == 0
    second = client.get_run(capsys.readouterr().out.strip().splitlines()[-1].split()[1])
    assert second.data.tags["source_model_run"] == source_run
    assert second.data.metrics["source_test_accuracy"] == parent.data.metrics["source_test_accuracy"]
    assert len(client.search_runs(experiments, "tags.stage = 'train'")) == trained
    for change, message in (
        ("model.width=2", r"has another model: model.width=1.0 \(the study's: 2.0\)"),
        ("study.source_data={classes: [0,1,2]}", "was trained on other data"),
    ):
        assert main(["study", "transfer", *set_args([*again, change])]) == 2
        assert re.search(message, capsys.readouterr().err), change
