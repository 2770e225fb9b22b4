"""`cnn-apps study segmentation`: the shipped configs build every segmenter at the study's
size, the FCN-order note says what was measured, and a tiny study of two segmenters runs as
nested MLflow runs with its table and plot."""

from pathlib import Path

import pytest
import yaml
from conftest import set_args, tiny_overrides

from cnn_apps.config import load_config
from cnn_apps.stages.config_study import child_config
from cnn_apps.stages.segmenter_study import fcn_order_note

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"


def test_the_shipped_study_builds_every_segmenter(tmp_path):
    from cnn_apps.segmentation.factory import segmenter_from_config

    study = load_config(CONFIGS / "shapes_segmenters.yaml", [f"data.data_dir={tmp_path}"])
    names = []
    for path in study.study.segmenters:
        child = child_config(study, str(ROOT / path))
        model = segmenter_from_config(child, 5)
        assert child.data.image_size % model.stride == 0
        names.append(child.model.architecture)
    assert names == ["fcn32s", "fcn16s", "fcn8s", "segnet", "unet"]


def test_fcn_order_note():
    rows = [
        {"segmenter": "fcn32s", "test_miou": 0.70},
        {"segmenter": "fcn16s", "test_miou": 0.80},
        {"segmenter": "fcn8s", "test_miou": 0.85},
        {"segmenter": "unet", "test_miou": 0.9},
    ]
    assert "holds here" in fcn_order_note(rows) and "fcn8s 85.0" in fcn_order_note(rows)
    rows[1]["test_miou"] = 0.9
    assert "does not hold" in fcn_order_note(rows)
    assert fcn_order_note(rows[3:]) == ""


@pytest.mark.slow
def test_tiny_segmentation_study(tmp_path, monkeypatch, capsys):
    import mlflow

    from cnn_apps.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    children = []
    for name, args in (
        ("shapes_fcn32s.yaml", {"fc_filters": 8, "fc_kernel": 1, "dropout": 0.0}),
        ("shapes_unet.yaml", {"filters": 4, "depth": 2}),
    ):
        values = yaml.safe_load((CONFIGS / name).read_text())  # the child's own model, made tiny
        values["model"]["architecture_args"] = args
        if name.startswith("shapes_fcn"):
            values["model"]["backbone_args"] = {"width": 0.0625}
        values["training"]["epochs"] = 1
        child = tmp_path / name
        child.write_text(yaml.safe_dump(values))
        children.append(str(child))
    sets = tiny_overrides(
        tmp_path,
        **{
            "task": "segmentation",
            "data.image_size": 64,
            "study.segmenters": "[" + ", ".join(children) + "]",
        },
    )
    rc = main(["study", "segmentation", *set_args(sets)])
    out = capsys.readouterr().out
    assert rc == 0, out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("segmentation")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("stage") == "study"][0]
    assert {"fcn32s_miou", "unet_miou", "unet_ms_per_image"} <= set(parent.data.metrics)
    assert {"segmenters.csv", "segmenters.md", "segmenters.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    children_runs = [r for r in runs if r.data.tags.get("study_run") == parent.info.run_id]
    assert sorted(r.data.tags["setting"] for r in children_runs) == ["fcn32s", "unet"]
