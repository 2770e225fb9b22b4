"""Transfer learning: freezing by block (checked by value), BN in inference mode, the four
finetune modes through the CLI, a pretext source, weights files and the ImageNet offline error."""

import time

import keras
import numpy as np
import pytest
from conftest import set_args, tiny_overrides

from cnn_apps.classification import ImageClassifier
from cnn_apps.classification.transfer import backbone_blocks, freeze_batch_norm, unfreeze_top_blocks
from cnn_apps.cli import main

SMALL = {"stage_filters": (8, 16, 16), "blocks_per_stage": (1, 1, 1)}


def _data(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), np.arange(n) % 3


def _snapshot(layers):
    return {layer.name: [w.numpy().copy() for w in layer.weights] for layer in layers}


def test_blocks_are_found_by_name_in_graph_order():
    model = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL)
    assert list(backbone_blocks(model.backbone)) == [
        "stem",
        "stage1_block1",
        "stage2_block1",
        "stage3_block1",
    ]
    vgg = ImageClassifier(3, (32, 32, 3), backbone="vgg16")
    assert list(backbone_blocks(vgg.backbone)) == [f"block{i}" for i in range(1, 6)]


def test_only_the_top_blocks_and_the_head_change_and_bn_statistics_stay():
    model = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL, dropout=0.0)
    top = unfreeze_top_blocks(model, 1)
    assert top == ["stage3_block1"]
    blocks = backbone_blocks(model.backbone)
    frozen = [layer for name, layers in blocks.items() if name != "stage3_block1" for layer in layers]
    bn = [
        layer
        for layers in blocks.values()
        for layer in layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    trainable_convs = [layer for layer in blocks["stage3_block1"] if isinstance(layer, keras.layers.Conv2D)]
    before = _snapshot(frozen + bn + trainable_convs + [model.get_layer("probabilities")])
    x, y = _data()
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = _snapshot(frozen + bn + trainable_convs + [model.get_layer("probabilities")])
    for layer in frozen + bn:  # frozen blocks and every BN (weights and moving statistics) by value
        for a, b in zip(before[layer.name], after[layer.name]):
            np.testing.assert_array_equal(a, b, err_msg=layer.name)
    for layer in trainable_convs + [model.get_layer("probabilities")]:
        assert not np.array_equal(before[layer.name][0], after[layer.name][0]), layer.name


def test_frozen_batch_norm_runs_in_inference_mode():
    model = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL, dropout=0.0)
    freeze_batch_norm(model)
    x, _ = _data(4)
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-5)


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*args, sets=()):
        all_sets = tiny_overrides(tmp_path, **dict(s.split("=", 1) for s in sets))
        rc = main([*args, *set_args(all_sets)])
        captured = capsys.readouterr()
        assert rc == 0, captured.err[-2000:]
        return captured.out.strip().splitlines()[-1].split()[1]

    run.uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    run.tmp = tmp_path
    return run


@pytest.mark.slow
def test_the_four_modes_from_a_pretext_source(cli):
    import mlflow

    from cnn_apps import tracking

    pretext = cli("train", sets=["task=pretext"])
    client = mlflow.MlflowClient(cli.uri)
    mlflow.set_tracking_uri(cli.uri)
    assert tracking.load_keras_model(pretext).class_names == ["rot0", "rot90", "rot180", "rot270"]
    assert client.get_run(pretext).data.metrics["train_examples"] == 4 * 48  # four rotations per image
    base = tracking.load_keras_model(pretext)
    modes = {}
    for mode in ("feature_extraction", "shallow", "fine_tune", "scratch"):
        modes[mode] = cli(
            "finetune",
            "--from-run",
            pretext,
            sets=[
                f"finetune.mode={mode}",
                "finetune.epochs=1",
                "finetune.fine_tune_epochs=1",
                "training.epochs=1",
            ],
        )
    for mode, run_id in modes.items():
        run = client.get_run(run_id)
        assert run.data.tags["finetune_mode"] == mode and run.data.tags["source_run"] == pretext
        assert run.data.tags["diagnosis"] and "bias" in run.data.metrics
        model = tracking.load_keras_model(run_id)
        assert model.class_names == ["circle", "square", "triangle", "star"]
        same = all(
            np.array_equal(a, b) for a, b in zip(base.backbone.get_weights(), model.backbone.get_weights())
        )
        assert same == (mode in ("feature_extraction", "shallow")), mode  # frozen base: unchanged by value
    ft = client.get_run(modes["fine_tune"]).data
    assert ft.metrics["fine_tune_params_trainable"] > ft.metrics["head_params_trainable"] > 0
    assert "head_diagnosis" in ft.tags and ft.params["unfrozen_blocks"]
    shallow = client.get_run(modes["shallow"])
    assert shallow.data.tags.get("sklearn_model_uri")
    assert cli("evaluate", "--from-run", modes["shallow"])  # the shallow model evaluates like the others
    assert cli("export", "--from-run", modes["fine_tune"])


