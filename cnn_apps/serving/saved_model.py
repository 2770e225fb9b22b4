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

Detector signatures (:func:`export_detector`; the same three names, 3 channels; each
image is resized to the model's S x S inside the graph and its boxes are scaled back):

* ``serving_default``: ``images`` float32 (B, H, W, 3), raw pixels 0..255;
* ``serve_uint8``: ``images`` uint8 (B, H, W, 3);
* ``serve_bytes``: ``images`` string (B,), encoded JPEG/PNG/BMP/GIF files; the images of
  one request may have different sizes (each is decoded and resized on its own).

A detector fed region proposals (Fast R-CNN: ``model.proposal_settings``) takes them
as a second input in every signature: ``proposals`` float32 (B, P', 4) xyxy in the pixels
of each input image (-1 or zero-area rows are padding; for ``serve_bytes`` each image's
own size), scaled to the model's size inside the graph; the first P (the model's
``max_proposals``) rows are used, fewer are padded.

Outputs (K = the model's ``max_detections``, 100 by default; sorted by score, padded
after ``num_detections``): ``detection_boxes`` float32 (B, K, 4) xyxy in the pixels of
each input image, ``detection_scores`` float32 (B, K), ``detection_classes`` int64 (B, K)
(-1 padding), ``detection_class_names`` string (B, K) ("" padding), ``num_detections``
int32 (B,).

Segmenter signatures (:func:`export_segmenter`; the same three names, 3 channels; each image
is resized to the model's S x S inside the graph, K classes with background first):

* ``serving_default`` / ``serve_uint8``: ``images`` float32 / uint8 (B, H, W, 3); outputs
  at the input's resolution: ``probabilities`` float32 (B, H, W, K) (the model's, resized
  back bilinearly) and ``class_map`` int32 (B, H, W) (their argmax);
* ``serve_bytes``: ``images`` string (B,), encoded files that may differ in size, so the
  outputs stay at the model's size: ``probabilities`` (B, S, S, K), ``class_map`` (B, S, S),
  and ``image_size`` int32 (B, 2), each file's (H, W), to resize the map back (nearest).
All three also return ``class_names`` string (B, K), one row per image (TF Serving's
row-format JSON needs every output batched).

Every export also holds ``assets.extra/cnn_apps.json`` (the folder TF Serving leaves alone):
``task``, ``class_names``, ``image_size`` [H, W], ``channels`` and, for a detector fed region
proposals, ``proposals`` (the selective-search settings it was trained with), so a client
(``cnn-apps predict``) knows what it is talking to without the training run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from cnn_apps.errors import ModelError

SIGNATURES = ("serving_default", "serve_uint8", "serve_bytes")
METADATA_FILE = "assets.extra/cnn_apps.json"


def image_input_shape(model) -> tuple:
    """(H, W, C) of a model's image input (the 4-D one when it has several inputs, such as
    Fast R-CNN's ``images`` and ``proposals``); a side left free (a segmenter's) is the
    model's ``image_size``, the size it was trained at."""
    shape = model.input_shape
    if isinstance(shape, dict):
        shape = shape["images"]
    elif isinstance(shape, list) and shape and isinstance(shape[0], (list, tuple)):
        shape = next(s for s in shape if len(s) == 4)
    height, width, channels = shape[1:4]
    if height is None or width is None:  # a fully convolutional model: the size it was trained at
        height = height or model.image_size
        width = width or model.image_size
    return int(height), int(width), int(channels)


def _proposal_count(model) -> int | None:
    """P of a detector that takes proposals, None for one that does not."""
    settings = getattr(model, "proposal_settings", None)
    return int(settings["count"]) if settings else None


def next_version(base: str | os.PathLike) -> int:
    """1 + the highest integer version folder under ``base`` (1 when there is none)."""
    base = Path(base)
    versions = (
        [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    )
    return max(versions, default=0) + 1


@contextlib.contextmanager
def staging_folder(path: str | os.PathLike):
    """Yield a temporary folder beside ``path`` to write and check an export in; on a clean
    exit it is renamed to ``path`` (one atomic step on one file system), on an error it is
    removed. TF Serving loads integer-named version folders only, so it never sees a
    half-written or unverified version, not even after a crash (the leftover is named
    ``.staging-<version>-<pid>``)."""
    path = Path(path)
    if path.exists():
        raise ModelError(f"export {path} exists already; versions are never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.parent / f".staging-{path.name}-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        yield staged
        os.rename(staged, path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _write_archive(model, path, from_pixels, from_bytes, channels: int, extra=(), metadata=None) -> Path:
    """A SavedModel at ``path`` tracking ``model`` with the three signatures: ``from_pixels`` as
    ``serving_default`` (float32 images) and ``serve_uint8``, ``from_bytes`` as ``serve_bytes``
    (encoded files); ``extra``: further input specs every signature takes (Fast R-CNN's proposals);
    ``metadata``: written to ``assets.extra/cnn_apps.json``."""
    import json

    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        from_pixels,
        [tf.TensorSpec((None, None, None, channels), tf.float32, name="images"), *extra],
    )
    archive.add_endpoint(
        "serve_uint8",
        from_pixels,
        [tf.TensorSpec((None, None, None, channels), tf.uint8, name="images"), *extra],
    )
    archive.add_endpoint(
        "serve_bytes", from_bytes, [tf.TensorSpec((None,), tf.string, name="images"), *extra]
    )
    path = Path(path)
    try:
        archive.write_out(str(path), verbose=False)
    except TypeError:  # older Keras without `verbose`
        archive.write_out(str(path))
    if metadata is not None:
        (path / METADATA_FILE).parent.mkdir(exist_ok=True)
        (path / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def read_export_metadata(path: str | os.PathLike) -> dict:
    """The ``assets.extra/cnn_apps.json`` of the export at ``path`` ({} for an export without it)."""
    import json

    file = Path(path) / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def load_export(path: str | os.PathLike):
    """The SavedModel at ``path``, checked to have every signature of :data:`SIGNATURES`."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    missing = [s for s in SIGNATURES if s not in loaded.signatures]
    if missing:
        raise ModelError(f"export {path} lacks signatures {missing}")
    return loaded


def export_classifier(model, path: str | os.PathLike, class_names) -> Path:
    """Write ``model`` as a SavedModel with the three signatures above."""
    import tensorflow as tf

    height, width, channels = (int(d) for d in model.input_shape[1:4])
    names = tf.constant([str(n) for n in class_names])

    def classify(images):
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        images = tf.cond(
            (shape[1] == height) & (shape[2] == width),
            lambda: images,
            lambda: tf.image.resize(images, (height, width), method="bilinear", antialias=True),
        )
        images = tf.ensure_shape(images, (None, height, width, channels))
        probabilities = model(images, training=False)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "class_id": class_id,
            "class_name": tf.gather(names, class_id),
        }

    def decode(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.ensure_shape(image, (height, width, channels))

    def classify_bytes(images):
        pixels = tf.map_fn(
            decode, images, fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32)
        )
        return classify(pixels)

    metadata = {
        "task": "classification",
        "class_names": [str(n) for n in class_names],
        "image_size": [height, width],
        "channels": channels,
    }
    return _write_archive(model, path, classify, classify_bytes, channels, metadata=metadata)


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
def _resize_to(images, height: int, width: int):
    """Bilinear (antialiased) resize of (B, H, W, C) or (H, W, C) to (height, width);
    images already at that size pass unchanged."""
    import tensorflow as tf

    shape = tf.shape(images)
    return tf.cond(
        (shape[-3] == height) & (shape[-2] == width),
        lambda: images,
        lambda: tf.image.resize(images, (height, width), method="bilinear", antialias=True),
    )


def export_detector(model, path: str | os.PathLike, class_names) -> Path:
    """Write a :class:`~cnn_apps.detection.Detector` as a SavedModel with the detector
    signatures of the module docstring; decoding and NMS run inside the graph
    (``model.detect``)."""
    import tensorflow as tf

    height, width, channels = image_input_shape(model)
    names = tf.constant([str(n) for n in class_names])
    model_size = tf.constant([height, width], tf.float32)
    count = _proposal_count(model)

    def detect(images, sizes, proposals=None):
        """images (B, S, S, C) float32 at the model's size; sizes (B, 2) int32 original (H, W);
        proposals (B, P', 4) in the original pixels (detectors that take them)."""
        images = tf.ensure_shape(images, (None, height, width, channels))
        scale = tf.cast(sizes, tf.float32) / model_size  # (B, 2): sy, sx
        factors = tf.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], axis=-1)
        if count is None:
            out = model.detect(images)
        else:
            proposals = tf.cast(proposals, tf.float32)[:, :count] / factors[:, None, :]
            missing = tf.maximum(count - tf.shape(proposals)[1], 0)
            proposals = tf.pad(proposals, [[0, 0], [0, missing], [0, 0]], constant_values=-1.0)
            out = model.detect({"images": images, "proposals": tf.ensure_shape(proposals, (None, count, 4))})
        labels = tf.cast(out["labels"], tf.int64)
        valid = labels >= 0
        return {
            "detection_boxes": tf.cast(out["boxes"], tf.float32) * factors[:, None, :],
            "detection_scores": tf.cast(out["scores"], tf.float32),
            "detection_classes": labels,
            "detection_class_names": tf.where(valid, tf.gather(names, tf.maximum(labels, 0)), ""),
            "num_detections": tf.cast(out["num_detections"], tf.int32),
        }

    def detect_pixels(images, proposals=None):
        shape = tf.shape(images)
        sizes = tf.tile(shape[None, 1:3], [shape[0], 1])
        return detect(_resize_to(tf.cast(images, tf.float32), height, width), sizes, proposals)

    def decode(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        size = tf.shape(image)[:2]
        image = _resize_to(tf.cast(image, tf.float32), height, width)
        return tf.ensure_shape(image, (height, width, channels)), size

    def detect_bytes(images, proposals=None):
        pixels, sizes = tf.map_fn(
            decode,
            images,
            fn_output_signature=(
                tf.TensorSpec((height, width, channels), tf.float32),
                tf.TensorSpec((2,), tf.int32),
            ),
        )
        return detect(pixels, sizes, proposals)

    # a detector fed proposals takes them as a second input of every signature
    extra = [] if count is None else [tf.TensorSpec((None, None, 4), tf.float32, name="proposals")]
    metadata = {
        "task": "detection",
        "class_names": [str(n) for n in class_names],
        "image_size": [height, width],
        "channels": channels,
        "proposals": getattr(model, "proposal_settings", None) or None,
    }
    return _write_archive(model, path, detect_pixels, detect_bytes, channels, extra, metadata)


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
def export_segmenter(model, path: str | os.PathLike, class_names) -> Path:
    """Write a :class:`~cnn_apps.segmentation.Segmenter` as a SavedModel with the segmenter
    signatures of the module docstring (resizing, softmax and argmax in the graph)."""
    import tensorflow as tf

    height, width, channels = image_input_shape(model)
    names = tf.constant([str(n) for n in class_names])

    def segment(images):
        """images (B, S, S, C) float32 at the model's size -> probabilities, class map."""
        logits = model(tf.ensure_shape(images, (None, height, width, channels)), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return probabilities

    def segment_pixels(images):
        images = tf.cast(images, tf.float32)
        size = tf.shape(images)[1:3]
        probabilities = segment(_resize_to(images, height, width))
        probabilities = tf.cond(
            (size[0] == height) & (size[1] == width),
            lambda: probabilities,
            lambda: tf.image.resize(probabilities, size, method="bilinear"),
        )
        return {
            "probabilities": probabilities,
            "class_map": tf.argmax(probabilities, axis=-1, output_type=tf.int32),
            "class_names": _per_image(names, images),
        }

    def decode(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        size = tf.shape(image)[:2]
        image = _resize_to(tf.cast(image, tf.float32), height, width)
        return tf.ensure_shape(image, (height, width, channels)), size

    def segment_bytes(images):
        pixels, sizes = tf.map_fn(
            decode,
            images,
            fn_output_signature=(
                tf.TensorSpec((height, width, channels), tf.float32),
                tf.TensorSpec((2,), tf.int32),
            ),
        )
        probabilities = segment(pixels)
        return {
            "probabilities": probabilities,
            "class_map": tf.argmax(probabilities, axis=-1, output_type=tf.int32),
            "image_size": sizes,
            "class_names": _per_image(names, images),
        }

    metadata = {
        "task": "segmentation",
        "class_names": [str(n) for n in class_names],
        "image_size": [height, width],
        "channels": channels,
    }
    return _write_archive(model, path, segment_pixels, segment_bytes, channels, metadata=metadata)


def _per_image(values, images):
    """(K,) ``values`` repeated once per image of ``images`` (B, ...): (B, K)."""
    import tensorflow as tf

    return tf.tile(values[None], [tf.shape(images)[0], 1])


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
