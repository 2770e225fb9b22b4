"""SavedModel export for TF Serving: each task's signatures and the export's metadata.

Where a version goes (version folders, staging): :mod:`.export_versions`; the check of an
export on reload: :mod:`.export_verification`.

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

import os
from pathlib import Path

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
