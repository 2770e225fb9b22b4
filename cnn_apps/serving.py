"""SavedModel export for TF Serving: signatures, versioned layout, self-check.

Layout: ``<export dir>/<name>/<version>/`` with integer versions counting up, the
layout TF Serving watches (it serves the highest version).

Classifier signatures (C = the model's channels; images of any size are resized
to the model's input size inside the graph):

* ``serving_default``: ``images`` float32 (B, H, W, C), raw pixels 0..255
  (JSON integers are fine: TF Serving converts them);
* ``serve_uint8``: the same with ``images`` uint8, for gRPC clients sending bytes;
* ``serve_bytes``: ``images`` string (B,), encoded JPEG/PNG/BMP/GIF files
  (base64 ``{"b64": ...}`` in TF Serving's JSON).

Outputs: ``probabilities`` float32 (B, K), ``class_id`` int64 (B,),
``class_name`` string (B,).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnn_apps.errors import ModelError

SIGNATURES = ("serving_default", "serve_uint8", "serve_bytes")


def next_version(base: str | os.PathLike) -> int:
    """1 + the highest integer version folder under ``base`` (1 when there is none)."""
    base = Path(base)
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    return max(versions, default=0) + 1


def export_classifier(model, path: str | os.PathLike, class_names) -> Path:
    """Write ``model`` as a SavedModel with the three signatures above."""
    import keras
    import tensorflow as tf

    height, width, channels = (int(d) for d in model.input_shape[1:4])
    names = tf.constant([str(n) for n in class_names])

    def classify(images):
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        images = tf.cond(
            (shape[1] == height) & (shape[2] == width),
            lambda: images,
            lambda: tf.image.resize(images, (height, width), method="bilinear", antialias=True))
        images = tf.ensure_shape(images, (None, height, width, channels))
        probabilities = model(images, training=False)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(names, class_id)}

    def decode(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.ensure_shape(image, (height, width, channels))

    def classify_bytes(images):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32))
        return classify(pixels)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", classify,
                         [tf.TensorSpec((None, None, None, channels), tf.float32, name="images")])
    archive.add_endpoint("serve_uint8", classify,
                         [tf.TensorSpec((None, None, None, channels), tf.uint8, name="images")])
    archive.add_endpoint("serve_bytes", classify_bytes, [tf.TensorSpec((None,), tf.string, name="images")])
    path = Path(path)
    try:
        archive.write_out(str(path), verbose=False)
    except TypeError:  # older Keras without `verbose`
        archive.write_out(str(path))
    return path


def encode_png(images: np.ndarray) -> list[bytes]:
    import cv2

    out = []
    for img in images.astype(np.uint8):
        rgb = img if img.shape[-1] == 1 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", rgb)
        if not ok:  # pragma: no cover - PNG encoding of uint8 arrays does not fail
            raise ModelError("could not PNG-encode a verification image")
        out.append(buf.tobytes())
    return out


def verify_classifier_export(path: str | os.PathLike, model, images: np.ndarray,
                             tolerance: float = 1e-4) -> dict:
    """Reload the SavedModel and compare every signature with the Keras model.

    ``images``: (B, H, W, C) uint8-valued pixels at the model's input size.
    Returns the max absolute probability difference per signature and raises
    :class:`ModelError` when one exceeds ``tolerance`` or the labels disagree.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    missing = [s for s in SIGNATURES if s not in loaded.signatures]
    if missing:
        raise ModelError(f"export {path} lacks signatures {missing}")
    pixels = np.asarray(images, np.float32)
    expected = np.asarray(model.predict(pixels, verbose=0))
    results = {
        "serving_default": loaded.signatures["serving_default"](images=tf.constant(pixels)),
        "serve_uint8": loaded.signatures["serve_uint8"](images=tf.constant(pixels.astype(np.uint8))),
        "serve_bytes": loaded.signatures["serve_bytes"](images=tf.constant(encode_png(pixels))),
    }
    diffs = {}
    for name, out in results.items():
        probs = out["probabilities"].numpy()
        diffs[name] = float(np.max(np.abs(probs - expected)))
        if diffs[name] > tolerance:
            raise ModelError(f"export {path}: signature {name} differs from the Keras model by "
                             f"{diffs[name]:.2e} (> tolerance {tolerance:g})")
        if not np.array_equal(out["class_id"].numpy(), expected.argmax(axis=1)):
            raise ModelError(f"export {path}: signature {name} returns other class ids than the Keras model")
    return diffs