def _from_weights_file(cli, *sets):
    """(source classifier, finetune run id): a backbone weights file as the source."""
    model = ImageClassifier(4, (32, 32, 3))
    path = cli.tmp / "backbone.weights.h5"
    model.backbone.save_weights(path)
    return model, cli(
        "finetune", sets=["finetune.source=weights", f"finetune.weights={path}", "finetune.epochs=1", *sets]
    )


@pytest.mark.slow
def test_a_backbone_weights_file_is_a_source(cli):
    model, run_id = _from_weights_file(cli, "finetune.mode=feature_extraction")
    import mlflow

    from cnn_apps import tracking

    mlflow.set_tracking_uri(cli.uri)
    tuned = tracking.load_keras_model(run_id)
    for a, b in zip(model.backbone.get_weights(), tuned.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_fine_tune_with_the_top_blocks_reinitialized(cli):
    """finetune.reinit_blocks=1: the backbone's blocks below the top one are the source's, frozen
    (with no block unfrozen in phase 2 they end equal to it by value); the top block starts from
    random weights and trains with the head in phase 1 (its parameters count as trainable)."""
    import mlflow

    from cnn_apps import tracking

    model, run_id = _from_weights_file(
        cli,
        "finetune.mode=fine_tune",
        "finetune.reinit_blocks=1",
        "finetune.unfreeze_blocks=0",
        "finetune.fine_tune_epochs=1",
    )
    mlflow.set_tracking_uri(cli.uri)
    tuned = tracking.load_keras_model(run_id)
    source_blocks, tuned_blocks = backbone_blocks(model.backbone), backbone_blocks(tuned.backbone)
    top = list(tuned_blocks)[-1]
    for name, layers in tuned_blocks.items():
        same = all(
            np.array_equal(a, b)
            for s, t in zip(source_blocks[name], layers)
            for a, b in zip(s.get_weights(), t.get_weights())
        )
        assert same == (name != top), name
    run = mlflow.MlflowClient(cli.uri).get_run(run_id).data
    assert run.params["reinit_block_names"] == top
    head = tuned.count_params() - tuned.backbone.count_params()
    top_trainable = sum(int(np.prod(w.shape)) for t in source_blocks[top] for w in t.trainable_weights)
    assert run.metrics["head_params_trainable"] == head + top_trainable


def test_reinit_blocks_must_leave_a_block_from_the_source():
    from cnn_apps.errors import ConfigError
    from cnn_apps.stages.finetune import _copied_below

    model = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL)
    assert _copied_below(model, 1) == len(backbone_blocks(model.backbone)) - 1
    for bad in (-1, len(backbone_blocks(model.backbone))):
        with pytest.raises(ConfigError, match=r"finetune.reinit_blocks: give 0\.\.3 .*stem"):
            _copied_below(model, bad)


def test_imagenet_weights_offline_fail_fast_and_say_how_to_pass_a_file(
    tmp_path, capsys, monkeypatch, offline
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(tmp_path, **{"finetune.source": "imagenet", "model.backbone": "vgg16"})
    start = time.perf_counter()
    assert main(["finetune", *set_args(sets)]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert "offline" in err and "finetune.weights=" in err


def test_finetune_needs_a_source(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--set", f"tracking.uri=sqlite:///{tmp_path}/m.db"]) == 2
    assert "--from-run" in capsys.readouterr().err
