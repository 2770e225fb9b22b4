"""FCN-8s, SegNet and U-Net run under the JAX backend (where the GPU checks run) and give the
TensorFlow backend's scores: weights saved under TF, loaded in a JAX subprocess that never
imports TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax", reason="jax[cpu] is a dev extra; the check needs a second backend")
pytestmark = pytest.mark.slow  # two processes, two backends

BUILD = {
    "fcn8s": "FCN(5, variant='8s', backbone_args={'width': 0.0625, 'batch_norm': True}, fc_filters=16, "
    "fc_kernel=3, dropout=0.0)",
    "segnet": "SegNet(5, width=0.0625, repeats=(1, 1, 2, 2, 2))",
    "unet": "UNet(5, filters=4, depth=3)",
}

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from cnn_apps.segmentation.fcn import FCN
    from cnn_apps.segmentation.segnet import SegNet
    from cnn_apps.segmentation.unet import UNet
    assert keras.backend.backend() == "jax"
    builds, folder = json.loads(sys.argv[1]), sys.argv[2]
    images = np.load(folder + "/images.npy")
    for name, expr in builds.items():
        model = eval(expr)
        model.load_weights(f"{folder}/{name}.weights.h5")
        np.save(f"{folder}/{name}_jax.npy", np.asarray(model.predict(images, verbose=0)))
    assert "tensorflow" not in sys.modules, "the JAX path imported TensorFlow"
    print("ok")
""")


def test_segmenters_under_jax_match_tensorflow(tmp_path):
    import keras

    from cnn_apps.data.shapes import make_scene
    from cnn_apps.segmentation.fcn import FCN  # noqa: F401  (used by eval)
    from cnn_apps.segmentation.segnet import SegNet  # noqa: F401
    from cnn_apps.segmentation.unet import UNet  # noqa: F401

    images = np.stack([make_scene(0, "test", i, 64, "segmentation").image for i in range(2)]).astype(
        "float32"
    )
    np.save(tmp_path / "images.npy", images)
    expected = {}
    for name, expr in BUILD.items():
        keras.utils.set_random_seed(1)
        model = eval(expr)
        model.save_weights(str(tmp_path / f"{name}.weights.h5"))
        expected[name] = np.asarray(model.predict(images, verbose=0))
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
        got = np.load(tmp_path / f"{name}_jax.npy")
        assert got.shape == (2, 64, 64, 5)
        np.testing.assert_allclose(got, expected[name], rtol=1e-3, atol=1e-3)
