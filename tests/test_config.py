from pathlib import Path

import pytest

from cnn_apps.config import Config, load_config
from cnn_apps.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "pipelines" / "configs").glob("*.yaml"))


def test_defaults_are_a_complete_config():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.task == "classification"
    assert cfg.flat()["training.epochs"] == cfg.training.epochs


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: exp\ntraining:\n  epochs: 7\n  learning_rate: 1\n")
    cfg = load_config(
        path, ["training.epochs=3", "data.image_size=48", "model.backbone_args={stem_filters: 8}"]
    )
    assert cfg.name == "exp"
    assert cfg.training.epochs == 3
    assert cfg.training.learning_rate == 1.0 and isinstance(cfg.training.learning_rate, float)
    assert cfg.data.image_size == 48
    assert cfg.model.backbone_args == {"stem_filters": 8}
    assert load_config(None, ["regularization.l2=1e-4"]).regularization.l2 == 1e-4  # YAML 1.1 says str


def test_unknown_key_names_it_and_lists_the_valid_ones(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("training:\n  epocs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "training.epocs" in msg and "Did you mean 'epochs'" in msg
    assert "batch_size" in msg and "learning_rate" in msg  # the valid keys
    assert str(path) in msg


def test_unknown_override_and_section():
    with pytest.raises(ConfigError, match="unknown config key 'trainig'"):
        load_config(None, ["trainig.epochs=3"])
    with pytest.raises(ConfigError, match="unknown config key 'data.imagesize'"):
        load_config(None, ["data.imagesize=3"])


def test_wrong_types_and_choices():
    with pytest.raises(ConfigError, match="training.epochs: expected int, got str"):
        load_config(None, ["training.epochs=three"])
    with pytest.raises(ConfigError, match="augment.flip: expected bool"):
        load_config(None, ["augment.flip=3"])
    with pytest.raises(ConfigError, match="'rmsprop' is not one of"):
        load_config(None, ["training.optimizer=rmsprop"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(None, ["training.epochs"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_fingerprint_follows_data_not_location():
    a = load_config(None, ["data.data_dir=/tmp/a"])
    b = load_config(None, ["data.data_dir=/tmp/b"])
    c = load_config(None, ["data.seed=1"])
    assert a.data_fingerprint() == b.data_fingerprint() != c.data_fingerprint()
