"""SavedModel export of detectors: signatures (as saved_model_cli shows them), verification
against ``model.detect``, boxes scaled back to each input image's own pixels."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import saved_model_cli_signatures

from cnn_apps.detection.ssd import SSD
from cnn_apps.detection.yolo import YOLOv1
from cnn_apps.errors import ModelError
from cnn_apps.serving.export_verification import _detection_diff, encode_png, verify_detector_export
from cnn_apps.serving.saved_model import export_detector

SIZE = 64
TINY = {"stage_filters": [8, 16, 32, 32]}
ALL_DETECTIONS = {"score_threshold": 0.0}  # random weights: keep every candidate


def _ssd(seed=0):
    keras.utils.set_random_seed(seed)
    return SSD(
        4,
        image_size=SIZE,
        backbone_args=TINY,
        extra_blocks=(32, 32),
        postprocess=ALL_DETECTIONS,
        class_names=["circle", "square", "star", "triangle"],
    )


def _yolo(seed=0):
    keras.utils.set_random_seed(seed)
    return YOLOv1(
        3,
        image_size=SIZE,
        backbone_args=TINY,
        grid=4,
        head_filters=8,
        hidden_units=32,
        postprocess=ALL_DETECTIONS,
    )


@pytest.fixture(scope="module", params=["ssd", "yolo"])
def exported(request, tmp_path_factory):
    model = _ssd() if request.param == "ssd" else _yolo()
    path = tmp_path_factory.mktemp("exports") / request.param / "1"
    export_detector(model, path, model.class_names)
    return model, path


def _images(n=2, height=SIZE, width=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3)).astype(np.uint8)


def test_saved_model_cli_shows_the_detector_signatures(exported):
    _, path = exported
    sigs = saved_model_cli_signatures(path)
    outputs = {
        "detection_boxes": ("DT_FLOAT", "(-1, 100, 4)"),
        "detection_scores": ("DT_FLOAT", "(-1, 100)"),
        "detection_classes": ("DT_INT64", "(-1, 100)"),
        "detection_class_names": ("DT_STRING", "(-1, 100)"),
        "num_detections": ("DT_INT32", "(-1)"),
    }
    expected_inputs = {
        "serving_default": ("DT_FLOAT", "(-1, -1, -1, 3)"),
        "serve_uint8": ("DT_UINT8", "(-1, -1, -1, 3)"),
        "serve_bytes": ("DT_STRING", "(-1)"),
    }
    for name, image_input in expected_inputs.items():
        assert sigs[name] == {"inputs": {"images": image_input}, "outputs": outputs}, name


def test_every_signature_matches_model_detect(exported):
    model, path = exported
    diffs = verify_detector_export(path, model, _images(3))
    assert set(diffs) == {"serving_default", "serve_uint8", "serve_bytes"}
    assert max(diffs.values()) < 1e-4


def test_bytes_request_with_mixed_sizes_gives_boxes_in_each_images_pixels(exported):
    """One request: an image at the model's size and one twice as wide (non-square)."""
    model, path = exported
    small, wide = _images(1)[0], _images(1, SIZE, 2 * SIZE, seed=1)[0]
    sig = tf.saved_model.load(str(path)).signatures["serve_bytes"]
    out = sig(images=tf.constant(encode_png(small[None]) + encode_png(wide[None])))
    resized = tf.image.resize(wide[None].astype(np.float32), (SIZE, SIZE), method="bilinear", antialias=True)
    want = model.detect(np.concatenate([small[None].astype(np.float32), resized.numpy()]))
    n = out["num_detections"].numpy()
    np.testing.assert_array_equal(n, want["num_detections"].numpy())
    assert n[1] > 0
    boxes = out["detection_boxes"].numpy()
    np.testing.assert_allclose(boxes[0, : n[0]], want["boxes"].numpy()[0, : n[0]], atol=1e-4)
    np.testing.assert_allclose(boxes[1, : n[1]], want["boxes"].numpy()[1, : n[1]] * [2, 1, 2, 1], atol=1e-4)
    names = out["detection_class_names"].numpy()
    classes = out["detection_classes"].numpy()
    for i in range(2):  # class names of the valid rows, padding after them
        assert [s.decode() for s in names[i, : n[i]]] == [model.class_names[c] for c in classes[i, : n[i]]]
        assert (classes[i, n[i] :] == -1).all() and (names[i, n[i] :] == b"").all()


def test_verification_catches_a_different_model(exported):
    model, path = exported
    other = _ssd(seed=1) if isinstance(model, SSD) else _yolo(seed=1)
    with pytest.raises(ModelError, match="signature serving_default"):
        verify_detector_export(path, other, _images(2), tolerance=1e-6)


def _dets(boxes, scores, labels, k=4):
    n = len(scores)
    pad = k - n
    return {
        "boxes": np.pad(np.asarray(boxes, np.float32), [(0, pad), (0, 0)])[None],
        "scores": np.pad(np.asarray(scores, np.float32), (0, pad))[None],
        "labels": np.pad(np.asarray(labels), (0, pad), constant_values=-1)[None],
        "num_detections": np.array([n]),
    }


def test_row_comparison_tolerates_swapped_near_ties_but_not_moved_boxes():
    a, b = [0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]
    want = _dets([a, b], [0.5, 0.5 - 1e-7], [1, 2])
    assert _detection_diff(_dets([b, a], [0.5, 0.5 - 1e-7], [2, 1]), want, 0, 1e-4) == (
        pytest.approx(0.0, abs=1e-6),
        None,
    )
    moved = _dets([a, [0.5, 0.5, 0.9, 0.95]], [0.5, 0.5 - 1e-7], [1, 2])
    diff, problem = _detection_diff(moved, want, 0, 1e-4)
    assert diff == pytest.approx(0.05) and "differs from the Keras model" in problem
    _, problem = _detection_diff(_dets([a], [0.5], [1]), want, 0, 1e-4)
    assert "returns 1 detections for image 0 where the Keras model finds 2" in problem
