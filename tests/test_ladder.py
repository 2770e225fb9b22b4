"""The detector speed ladder: child configs share the ladder's data, the time per image
counts proposals, and a tiny ladder of two detectors runs as nested MLflow runs."""

import json
import sys
from pathlib import Path

import pytest
from conftest import set_args, tiny_overrides

from cnn_apps.config import load_config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.config_study import child_config
from cnn_apps.stages.ladder import time_per_image_ms

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"


def test_children_share_the_ladders_data(tmp_path):
    ladder = load_config(
        None,
        [
            "task=detection",
            "data.image_size=80",
            "data.train_size=10",
            f"data.data_dir={tmp_path}",
            "detection.score_threshold=0.2",
        ],
    )
    child = child_config(ladder, str(CONFIGS / "shapes_ssd.yaml"))
    assert child.model.architecture == "ssd" and child.data.image_size == 80 and child.data.train_size == 10
    assert child.detection.score_threshold == 0.2
    assert (
        child.training.epochs == load_config(CONFIGS / "shapes_ssd.yaml").training.epochs
    )  # its own training
    with pytest.raises(ConfigError, match="no such config"):
        child_config(ladder, "nope.yaml")
    with pytest.raises(ConfigError, match="not a detection config"):
        child_config(ladder, str(CONFIGS / "shapes_classification.yaml"))


def test_time_per_image_counts_proposals():
    assert time_per_image_ms({"test_latency_ms": 3.0}) == (3.0, 0.0)
    assert time_per_image_ms({"test_latency_ms": 43.0, "test_proposal_ms": 40.0}) == (43.0, 40.0)
    # batch 1 for every detector: R-CNN's batched seconds per image is not its latency
    assert time_per_image_ms(
        {"test_seconds_per_image": 1.5, "test_latency_ms": 1700.0, "test_proposal_ms": 40.0}
    ) == (1700.0, 40.0)
    with pytest.raises(ConfigError, match="test_latency_ms"):
        time_per_image_ms({"test_map50": 0.5})


@pytest.mark.slow
def test_tiny_ladder(tmp_path, monkeypatch, capsys):
    import mlflow

    from cnn_apps.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    import yaml

    children = []
    for name, args in (
        ("shapes_yolo.yaml", {"head": "conv", "head_filters": 8, "grid": 4}),
        ("shapes_ssd.yaml", {"feature_levels": ["C3", "C4"], "extra_blocks": [32]}),
    ):
        values = yaml.safe_load((CONFIGS / name).read_text())  # the child's own model, made tiny
        values["model"]["backbone_args"] = {"stage_filters": [8, 16, 16, 32]}
        values["model"]["architecture_args"] = args
        values["training"]["epochs"] = 1
        child = tmp_path / name
        child.write_text(yaml.safe_dump(values))
        children.append(str(child))
    sets = tiny_overrides(
        tmp_path,
        **{"task": "detection", "data.image_size": 64, "study.detectors": "[" + ", ".join(children) + "]"},
    )
    args = ["study", "detectors", *set_args(sets)]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("detection")
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "study"][0]
    assert {"yolo_v1_speedup", "ssd_speedup", "yolo_v1_map50"} <= set(parent.data.metrics)
    assert parent.data.metrics["yolo_v1_speedup"] == pytest.approx(1.0)
    assert {"ladder.csv", "ladder.md", "ladder.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }

    # benchmarks/ladder.py times the study's trained detectors side by side
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ladder as bench

    out_json = tmp_path / "ladder.json"
    result = bench.main(
        [
            "--study",
            parent.info.run_id,
            "--images",
            "2",
            "--rounds",
            "1",
            "--out",
            str(out_json),
            *set_args(s for s in sets if s.startswith("tracking.")),
        ]
    )
    assert [d["detector"] for d in result["detectors"]] == ["yolo_v1", "ssd"]
    assert result["detectors"][0]["speedup_vs_first"] == 1.0
    assert all(d["ms_per_image"] > 0 for d in result["detectors"])
    assert json.loads(out_json.read_text())["study_run"] == parent.info.run_id


def test_the_shipped_ladder_builds_every_detector(tmp_path):
    """Every rung of the shipped ladder builds at the ladder's shared image size."""
    from cnn_apps.detection.factory import detector_from_config
    from cnn_apps.tasks.region_detection import is_region_detector, region_detector_from_config

    ladder = load_config(CONFIGS / "shapes_detector_ladder.yaml", [f"data.data_dir={tmp_path}"])
    names = []
    for path in ladder.study.detectors:
        child = child_config(ladder, str(ROOT / path))
        assert child.data.image_size == 112
        name = child.model.architecture
        names.append(name)
        if is_region_detector(name):
            region_detector_from_config(child, ["a", "b", "c", "d"])
        else:
            assert detector_from_config(child, 4).image_size == 112
    assert names == ["rcnn", "sppnet", "fast_rcnn", "faster_rcnn", "yolo_v1", "ssd"]
