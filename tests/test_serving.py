import base64
import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from cnn_apps.classification import ImageClassifier
from cnn_apps.errors import ModelError
from cnn_apps.serving import export_classifier, next_version, staging_folder, verify_classifier_export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = ImageClassifier(
        3,
        (32, 32, 3),
        class_names=["circle", "square", "star"],
        backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)},
    )
    path = tmp_path_factory.mktemp("exports") / "m" / "1"
    export_classifier(model, path, model.class_names)
    return model, path


def _images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_versions_count_up(tmp_path):
    assert next_version(tmp_path / "none") == 1
    for v in ("1", "2", "10", "notes"):
        (tmp_path / v).mkdir()
    assert next_version(tmp_path) == 11


def test_signatures_match_the_keras_model(exported):
    model, path = exported
    diffs = verify_classifier_export(path, model, _images())
    assert set(diffs) == {"serving_default", "serve_uint8", "serve_bytes"}
    assert max(diffs.values()) < 1e-5


def test_any_batch_size_and_image_size_are_accepted(exported):
    model, path = exported
    sig = tf.saved_model.load(str(path)).signatures["serving_default"]
    for n, size in ((1, 32), (5, 48)):
        out = sig(images=tf.constant(_images(n, size).astype(np.float32)))
        assert out["probabilities"].shape == (n, 3) and out["class_id"].shape == (n,)
        assert out["class_name"].dtype == tf.string


def test_tf_serving_rest_body_with_b64_jpeg(exported):
    """The body a client POSTs to TF Serving's :predict for serve_bytes, decoded the way the
    server does (b64 -> bytes), then run through the signature."""
    model, path = exported
    image = _images(1, 40)[0]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    body = json.dumps(
        {"signature_name": "serve_bytes", "instances": [{"b64": base64.b64encode(jpeg.tobytes()).decode()}]}
    )
    request = json.loads(body)
    data = [base64.b64decode(item["b64"]) for item in request["instances"]]
    sig = tf.saved_model.load(str(path)).signatures[request["signature_name"]]
    out = sig(images=tf.constant(data))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(), 1.0, rtol=1e-5)


def test_verification_catches_a_different_model(exported):
    _, path = exported
    other = ImageClassifier(
        3, (32, 32, 3), backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)}
    )
    with pytest.raises(ModelError, match="differs from the Keras model"):
        verify_classifier_export(path, other, _images(), tolerance=1e-9)


def test_a_failed_export_leaves_no_version_behind(tmp_path):
    """Written and verified in a staging folder, renamed into place only when verified: a
    failure (or a crash, which leaves only a non-integer folder) gives TF Serving nothing."""
    model = ImageClassifier(3, (32, 32, 3), backbone_args={"stage_filters": (8,), "blocks_per_stage": (1,)})
    path = tmp_path / "m" / "1"
    with pytest.raises(ModelError, match="differs"):
        with staging_folder(path) as staged:
            export_classifier(model, staged, ["a", "b", "c"])
            assert (staged / "saved_model.pb").is_file() and not path.exists()
            raise ModelError("signature serving_default differs from the Keras model")
    assert list((tmp_path / "m").iterdir()) == [] and next_version(tmp_path / "m") == 1
    with staging_folder(path) as staged:
        export_classifier(model, staged, ["a", "b", "c"])
    assert (path / "saved_model.pb").is_file() and [p.name for p in (tmp_path / "m").iterdir()] == ["1"]
    with pytest.raises(ModelError, match="exists already"):
        with staging_folder(path):
            pass
