"""The MLflow registry: what export registers (signature, metric tags), the champion alias
moving only when the evaluate run beats it, ``latest`` resolving to the newest version,
and ``cnn-apps promote``."""

import mlflow
import numpy as np
import pytest

from cnn_apps import tracking
from cnn_apps.classification import ImageClassifier
from cnn_apps.cli import main
from cnn_apps.errors import TrackingError
from cnn_apps.serving.registry import CHAMPION, alias_version, promote, register_export


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("classification").experiment_id
    model = ImageClassifier(
        3,
        (32, 32, 3),
        class_names=["circle", "square", "star"],
        backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)},
    )
    with mlflow.start_run(experiment_id=experiment):
        model_uri = tracking.log_keras_model(model, np.zeros((2, 32, 32, 3), np.float32))
    return {"uri": uri, "experiment": experiment, "model_uri": model_uri}


def _source(store, accuracy=None, train_loss=0.5):
    """A finished train run, and an evaluate run of it scoring ``accuracy`` (None: not evaluated)."""
    with mlflow.start_run(experiment_id=store["experiment"], tags={"stage": "train"}) as train:
        mlflow.log_metric("train_loss", train_loss)
    if accuracy is not None:
        with mlflow.start_run(
            experiment_id=store["experiment"], tags={"stage": "evaluate", "source_run": train.info.run_id}
        ):
            mlflow.log_metric("test_accuracy", accuracy)
    return mlflow.get_run(train.info.run_id)


def _register(store, source, version):
    return register_export(
        "shapes-classifier",
        source,
        store["model_uri"],
        task="classification",
        export_path=f"/exports/shapes-classifier/{version}",
        export_version=version,
    )


def test_champion_moves_only_to_a_better_evaluated_version(store):
    client = mlflow.MlflowClient()
    first = _register(store, _source(store, accuracy=0.90), 1)
    assert first["champion"] and first["version"] == 1 and "first version" in first["champion_decision"]

    worse = _register(store, _source(store, accuracy=0.80), 2)
    assert not worse["champion"] and "does not beat champion version 1" in worse["champion_decision"]
    unevaluated = _register(store, _source(store), 3)
    assert not unevaluated["champion"] and "no evaluate run" in unevaluated["champion_decision"]
    assert str(alias_version("shapes-classifier", CHAMPION).version) == "1"

    better = _register(store, _source(store, accuracy=0.95), 4)
    assert better["champion"] and "beats champion version 1" in better["champion_decision"]
    assert str(client.get_model_version_by_alias("shapes-classifier", CHAMPION).version) == "4"
    # 'latest' is MLflow's own alias: always the newest version
    assert str(client.get_model_version_by_alias("shapes-classifier", "latest").version) == "4"

    version = client.get_model_version("shapes-classifier", "2")
    assert version.tags["metric.test_accuracy"] == "0.8" and version.tags["metric.train_loss"] == "0.5"
    assert version.tags["main_metric"] == "test_accuracy" and version.tags["export_version"] == "2"
    assert version.tags["champion_decision"] == worse["champion_decision"]


def test_a_tie_does_not_move_the_champion(store):
    # 4/9 at full precision: a score read back rounded (0.444444) once made the tie "beat" it
    first = _register(store, _source(store, accuracy=4 / 9), 1)
    tie = _register(store, _source(store, accuracy=4 / 9), 2)
    assert first["champion"] and not tie["champion"]
    assert "does not beat champion version 1" in tie["champion_decision"]
    assert str(alias_version("shapes-classifier", CHAMPION).version) == "1"
    slightly_better = _register(store, _source(store, accuracy=4 / 9 + 1e-9), 3)
    assert slightly_better["champion"]


def test_registered_version_has_the_models_signature(store):
    _register(store, _source(store, accuracy=0.9), 1)
    info = mlflow.models.get_model_info("models:/shapes-classifier@champion")
    inputs = info.signature.inputs.to_dict()
    assert list(inputs[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3]


def test_promote_moves_the_alias_and_names_what_is_wrong(store, capsys):
    for version, accuracy in ((1, 0.9), (2, 0.8)):
        _register(store, _source(store, accuracy=accuracy), version)
    assert main(["promote", "shapes-classifier", "2"]) == 0
    assert "models:/shapes-classifier@champion -> version 2 (was version 1)" in capsys.readouterr().out
    assert str(alias_version("shapes-classifier", CHAMPION).version) == "2"

    with pytest.raises(TrackingError, match="has no version 7; versions: 1, 2"):
        promote("shapes-classifier", 7)
    with pytest.raises(TrackingError, match="no registered model 'nope'.*registered: shapes-classifier"):
        promote("nope", 1)
    assert main(["promote", "shapes-classifier", "1", "--alias", "latest"]) == 2
    assert "'latest' is MLflow's own" in capsys.readouterr().err
