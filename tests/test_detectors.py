"""YOLO v1 and SSD as Keras models: construction, config round trip, .keras save/load,
training step, the paper's SSD300, and building from a config."""

import keras
import numpy as np
import pytest

from cnn_apps.config import load_config
from cnn_apps.data.shapes import make_scene
from cnn_apps.detection.factory import detector_from_config
from cnn_apps.detection.ssd import SSD, ssd300_vgg16
from cnn_apps.detection.yolo import YOLOv1
from cnn_apps.errors import ConfigError, ModelArgumentError

TINY = {"backbone_args": {"stage_filters": [8, 16, 16, 32]}}


def _batch(n=4, size=64, max_objects=4):
    scenes = [make_scene(0, "train", i, size, "detection") for i in range(n)]
    boxes = -np.ones((n, max_objects, 4), np.float32)
    labels = -np.ones((n, max_objects), np.int64)
    for i, s in enumerate(scenes):
        boxes[i, : len(s.boxes)] = s.boxes
        labels[i, : len(s.labels)] = s.labels
    return np.stack([s.image for s in scenes]).astype(np.float32), {"boxes": boxes, "labels": labels}


MODELS = {
    "ssd": lambda: SSD(
        4,
        image_size=64,
        feature_levels=["C3", "C4"],
        extra_blocks=[32],
        s_min=0.15,
        s_max=0.6,
        postprocess={"score_threshold": 0.0},
        **TINY,
    ),
    "yolo_v1": lambda: YOLOv1(
        4, image_size=64, head_filters=8, hidden_units=32, postprocess={"score_threshold": 0.0}, **TINY
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_detect_save_and_reload(name, tmp_path):
    import keras

    model = MODELS[name]()
    images, targets = _batch()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    first = model.evaluate(images, targets, verbose=0, return_dict=True)
    history = model.fit(images, targets, epochs=8, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < first["loss"]
    for part in model.loss_names:  # every component is logged
        assert f"{part}_loss" in history.history
    out = model.predict(images, verbose=0)
    assert out["boxes"].shape == (4, 100, 4) and out["labels"].dtype == np.int32
    assert (out["num_detections"] > 0).all()
    n = int(out["num_detections"][0])
    assert (out["boxes"][0, :n] >= 0).all() and (out["boxes"][0, :n] <= 64).all()
    assert (np.diff(out["scores"][0, :n]) <= 1e-6).all()  # sorted by score
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is type(model) and reloaded.get_config() == model.get_config()
    again = reloaded.predict(images, verbose=0)
    np.testing.assert_allclose(again["scores"], out["scores"], atol=1e-6)
    np.testing.assert_allclose(again["boxes"], out["boxes"], atol=1e-4)


def test_ssd300_vgg16_is_the_paper_model():
    model = ssd300_vgg16(90)  # COCO's 90 + background, as torchvision's ssd300_vgg16
    assert model.feature_sizes == [38, 19, 10, 5, 3, 1]
    assert model.anchors.shape == (8732, 4)
    assert model.count_params() == 35_641_826  # torchvision's ssd300_vgg16 (COCO): 35,641,826
    assert model.output["class_logits"].shape[1:] == (8732, 91)


def test_yolo_grid_and_outputs():
    model = YOLOv1(20, image_size=64, **TINY)
    assert model.output.shape[1:] == (7, 7, 30)  # the paper's 7 x 7 x (2 * 5 + 20)


def test_yolo_reads_a_pyramid_level_with_either_head(tmp_path):
    """feature_level cuts the backbone at a level (C4 of resnet_mini: stride 16, 7 x 7 at 112 px,
    so the conv head fits the grid); it crashed once on the level model's list output."""
    for head in ("fc", "conv"):
        model = YOLOv1(
            3, image_size=112, feature_level="C4", head=head, head_filters=8, hidden_units=16, **TINY
        )
        assert model.output.shape[1:] == (7, 7, 13)
        assert model.get_layer("head_reduce").input.shape[1:3] == (7, 7)
    path = tmp_path / "yolo_c4.keras"
    model.save(path)
    assert keras.models.load_model(path).get_config()["feature_level"] == "C4"


def test_detector_from_config():
    config = load_config(
        "pipelines/configs/shapes_ssd.yaml",
        ["data.image_size=64", "model.backbone_args={stage_filters: [8, 16, 16, 32]}"],
    )
    model = detector_from_config(config, 4, ["circle", "square", "triangle", "star"])
    assert isinstance(model, SSD) and model.image_size == 64 and model.class_names[1] == "square"
    assert model.postprocess["max_detections"] == config.detection.max_detections
    bad = load_config("pipelines/configs/shapes_ssd.yaml", ["model.architecture_args={no_such_arg: 1}"])
    with pytest.raises(ConfigError, match="no_such_arg"):
        detector_from_config(bad, 4)
    paper = load_config(
        "pipelines/configs/shapes_ssd.yaml",
        ["model.architecture=ssd300_vgg16", "data.image_size=300", "model.architecture_args={}"],
    )
    ssd300 = detector_from_config(paper, 20)  # keeps its own VGG16 whatever model.backbone says
    assert ssd300.get_config()["backbone"] == "vgg16" and ssd300.anchors.shape == (8732, 4)
    missing = load_config(None, ["task=detection"])
    with pytest.raises(ConfigError, match="model.architecture"):
        detector_from_config(missing, 4)
    # a bad constructor argument is a ConfigError too (the CLI prints it and exits 2)
    with pytest.raises(ConfigError, match=r"SSD: class_names has 2 class names for num_classes=4"):
        detector_from_config(config, 4, ["circle", "square"])


def test_two_stage_samplers_take_the_training_seed():
    """Faster R-CNN's RPN / RoI samplers draw with training.seed unless architecture_args set
    their own seed (they were always seeded 0, whatever the config said)."""
    tiny = ["data.image_size=64", "model.backbone_args={stage_filters: [8, 16, 16, 32]}"]
    config = load_config("pipelines/configs/shapes_faster_rcnn.yaml", [*tiny, "training.seed=7"])
    assert detector_from_config(config, 4).get_config()["seed"] == 7
    own = load_config(
        "pipelines/configs/shapes_faster_rcnn.yaml",
        [*tiny, "training.seed=7", "model.architecture_args={seed: 3}"],
    )
    assert detector_from_config(own, 4).get_config()["seed"] == 3


def test_bad_detector_arguments_raise_model_argument_errors():
    with pytest.raises(ModelArgumentError, match=r"YOLOv1: class_names has 1 class names for num_classes=2"):
        YOLOv1(2, image_size=64, class_names=["a"], **TINY)
    with pytest.raises(
        ValueError, match=r"YOLOv1: unknown postprocess keys \['iou'\]; valid: .*'iou_threshold'"
    ):
        YOLOv1(2, image_size=64, postprocess={"iou": 0.5}, **TINY)
    assert YOLOv1(2, image_size=64, **TINY).class_names == ["0", "1"]
    # feature levels keyed by stride (P3 = stride 8) or by the backbone family's names (C3)
    a = SSD(3, image_size=64, feature_levels=["P3", "P4"], extra_blocks=[32], **TINY)
    b = SSD(3, image_size=64, feature_levels=["C3", "C4"], extra_blocks=[32], **TINY)
    assert a.count_params() == b.count_params() and a.anchors.shape == b.anchors.shape
    with pytest.raises(
        ModelArgumentError, match=r"no feature level or layer 'P6'; levels: P1, P2, P3, P4, C1"
    ):
        SSD(3, image_size=64, feature_levels=["P3", "P6"], **TINY)
