"""YOLO v1 and SSD run under the JAX backend (where the GPU checks run) and give the
TensorFlow backend's detections: weights saved under TF, loaded in a JAX subprocess."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")
pytestmark = pytest.mark.slow  # two processes, two backends: ~1 min

BUILD = {
    "ssd": "SSD(3, image_size=64, feature_levels=['C3', 'C4'], extra_blocks=[32], s_min=0.15, s_max=0.6, "
    "backbone_args={'stage_filters': [8, 16, 16, 32]}, postprocess={'score_threshold': 0.2})",
    "yolo": "YOLOv1(3, image_size=64, head_filters=8, hidden_units=32, "
    "backbone_args={'stage_filters': [8, 16, 16, 32]}, postprocess={'score_threshold': 0.2})",
}

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from cnn_apps.detection.ssd import SSD
    from cnn_apps.detection.yolo import YOLOv1
    assert keras.backend.backend() == "jax"
    builds, folder = json.loads(sys.argv[1]), sys.argv[2]
    images = np.load(folder + "/images.npy")
    out = {}
    for name, expr in builds.items():
        model = eval(expr)
        model.load_weights(f"{folder}/{name}.weights.h5")
        det = model.predict(images, verbose=0)
        np.savez(f"{folder}/{name}_jax.npz", **{k: np.asarray(v) for k, v in det.items()})
    assert "tensorflow" not in sys.modules, "the JAX path imported TensorFlow"
    print("ok")
""")


def test_detectors_under_jax_match_tensorflow(tmp_path):
    import keras

    from cnn_apps.data.shapes import make_scene
    from cnn_apps.detection.ssd import SSD  # noqa: F401  (used by eval)
    from cnn_apps.detection.yolo import YOLOv1  # noqa: F401

    images = np.stack([make_scene(0, "test", i, 64, "detection").image for i in range(4)]).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = {}
    for name, expr in BUILD.items():
        keras.utils.set_random_seed(1)
        model = eval(expr)
        model.save_weights(str(tmp_path / f"{name}.weights.h5"))
        tf_nms = {k: np.asarray(v) for k, v in model.detect(images).items()}
        portable = {k: np.asarray(v) for k, v in model.detect(images, nms="portable").items()}
        assert tf_nms["num_detections"].sum() > 0
        np.testing.assert_array_equal(tf_nms["num_detections"], portable["num_detections"])
        np.testing.assert_allclose(tf_nms["scores"], portable["scores"], atol=1e-5)
        expected[name] = portable
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(BUILD), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in BUILD:
        got = np.load(tmp_path / f"{name}_jax.npz")
        np.testing.assert_array_equal(got["num_detections"], expected[name]["num_detections"])
        np.testing.assert_allclose(got["scores"], expected[name]["scores"], atol=1e-4)
        np.testing.assert_allclose(got["boxes"], expected[name]["boxes"], atol=1e-2)
        np.testing.assert_array_equal(got["labels"], expected[name]["labels"])
