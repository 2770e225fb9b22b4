"""Detection through the CLI: prepare -> train -> evaluate -> export for YOLO v1, SSD and Faster R-CNN
on tiny shapes data, checking what a user looks for in MLflow and in exports/."""

from pathlib import Path

import numpy as np
import pytest
from conftest import set_args, tiny_overrides

from cnn_apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY_BACKBONE = "model.backbone_args={stage_filters: [8, 16, 16, 32]}"


@pytest.mark.parametrize(
    "config, extra",
    [
        (
            "shapes_ssd.yaml",
            [
                "model.architecture_args={feature_levels: [C3, C4], extra_blocks: [32], "
                "s_min: 0.15, s_max: 0.6}"
            ],
        ),
        ("shapes_yolo.yaml", ["model.architecture_args={head_filters: 8, hidden_units: 32}"]),
        (
            "shapes_faster_rcnn.yaml",
            [
                "model.architecture_args={rpn_filters: 16, rpn_post_nms_top_k: 16, "
                "roi_batch_per_image: 16, head_units: [32]}"
            ],
        ),
    ],
)
def test_detector_pipeline(config, extra, tmp_path, capsys, monkeypatch):
    import mlflow
    import tensorflow as tf

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(tmp_path, **{"data.image_size": 64, "detection.score_threshold": 0.01}) + [
        TINY_BACKBONE,
        *extra,
    ]
    args = ["all", "--config", str(ROOT / "pipelines" / "configs" / config), *set_args(sets)]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = {
        r.data.tags["stage"]: r
        for r in client.search_runs([client.get_experiment_by_name("detection").experiment_id])
    }
    assert set(runs) == {"prepare", "train", "evaluate", "export"}
    prepare, train, evaluate = runs["prepare"], runs["train"], runs["evaluate"]
    assert prepare.data.metrics["boxes_train"] > 0
    assert {"train_box_loss", "val_box_loss", "train_classification_loss", "val_map50"} <= set(
        train.data.metrics
    )
    assert len(client.get_metric_history(train.info.run_id, "train_loss")) == 2
    for name in (
        "test_map50",
        "test_map50_voc07",
        "test_coco_ap",
        "test_coco_ap50",
        "test_coco_ap75",
        "test_images_per_s",
        "test_latency_ms",
    ):
        value = evaluate.data.metrics[name]
        assert np.isfinite(value), name
    assert evaluate.data.tags["source_run"] == train.info.run_id
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"per_class_ap.csv", "pr_curves.png", "test_detections.png"} <= artifacts
    # the export serves boxes from encoded images
    path = runs["export"].data.tags["export_path"]
    loaded = tf.saved_model.load(path)
    image = tf.io.encode_png(tf.zeros((80, 80, 3), tf.uint8))
    result = loaded.signatures["serve_bytes"](images=tf.stack([image]))
    assert result["detection_boxes"].shape == (1, 100, 4)
    assert result["num_detections"].dtype == tf.int32
