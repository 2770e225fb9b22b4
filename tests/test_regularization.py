import keras
import numpy as np
import pytest

from cnn_apps.classification import ImageClassifier, classifier_from_config
from cnn_apps.config import load_config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.study import regularization_setting

SMALL = {"stage_filters": (8, 16), "blocks_per_stage": (1, 1)}


def _layers(model, cls):
    return [layer for layer in model.backbone.layers if isinstance(layer, cls)]


def test_batch_norm_switch_and_conv_dropout_in_the_backbone():
    on = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL)
    off = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL, batch_norm=False)
    assert _layers(on, keras.layers.BatchNormalization) and not _layers(off, keras.layers.BatchNormalization)
    assert all(layer.use_bias for layer in _layers(off, keras.layers.Conv2D))  # no BN: convs need biases
    conv_drop = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL, dropout=0.3, dropout_placement="conv")
    assert len(_layers(conv_drop, keras.layers.Dropout)) == 2  # one per stage
    # none in the head
    assert not [layer for layer in conv_drop.layers if isinstance(layer, keras.layers.Dropout)]
    both = ImageClassifier(
        3, (32, 32, 3), backbone_args=SMALL, dropout=0.3, dropout_placement="both", head_units=[16]
    )
    # before fc1 and output
    assert len([layer for layer in both.layers if isinstance(layer, keras.layers.Dropout)]) == 2


def test_l1_l2_penalties_equal_the_formula():
    model = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL, l1=1e-3, l2=1e-2, head_units=[8])
    kernels = [
        layer.kernel
        for layer in model.backbone.layers + model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    expected = sum(1e-3 * np.abs(k.numpy()).sum() + 1e-2 * np.square(k.numpy()).sum() for k in kernels)
    got = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)
    assert got == pytest.approx(expected, rel=1e-4)
    assert not ImageClassifier(3, (32, 32, 3), backbone_args=SMALL).losses


def test_regularization_penalty_is_part_of_the_training_loss():
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    plain = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL, dropout=0.0)
    heavy = ImageClassifier(3, (32, 32, 3), backbone_args=SMALL, dropout=0.0, l2=1.0)
    heavy.set_weights(plain.get_weights())
    for m in (plain, heavy):
        m.compile("sgd", "sparse_categorical_crossentropy")
    penalty = sum(float(keras.ops.convert_to_numpy(v)) for v in heavy.losses)
    assert heavy.evaluate(x, y, verbose=0) == pytest.approx(
        plain.evaluate(x, y, verbose=0) + penalty, rel=1e-3
    )


def test_config_builds_the_regularized_classifier_and_it_round_trips(tmp_path):
    cfg = load_config(
        None,
        [
            "regularization.l2=0.001",
            "regularization.dropout=0.25",
            "regularization.dropout_placement=both",
            "regularization.batch_norm=false",
            "model.head_units=[16]",
            "model.backbone_args={stage_filters: [8, 16], blocks_per_stage: [1, 1]}",
        ],
    )
    model = classifier_from_config(cfg, 3, (32, 32, 3))
    assert model.l2 == 0.001 and model.batch_norm is False and model.head_units == [16]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_config() == model.get_config()
    x = np.full((2, 32, 32, 3), 100.0, "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_study_settings_switch_tools_on_and_off():
    cfg = load_config(
        None, ["regularization.l1=1e-5", "regularization.l2=1e-4", "regularization.dropout=0.3"]
    )
    none = regularization_setting(cfg, "none")
    assert (none.regularization.l1, none.regularization.l2, none.regularization.dropout) == (0, 0, 0)
    assert none.regularization.batch_norm is False
    combo = regularization_setting(cfg, "batch_norm+dropout")
    assert combo.regularization.batch_norm is True and combo.regularization.dropout == 0.3
    assert combo.regularization.l2 == 0
    everything = regularization_setting(cfg, "all")
    assert everything.regularization.l1 == 1e-5 and everything.regularization.l2 == 1e-4
    assert cfg.regularization.batch_norm is None  # the original is untouched
    with pytest.raises(ConfigError, match="unknown setting"):
        regularization_setting(cfg, "mixup")
    with pytest.raises(ConfigError, match="regularization.l1 must be > 0"):
        regularization_setting(load_config(), "l1")
    partial = regularization_setting(load_config(None, ["regularization.l2=0.01"]), "all")
    assert partial.regularization.l1 == 0 and partial.regularization.l2 == 0.01  # what is configured
