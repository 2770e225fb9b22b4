import keras
import numpy as np
import pytest

from cnn_apps import registry
from cnn_apps.classes import check_class_names
from cnn_apps.classification import ImageClassifier
from cnn_apps.errors import ConfigError, ModelArgumentError


def test_keras_save_and_load_give_the_same_outputs(tmp_path):
    model = ImageClassifier(
        5,
        (32, 32, 3),
        class_names=list("abcde"),
        dropout=0.3,
        backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 2)},
    )
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.get_config() == model.get_config()
    assert loaded.class_names == list("abcde")
    assert loaded.backbone.pyramid_outputs == {"P1": "stage1_block1_out", "P2": "stage2_block2_out"}
    assert loaded.backbone.pyramid_outputs["C2"] == "stage2_block2_out"  # the old name is an alias


def test_outputs_are_probabilities_on_raw_pixels():
    model = ImageClassifier(3, (32, 32, 1))
    out = model.predict(np.full((2, 32, 32, 1), 255.0, "float32"), verbose=0)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_width_grows_the_model():
    small = ImageClassifier(4, (32, 32, 3), width=1.0).count_params()
    big = ImageClassifier(4, (32, 32, 3), width=2.0).count_params()
    assert big > 3 * small


def test_registry_names_and_errors():
    assert "resnet_mini" in registry.names("backbone")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'.*resnet_mini"):
        ImageClassifier(4, (32, 32, 3), backbone="resnet9000")
    with pytest.raises(ValueError, match="class names"):
        ImageClassifier(3, (32, 32, 3), class_names=["a"])
    with pytest.raises(ModelArgumentError, match=r"dropout_placement must be one of \('dense'"):
        ImageClassifier(3, (32, 32, 3), dropout_placement="head")


def test_one_class_name_check_for_every_model():
    assert check_class_names(3, None) == ["0", "1", "2"]
    assert check_class_names(3, None, background=True) == ["background", "1", "2"]
    assert check_class_names(2, ("cat", "dog")) == ["cat", "dog"]
    with pytest.raises(
        ModelArgumentError, match=r"^Thing: class_names has 1 class names for num_classes=3: "
    ):
        check_class_names(3, ["a"], owner="Thing")
    with pytest.raises(ModelArgumentError, match=r"\(background included\)"):
        check_class_names(3, ["a", "b"], background=True)
    for bad in (0, -1, 2.5, "3", None):
        with pytest.raises(ModelArgumentError, match="num_classes must be an int >= 1"):
            check_class_names(bad, None)
    # the defaults each model used before
    assert ImageClassifier(3, (32, 32, 3)).class_names == ["0", "1", "2"]
    with pytest.raises(
        ModelArgumentError, match="ImageClassifier: class_names has 4 class names for num_classes=3"
    ):
        ImageClassifier(3, (32, 32, 3), class_names=list("abcd"))


def test_model_argument_errors_are_config_errors_and_value_errors():
    # existing `except ValueError` and the CLI's CnnAppsError handling (exit 2) both catch it
    assert issubclass(ModelArgumentError, ConfigError) and issubclass(ModelArgumentError, ValueError)
    try:
        raise ModelArgumentError("x")
    except ValueError as exc:
        assert isinstance(exc, ConfigError)


def test_a_frozen_backbone_stays_frozen_after_reload(tmp_path):
    model = ImageClassifier(3, (32, 32, 3))
    model.backbone.trainable = False
    model.save(tmp_path / "frozen.keras")
    loaded = keras.saving.load_model(tmp_path / "frozen.keras")
    assert loaded.backbone.trainable is False
    assert len(loaded.trainable_weights) == 2  # the dense head's kernel and bias
