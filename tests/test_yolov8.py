"""keras-cv's YOLOv8 in our detector contract: registry, one small fit, detect, save/load."""

import inspect

import numpy as np
import pytest

keras_cv = pytest.importorskip("keras_cv")
import keras  # noqa: E402

from cnn_apps import registry  # noqa: E402
from cnn_apps.data.shapes import make_scene  # noqa: E402
from cnn_apps.detection.yolov8 import YOLOv8KerasCV, decode_distribution  # noqa: E402

SIZE, CLASSES = 64, 4
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="keras-cv YOLOv8: TensorFlow only"
)


def _batch(n=4):
    """n synthetic detection scenes: raw pixels (n, 64, 64, 3) and targets padded with -1."""
    scenes = [make_scene(0, "train", i, SIZE, "detection") for i in range(n)]
    width = max(len(s.labels) for s in scenes)
    boxes = np.full((n, width, 4), -1.0, np.float32)
    labels = np.full((n, width), -1, np.int32)
    for i, s in enumerate(scenes):
        boxes[i, : len(s.labels)] = s.boxes
        labels[i, : len(s.labels)] = s.labels
    return np.stack([s.image for s in scenes]).astype("float32"), {"boxes": boxes, "labels": labels}


@pytest.fixture(scope="module")
def trained():
    """The registered builder as the factory calls it, then 5 steps on one batch."""
    keras.utils.set_random_seed(0)
    builder = registry.get("detector", "yolov8_keras_cv")
    model = builder(
        CLASSES,
        image_size=SIZE,
        class_names=["a", "b", "c", "d"],
        postprocess={"score_threshold": 0.0, "iou_threshold": 0.6, "max_detections": 20},
    )
    images, targets = _batch()
    # keras-cv's advice (SGD, global clipnorm 10); also traces faster than Adam
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, global_clipnorm=10.0))
    history = model.fit(images, targets, epochs=5, batch_size=4, verbose=0)
    return model, images, targets, history.history


def test_registered_as_fixed_backbone_builder():
    builder = registry.get("detector", "yolov8_keras_cv")
    assert getattr(builder, "fixed_backbone", False) is True
    assert "backbone" not in inspect.signature(YOLOv8KerasCV).parameters


def test_small_config_parameter_counts(trained):
    model = trained[0]
    assert model.backbone.count_params() == 1_277_680  # keras-cv's yolo_v8_xs_backbone preset
    assert model.count_params() == 3_433_148  # + PA-FPN (depth 1) and head for 4 classes
    assert model.backbone.layers[1].__class__.__name__ == "Rescaling"  # raw pixels in, /255 inside


def test_get_config_mirrors_constructor(trained):
    config = trained[0].get_config()
    params = set(inspect.signature(YOLOv8KerasCV).parameters) - {"kwargs"}
    assert params <= set(config), params - set(config)
    assert config["image_size"] == SIZE and config["class_names"] == ["a", "b", "c", "d"]


def test_fit_logs_finite_decreasing_losses(trained):
    history = trained[3]
    for name in ("loss", "box_loss", "classification_loss"):
        assert np.all(np.isfinite(history[name])), (name, history[name])
    assert history["loss"][-1] < history["loss"][0], history["loss"]


def test_empty_image_gives_zero_box_loss(trained):
    model, images = trained[0], trained[1]
    y = {"boxes": np.full((2, 3, 4), -1.0, np.float32), "labels": np.full((2, 3), -1, np.int32)}
    parts = model.detection_losses(y, model(images[:2], training=False))
    assert float(parts["box"]) == 0.0
    assert np.isfinite(float(parts["classification"])) and float(parts["classification"]) > 0


