"""Segmentation through the CLI: prepare -> train -> evaluate -> export on tiny shapes data
for each shipped segmenter config (made tiny), checking what a user looks for in MLflow and
in exports/: per-epoch mIoU, the test metrics and artifacts, and masks served from encoded
images and raw pixels of any size."""

from pathlib import Path

import numpy as np
import pytest
from conftest import set_args, tiny_overrides

from cnn_apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = {
    "shapes_fcn8s.yaml": [
        "model.backbone_args={width: 0.0625}",
        "model.architecture_args={fc_filters: 16, fc_kernel: 1, dropout: 0.0}",
    ],
    "shapes_segnet.yaml": ["model.architecture_args={width: 0.0625, repeats: [1, 1, 1, 1, 1]}"],
    "shapes_unet.yaml": ["model.architecture_args={filters: 4, depth: 2}"],
}


@pytest.mark.parametrize("config", sorted(TINY))
def test_segmenter_pipeline(config, tmp_path, capsys, monkeypatch):
    import mlflow
    import tensorflow as tf

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(tmp_path, **{"data.image_size": 64}) + TINY[config]
    rc = main(["all", "--config", str(ROOT / "pipelines" / "configs" / config), *set_args(sets)])
    out = capsys.readouterr().out
    assert rc == 0, out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = {
        r.data.tags["stage"]: r
        for r in client.search_runs([client.get_experiment_by_name("segmentation").experiment_id])
    }
    assert set(runs) == {"prepare", "train", "evaluate", "export"}
    train, evaluate = runs["train"], runs["evaluate"]
    assert {
        "train_loss",
        "val_loss",
        "train_miou",
        "val_miou",
        "best_val_miou",
        "best_val_pixel_accuracy",
    } <= set(train.data.metrics)
    assert len(client.get_metric_history(train.info.run_id, "val_miou")) == 2
    for name in (
        "test_miou",
        "test_pixel_accuracy",
        "test_mean_accuracy",
        "test_fw_iou",
        "test_iou_background",
        "test_images_per_s",
        "test_latency_ms",
    ):
        assert np.isfinite(evaluate.data.metrics[name]), name
    assert 0.0 <= evaluate.data.metrics["test_miou"] <= 1.0
    assert evaluate.data.tags["source_run"] == train.info.run_id
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"per_class_iou.csv", "segmentation_report.md", "test_segmentations.png"} <= artifacts
    # the export serves masks: raw pixels at any size come back at that size, files at the model's
    path = runs["export"].data.tags["export_path"]
    assert runs["export"].data.metrics["export_max_abs_diff"] <= 1e-4
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](images=tf.zeros((2, 80, 48, 3)))
    assert out["class_map"].shape == (2, 80, 48) and out["probabilities"].shape == (2, 80, 48, 5)
    assert out["class_names"].shape == (2, 5) and out["class_names"].numpy()[1, 0] == b"background"
    image = tf.io.encode_png(tf.zeros((80, 80, 3), tf.uint8))
    result = loaded.signatures["serve_bytes"](images=tf.stack([image]))
    assert result["class_map"].shape == (1, 64, 64) and result["class_map"].dtype == tf.int32
    assert result["image_size"].numpy().tolist() == [[80, 80]]
