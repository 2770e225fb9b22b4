"""The check of a SavedModel export on reload: every signature of the reloaded export
(:mod:`.saved_model`) against the Keras model it was written from, per task
(:func:`verify_classifier_export`, :func:`verify_detector_export`,
:func:`verify_segmenter_export`), and :func:`encode_png` for the ``serve_bytes`` inputs.
"""

from __future__ import annotations

import os

import numpy as np

from cnn_apps.errors import ModelError
from cnn_apps.serving.saved_model import _proposal_count, image_input_shape, load_export


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


def verify_classifier_export(
    path: str | os.PathLike, model, images: np.ndarray, tolerance: float = 1e-4
) -> dict:
    """Reload the SavedModel and compare every signature with the Keras model.

    ``images``: (B, H, W, C) uint8-valued pixels at the model's input size.
    Returns the max absolute probability difference per signature and raises
    :class:`ModelError` when one exceeds ``tolerance`` or the labels disagree.
    """
    import tensorflow as tf

    loaded = load_export(path)
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
            raise ModelError(
                f"export {path}: signature {name} differs from the Keras model by "
                f"{diffs[name]:.2e} (> tolerance {tolerance:g})"
            )
        if not np.array_equal(out["class_id"].numpy(), expected.argmax(axis=1)):
            raise ModelError(f"export {path}: signature {name} returns other class ids than the Keras model")
    return diffs


# ---------------------------------------------------------------------- detectors
def _numpy_detections(out) -> dict:
    """A detection dict (``model.detect``'s keys or the signatures') as NumPy arrays."""
    keys = {
        "boxes": "detection_boxes",
        "scores": "detection_scores",
        "labels": "detection_classes",
        "num_detections": "num_detections",
    }
    return {k: np.asarray(out[k] if k in out else out[v]) for k, v in keys.items()}


def _detection_diff(got: dict, want: dict, image: int, tolerance: float) -> tuple[float, str | None]:
    """Max |box| / |score| difference between the valid rows of one image's detections
    (boxes in the units given: fractions of the image side from the verifier), and what is
    wrong (None when they agree within ``tolerance``). Rows are compared in order; when that
    fails (near-equal scores may swap), each row is matched to the nearest row of the same
    class instead, leaving out rows tied with the last score of a full output (which of them
    made the cut may differ)."""
    n, m = int(got["num_detections"][image]), int(want["num_detections"][image])
    if n != m:
        return float("inf"), f"returns {n} detections for image {image} where the Keras model finds {m}"
    if n == 0:
        return 0.0, None
    gb, gs, gl = got["boxes"][image, :n], got["scores"][image, :n], got["labels"][image, :n]
    wb, ws, wl = want["boxes"][image, :n], want["scores"][image, :n], want["labels"][image, :n]
    if np.array_equal(gl, wl):
        diff = float(max(np.max(np.abs(gb - wb)), np.max(np.abs(gs - ws))))
        if diff <= tolerance:
            return diff, None
    # (n, n) distance between rows, infinite across classes
    dist = np.maximum(np.max(np.abs(gb[:, None] - wb[None]), axis=-1), np.abs(gs[:, None] - ws[None]))
    dist = np.where(gl[:, None] == wl[None], dist, np.inf)
    full = n == got["boxes"].shape[1]
    cut = min(gs.min(), ws.min()) + tolerance if full else -np.inf
    diff = float(
        max(
            np.max(np.where(gs > cut, dist.min(axis=1), 0.0)),
            np.max(np.where(ws > cut, dist.min(axis=0), 0.0)),
        )
    )
    if diff > tolerance:
        return (
            diff,
            f"differs from the Keras model by {diff:.2e} on image {image} (> tolerance {tolerance:g})",
        )
    return diff, None