def test_detect_contract_and_padding(trained):
    model, images = trained[0], trained[1]
    out = model.detect(images)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"boxes": (4, 20, 4), "scores": (4, 20), "labels": (4, 20), "num_detections": (4,)}
    dtypes = {k: keras.backend.standardize_dtype(v.dtype) for k, v in out.items()}
    assert dtypes == {"boxes": "float32", "scores": "float32", "labels": "int32", "num_detections": "int32"}
    num, labels = np.asarray(out["num_detections"]), np.asarray(out["labels"])
    scores, boxes = np.asarray(out["scores"]), np.asarray(out["boxes"])
    assert np.all(num > 0)  # score_threshold 0 keeps something
    for i, n in enumerate(num):
        assert np.all((labels[i, :n] >= 0) & (labels[i, :n] < CLASSES))
        assert np.all(labels[i, n:] == -1) and np.all(scores[i, n:] == 0) and np.all(boxes[i, n:] == 0)
        assert np.all(np.diff(scores[i, :n]) <= 1e-6)  # sorted
        assert np.all((boxes[i, :n] >= 0) & (boxes[i, :n] <= SIZE))
        assert np.all(boxes[i, :n, 2:] >= boxes[i, :n, :2])
    predicted = model.predict(images, verbose=0)
    np.testing.assert_allclose(predicted["scores"], scores, atol=1e-5)
    np.testing.assert_array_equal(predicted["labels"], labels)
    # per-call overrides of the postprocess dict
    assert tuple(model.detect(images, max_detections=7)["boxes"].shape) == (4, 7, 4)
    none = model.detect(images, score_threshold=1.0)
    assert np.all(np.asarray(none["num_detections"]) == 0) and np.all(np.asarray(none["labels"]) == -1)


def test_decoding_matches_keras_cv():
    from keras_cv.src.models.object_detection.yolo_v8.yolo_v8_detector import decode_regression_to_boxes

    logits = np.random.default_rng(0).normal(size=(2, 84, 64)).astype("float32")
    np.testing.assert_allclose(decode_distribution(logits), decode_regression_to_boxes(logits), atol=1e-5)


def test_save_load_round_trip(trained, tmp_path):
    model, images = trained[0], trained[1]
    path = tmp_path / "yolov8.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, YOLOv8KerasCV)
    assert loaded.class_names == model.class_names and loaded.postprocess == model.postprocess
    before, after = model.detect(images), loaded.detect(images)
    for key in before:
        np.testing.assert_allclose(np.asarray(after[key]), np.asarray(before[key]), atol=1e-5, err_msg=key)


def test_per_class_decoder_and_bad_size():
    with pytest.raises(ValueError, match="divisible by 32"):
        YOLOv8KerasCV(CLASSES, image_size=48)
    model = YOLOv8KerasCV(
        CLASSES,
        image_size=32,
        decoder="per_class",
        postprocess={"score_threshold": 0.0, "max_detections": 10},
    )
    out = model.detect(np.zeros((1, 32, 32, 3), np.float32))
    assert tuple(out["boxes"].shape) == (1, 10, 4)
    assert keras.backend.standardize_dtype(out["labels"].dtype) == "int32"


def test_loss_matches_keras_cv_compute_loss():
    """Our targets and loss terms against YOLOV8Detector.compile/compute_loss on keras-cv's
    targets (``classes``, -1 padding), on a smaller backbone."""
    keras.utils.set_random_seed(1)
    model = YOLOv8KerasCV(
        CLASSES, image_size=SIZE, stackwise_channels=(16, 32, 64, 128), stackwise_depth=(1, 1, 1, 1)
    )
    images, targets = _batch()
    raw = model.yolo(images, training=False)
    ours = model.detection_losses(targets, {"box_distribution": raw["boxes"], "class_scores": raw["classes"]})
    model.yolo.compile(box_loss="ciou", classification_loss="binary_crossentropy", optimizer="sgd")
    reference = model.yolo.compute_loss(
        images, {"boxes": targets["boxes"], "classes": targets["labels"]}, raw
    )
    assert float(ours["box"]) > 0 and float(ours["classification"]) > 0
    np.testing.assert_allclose(float(ours["box"] + ours["classification"]), float(reference), rtol=1e-5)