def verify_detector_export(
    path: str | os.PathLike,
    model,
    images: np.ndarray,
    tolerance: float = 1e-4,
    proposals: np.ndarray | None = None,
) -> dict:
    """Reload a detector's SavedModel and compare every signature with ``model.detect``.

    ``images``: (B, S, S, 3) uint8-valued pixels at the model's input size. Besides them,
    the first image enlarged 2x (nearest neighbour) goes through every signature (in
    ``serve_bytes`` in the same request as the others): its boxes must be the Keras
    model's on the resized image, times 2. Compares ``num_detections`` and the valid
    rows' boxes and scores; returns the max absolute difference per signature and raises
    :class:`ModelError` naming the signature on a mismatch. Box coordinates are compared
    as fractions of the image's width and height, so one ``tolerance`` fits boxes and
    scores at any image size (float32 pixel coordinates of a 600 px image are only good
    to about 1e-4 px). A detector fed proposals gets ``proposals`` (B, P, 4) at the model's
    size, or the selective search it was trained with (``model.proposal_settings``) when
    None; the 2x image gets them times 2.
    """
    import tensorflow as tf

    loaded = load_export(path)
    height, width, _ = image_input_shape(model)
    pixels = np.clip(np.round(np.asarray(images, np.float32)), 0, 255)
    big = np.repeat(np.repeat(pixels[:1], 2, axis=1), 2, axis=2)
    resized = tf.image.resize(big, (height, width), method="bilinear", antialias=True)
    props = big_props = None
    if _proposal_count(model) is not None:
        if proposals is None:
            from cnn_apps.data.proposal_cache import ProposalSettings, propose

            proposals, _ = propose(pixels, ProposalSettings.of(model))
        props = np.asarray(proposals, np.float32)
        big_props = props[:1] * 2.0

    def model_inputs(data, boxes):
        # one kind of array in a nested call (Keras refuses tensors mixed with NumPy)
        return data if boxes is None else {"images": np.asarray(data, np.float32), "proposals": boxes}

    expected = _numpy_detections(model.detect(model_inputs(pixels, props)))
    expected_big = _numpy_detections(
        model.detect(model_inputs(resized, None if props is None else props[:1]))
    )
    expected_big["boxes"] = expected_big["boxes"] * 2.0
    batch = len(pixels)

    def run(name, data, boxes):
        extra = {} if boxes is None else {"proposals": tf.constant(boxes)}
        return _numpy_detections(loaded.signatures[name](images=tf.constant(data), **extra))

    both_props = None if props is None else np.concatenate([props, big_props])
    both = run("serve_bytes", encode_png(pixels) + encode_png(big), both_props)  # one request, two sizes
    checks = [  # (signature, its detections, the Keras model's, image side / model side)
        ("serving_default", run("serving_default", pixels, props), expected, 1),
        ("serving_default", run("serving_default", big, big_props), expected_big, 2),
        ("serve_uint8", run("serve_uint8", pixels.astype(np.uint8), props), expected, 1),
        ("serve_uint8", run("serve_uint8", big.astype(np.uint8), big_props), expected_big, 2),
        ("serve_bytes", {k: v[:batch] for k, v in both.items()}, expected, 1),
        ("serve_bytes", {k: v[batch:] for k, v in both.items()}, expected_big, 2),
    ]
    diffs = {}
    for name, got, want, factor in checks:
        per_pixel = np.array([1.0 / (factor * width), 1.0 / (factor * height)] * 2, np.float32)
        got, want = ({**d, "boxes": d["boxes"] * per_pixel} for d in (got, want))
        diffs.setdefault(name, 0.0)
        for i in range(len(want["num_detections"])):
            diff, problem = _detection_diff(got, want, i, tolerance)
            diffs[name] = max(diffs[name], diff)
            if problem:
                where = "the 2x-size image" if factor == 2 else "the model-size batch"
                raise ModelError(f"export {path}: signature {name} {problem} ({where})")
    return diffs


# ---------------------------------------------------------------------- segmenters
def verify_segmenter_export(
    path: str | os.PathLike, model, images: np.ndarray, tolerance: float = 1e-4
) -> dict:
    """Reload a segmenter's SavedModel and compare every signature with the Keras model.

    ``images``: (B, S, S, 3) uint8-valued pixels at the model's input size. Probabilities
    must agree within ``tolerance`` and the class maps exactly, except at pixels whose two
    best classes are closer than ``tolerance`` (a tie either side may win). The first image
    enlarged 2x (nearest neighbour) also goes through ``serving_default``: its output must
    be the Keras model's on the image resized to S, resized back to 2S. Returns the max
    absolute probability difference per signature; raises :class:`ModelError` naming the
    signature on a mismatch."""
    import tensorflow as tf

    loaded = load_export(path)
    height, width, _ = image_input_shape(model)
    pixels = np.clip(np.round(np.asarray(images, np.float32)), 0, 255)
    expected = tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32), axis=-1).numpy()
    big = np.repeat(np.repeat(pixels[:1], 2, axis=1), 2, axis=2)
    resized = tf.image.resize(big, (height, width), method="bilinear", antialias=True)
    expected_big = tf.nn.softmax(tf.cast(model(resized, training=False), tf.float32), axis=-1)
    expected_big = tf.image.resize(expected_big, (2 * height, 2 * width), method="bilinear").numpy()
    checks = [
        ("serving_default", loaded.signatures["serving_default"](images=tf.constant(pixels)), expected),
        ("serving_default", loaded.signatures["serving_default"](images=tf.constant(big)), expected_big),
        (
            "serve_uint8",
            loaded.signatures["serve_uint8"](images=tf.constant(pixels.astype(np.uint8))),
            expected,
        ),
        ("serve_bytes", loaded.signatures["serve_bytes"](images=tf.constant(encode_png(pixels))), expected),
    ]
    diffs = {}
    for name, out, want in checks:
        got = out["probabilities"].numpy()
        if got.shape != want.shape:
            raise ModelError(
                f"export {path}: signature {name} returns probabilities {got.shape}, expected {want.shape}"
            )
        diff = float(np.max(np.abs(got - want)))
        diffs[name] = max(diffs.get(name, 0.0), diff)
        if diff > tolerance:
            raise ModelError(
                f"export {path}: signature {name} differs from the Keras model by {diff:.2e} "
                f"(> tolerance {tolerance:g})"
            )
        top2 = np.sort(want, axis=-1)[..., -2:]
        decided = (top2[..., 1] - top2[..., 0]) > tolerance
        if not np.array_equal(out["class_map"].numpy()[decided], want.argmax(-1)[decided]):
            raise ModelError(
                f"export {path}: signature {name} returns another class map than the Keras model"
            )
    sizes = checks[3][1]["image_size"].numpy()
    if not np.array_equal(sizes, np.tile([height, width], (len(pixels), 1))):
        raise ModelError(f"export {path}: serve_bytes reports image sizes {sizes.tolist()}")
    return diffs
