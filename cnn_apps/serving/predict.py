"""Batch prediction: ``cnn-apps predict --model M --input I --output results.jsonl``.

``M`` is one of (each a :class:`Predictor` with the same interface):

* an export folder: ``exports/<name>`` (its highest integer version) or
  ``exports/<name>/<version>``; its ``serve_bytes`` signature and ``assets.extra/cnn_apps.json``;
* ``runs:/<run_id>/model``, ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: the
  Keras model from MLflow (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
  ``./mlruns``), with decoding, resizing and post-processing done here the way the export
  does them in its graph;
* a TF Serving REST URL ``http://host:8501/v1/models/<name>[/versions/<n>]``: ``serve_bytes``
  requests with base64 files (:mod:`cnn_apps.serving.rest`); the task comes from the
  signature's outputs, class names and proposal settings from ``--metadata`` (the export's
  ``assets.extra/cnn_apps.json``; TF Serving does not serve it).

``I`` is an image file, a folder (its files with an image extension, sorted, not recursive)
or a glob pattern (sorted). Each file is read and decoded here first (Pillow and OpenCV):
an empty, truncated, unreadable or non-image file becomes an error record and the others
are still predicted; grayscale, palette, RGBA and 16-bit images are converted to 3-channel
8-bit RGB and re-encoded as PNG. A file the model's own decoder refuses is isolated by
predicting its batch file by file.

Outputs: ``results.jsonl``, one line per input file in input order, and optionally COCO
results JSON (``--coco-json``, detection) and PNG class maps (``--masks``, segmentation);
see :func:`run_predict`. Detectors fed region proposals (Fast R-CNN) get selective search
with the settings they were trained with, run on the image resized to the model's input
size (as in training) and scaled to the image's own pixels.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_apps.errors import ConfigError, DataError, ModelError, TrackingError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TASKS = ("classification", "detection", "segmentation")
SIGNATURE = "serve_bytes"


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="an export folder (exports/<name> for its newest version, or exports/<name>/<version>), "
        "runs:/<run_id>/model, models:/<name>@<alias> or models:/<name>/<version>, "
        "or a TF Serving REST URL (http://host:8501/v1/models/<name>)",
    )
    p.add_argument(
        "--input", required=True, metavar="INPUT", help="an image file, a folder of images, or a glob"
    )
    p.add_argument(
        "--output", default="results.jsonl", help="one JSON line per file (default: results.jsonl)"
    )
    p.add_argument(
        "--coco-json",
        dest="coco_json",
        metavar="FILE",
        help="detection: also write the detections as COCO results JSON",
    )
    p.add_argument("--masks", metavar="DIR", help="segmentation: also write each class map as a PNG in DIR")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument(
        "--tracking-uri",
        dest="tracking_uri",
        help="for runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else ./mlruns)",
    )
    p.add_argument(
        "--coco-gt",
        dest="coco_gt",
        metavar="FILE",
        help="with --coco-json: a COCO annotations file whose image ids (matched by file_name) and "
        "category ids (matched by name) the results use; without it image_id is the file's "
        "1-based position in the input and category_id is class_id + 1",
    )
    p.add_argument(
        "--metadata",
        metavar="FILE",
        help="for a TF Serving URL: the export's assets.extra/cnn_apps.json (or its export folder), "
        "for the class names and a Fast R-CNN's proposal settings",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per TF Serving request (default: 60)")
    p.add_argument(
        "--max-image-pixels",
        dest="max_image_pixels",
        type=int,
        metavar="N",
        help="refuse an image whose header claims more pixels, before decoding it (a decompression "
        "bomb); default: data.max_image_pixels's default, 89478485; 0: no limit",
    )


# ---------------------------------------------------------------------- inputs
def list_inputs(spec: str) -> list[Path]:
    """The files ``spec`` names: itself (a file), a folder's image files (by extension,
    sorted, not recursive), or a glob pattern's matching files (sorted)."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"--input {spec}: the folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"--input {spec}: the pattern matches no files")
        return files
    raise DataError(f"--input {spec}: no such file or folder (and not a glob pattern)")


@dataclass
class ImageFile:
    """One input image: ``data`` the encoded file sent to the model (the original bytes,
    or a PNG of the converted pixels), ``pixels`` (H, W, 3) uint8 RGB."""

    file: str
    data: bytes
    pixels: np.ndarray
    converted: bool = False

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def _to_uint8_rgb(array: np.ndarray, bgr: bool) -> tuple[np.ndarray, bool]:
    """Any decoded array -> (H, W, 3) uint8 RGB, and whether that changed anything."""
    import cv2

    changed = False
    if array.dtype == np.uint16:
        array, changed = np.round(array.astype(np.float32) / 257.0).astype(np.uint8), True
    elif array.dtype != np.uint8:
        array, changed = np.clip(np.round(array.astype(np.float64)), 0, 255).astype(np.uint8), True
    if array.ndim == 2:
        array, changed = array[..., None], True
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1), True
    if channels == 2:  # gray + alpha
        return np.repeat(array[..., :1], 3, axis=-1), True
    if channels == 4:
        array, changed = array[..., :3], True
    elif channels != 3:
        raise DataError(f"{channels}-channel image")
    return (cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_BGR2RGB) if bgr else array), changed


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> ImageFile:
    """Read and check one file; raises :class:`DataError` saying what is wrong with it.

    An image whose header claims more than ``max_pixels`` pixels (default: the default of
    ``data.max_image_pixels``; 0: no limit) is refused before it is decoded (a decompression
    bomb). A photo with an EXIF orientation is turned upright (the model's own decoder
    ignores the tag) and sent re-encoded as PNG, so its boxes and masks are upright too."""
    import warnings

    import cv2
    from PIL import Image

    from cnn_apps.data.sources.images import (
        DEFAULT_MAX_IMAGE_PIXELS,
        exif_orientation,
        orient_array,
        pil_without_bomb_guard,
        too_many_pixels,
    )

    name = str(path)
    limit = DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read the file ({exc.strerror or exc})") from exc
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    try:  # Pillow finds truncated and non-image files (OpenCV may decode part of one silently)
        with warnings.catch_warnings(), pil_without_bomb_guard():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image_format, mode = image.format, image.mode
                # the header only, nothing decoded yet
                too_big = too_many_pixels(image.size, limit, "--max-image-pixels", "predict on")
                if not too_big:
                    image.load()
                    orientation = exif_orientation(image)
                    fallback = image.copy()
    except Image.UnidentifiedImageError as exc:
        raise DataError(f"{name}: not an image file (no image format recognised)") from exc
    except Exception as exc:  # any decoder failure is the file's problem
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if too_big:
        raise DataError(f"{name}: {too_big}")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # ignores EXIF
    if decoded is not None and decoded.size:
        pixels, changed = _to_uint8_rgb(decoded, bgr=decoded.ndim == 3 and decoded.shape[-1] in (3, 4))
    else:  # a format OpenCV lacks (e.g. GIF in some builds): Pillow's pixels
        if fallback.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            pixels, changed = _to_uint8_rgb(np.asarray(fallback), bgr=False)
        else:
            pixels, changed = np.asarray(fallback.convert("RGB")), True
    if orientation != 1:  # stored turned or mirrored: upright as viewers show it
        pixels, changed = orient_array(pixels, orientation), True
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise DataError(f"{name}: the image has no pixels")
    # the export's decoder reads JPEG, PNG and BMP: anything else, or anything converted, goes as PNG
    converted = changed or mode != "RGB" or image_format not in ("JPEG", "PNG", "BMP")
    if converted:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - PNG encoding of uint8 arrays does not fail
            raise DataError(f"{name}: could not re-encode as PNG")
        data = buf.tobytes()
    return ImageFile(name, data, np.ascontiguousarray(pixels), converted)


# ---------------------------------------------------------------------- predictors
class InputRefused(ModelError):
    """The model (its decoder) refused an input of a batch; predicted file by file to find it."""


def _names(names, count: int | None = None) -> list[str] | None:
    if names is None:
        return None if count is None else [str(i) for i in range(count)]
    return [str(n) for n in names]


def task_from_outputs(outputs) -> str:
    """The task of a signature with these output names."""
    outputs = set(outputs)
    if "detection_boxes" in outputs:
        return "detection"
    if "class_map" in outputs:
        return "segmentation"
    if "probabilities" in outputs:
        return "classification"
    raise ModelError(f"cannot tell the task from the outputs {sorted(outputs)}: not a cnn-apps export")


def resize_nearest(class_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A class map resized to (height, width) with nearest neighbour (every source uses this)."""
    import cv2

    class_map = np.asarray(class_map)
    if class_map.shape == (height, width):
        return class_map.astype(np.int32)
    return cv2.resize(class_map.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)


def image_proposals(images: list[ImageFile], settings, model_size: tuple[int, int]) -> np.ndarray:
    """Selective search (``settings``: a ProposalSettings) on each image resized to the
    model's (H, W), as in training, as (B, P, 4) xyxy in each image's own pixels (-1 rows:
    padding)."""
    import cv2

    from cnn_apps.data.proposal_cache import propose

    height, width = model_size
    resized = []
    for image in images:
        shrink = image.height * image.width > height * width
        resized.append(
            cv2.resize(
                image.pixels, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
        )
    boxes, _ = propose(resized, settings)
    scale = np.array([[[image.width / width, image.height / height] * 2] for image in images], np.float32)
    padding = np.all(boxes < 0, axis=-1, keepdims=True)
    return np.where(padding, boxes, boxes * scale).astype(np.float32)


class Predictor:
    """A model that predicts batches of :class:`ImageFile`.

    ``task`` (classification, detection, segmentation), ``class_names`` (None when unknown:
    a TF Serving model without ``--metadata``), ``proposal_settings`` (a ProposalSettings for a
    detector fed region proposals, else None), ``model_size`` (H, W) and ``source`` (what
    ``--model`` named). :meth:`predict` returns one raw result per image:
    classification ``{"probabilities": (K,)}`` (``class_name`` where the source says it),
    detection ``{"boxes": (n, 4), "scores": (n,), "classes": (n,), "class_names": [n]}`` in the
    image's pixels, segmentation ``{"class_map": (H, W)}`` at the image's size."""

    task: str
    class_names: list[str] | None
    proposal_settings = None
    model_size: tuple[int, int] | None = None
    source: str

    def predict(self, images: list[ImageFile]) -> list[dict]:
        raise NotImplementedError  # pragma: no cover

    def _proposals(self, images):
        if self.proposal_settings is None:
            return None
        return image_proposals(images, self.proposal_settings, self.model_size)


def _signature_results(task: str, out: dict, images: list[ImageFile], class_names) -> list[dict]:
    """The ``serve_bytes`` outputs (NumPy) of an export or a TF Serving reply -> raw results."""
    results = []
    for i, image in enumerate(images):
        if task == "classification":
            result = {"probabilities": np.asarray(out["probabilities"][i], np.float64)}
            if "class_name" in out:
                result["class_name"] = _text(out["class_name"][i])
        elif task == "detection":
            n = int(out["num_detections"][i])
            classes = np.asarray(out["detection_classes"][i][:n], np.int64)
            result = {
                "boxes": np.asarray(out["detection_boxes"][i][:n], np.float64).reshape(-1, 4),
                "scores": np.asarray(out["detection_scores"][i][:n], np.float64),
                "classes": classes,
            }
            if "detection_class_names" in out:
                result["class_names"] = [_text(s) for s in out["detection_class_names"][i][:n]]
        else:
            class_map = np.asarray(out["class_map"][i])
            height, width = (int(v) for v in np.asarray(out["image_size"][i]))
            if (height, width) != (image.height, image.width):
                raise ModelError(
                    f"{image.file}: the model decoded a {height}x{width} image, "
                    f"this reader {image.height}x{image.width}"
                )
            result = {"class_map": resize_nearest(class_map, height, width)}
            if "class_names" in out and class_names is None:
                result["class_names_seen"] = [_text(s) for s in out["class_names"][i]]
        results.append(result)
    return results


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_metadata(metadata: dict, where: str) -> None:
    task = metadata.get("task")
    if task is not None and task not in TASKS:
        raise ModelError(f"{where}: unknown task {task!r}")


def resolve_export(path: str | os.PathLike) -> Path:
    """``exports/<name>/<version>`` as given, or ``exports/<name>``'s highest integer version."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = (
        sorted(
            (int(p.name), p)
            for p in path.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
        )
        if path.is_dir()
        else []
    )
    if not versions:
        raise ModelError(
            f"--model {path}: no SavedModel there (expected {path}/saved_model.pb or "
            f"{path}/<version>/saved_model.pb, as `cnn-apps export` writes)"
        )
    return versions[-1][1]


class ExportPredictor(Predictor):
    """An export folder: its ``serve_bytes`` signature, loaded in this process."""

    def __init__(self, path: str | os.PathLike):
        from cnn_apps.data.proposal_cache import ProposalSettings
        from cnn_apps.serving.saved_model import load_export, read_export_metadata

        self.path = resolve_export(path)
        self.source = str(self.path)
        try:
            self.loaded = load_export(self.path)
        except ModelError:
            raise
        except Exception as exc:  # TensorFlow's many load errors
            raise ModelError(
                f"cannot load the SavedModel at {self.path}: {str(exc).splitlines()[0]}"
            ) from exc
        self.signature = self.loaded.signatures[SIGNATURE]
        meta = read_export_metadata(self.path)
        _check_metadata(meta, str(self.path))
        self.task = meta.get("task") or task_from_outputs(self.signature.structured_outputs)
        self.class_names = _names(meta.get("class_names"))
        self.model_size = tuple(meta["image_size"]) if meta.get("image_size") else None
        inputs = self.signature.structured_input_signature[1]
        if "proposals" in inputs:
            if not meta.get("proposals") or self.model_size is None:
                raise ModelError(
                    f"{self.path} takes region proposals but its {SIGNATURE} metadata "
                    "(assets.extra/cnn_apps.json) lacks the proposal settings; re-export it"
                )
            self.proposal_settings = ProposalSettings(**meta["proposals"])

    def predict(self, images):
        import tensorflow as tf

        extra = {}
        proposals = self._proposals(images)
        if proposals is not None:
            extra["proposals"] = tf.constant(proposals)
        try:
            out = self.signature(images=tf.constant([image.data for image in images]), **extra)
        except tf.errors.InvalidArgumentError as exc:
            raise InputRefused(str(exc.message).strip().splitlines()[0]) from exc
        return _signature_results(self.task, {k: v.numpy() for k, v in out.items()}, images, self.class_names)


def _set_tracking(uri: str | None) -> str:
    from cnn_apps import tracking

    tracking._mlflow()  # quiet MLflow set-up
    uri = uri or tracking.tracking_uri(None)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise TrackingError(f"no MLflow store at {uri}; pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    clean = tracking.set_tracking_uri(uri)  # USER:PASSWORD@ go to MLflow's credential variables
    if uri.startswith(("http://", "https://")):
        tracking.check_server(uri)  # unreachable, or refusing these credentials: one line
    return tracking.display_uri(clean)  # for messages


class KerasPredictor(Predictor):
    """A Keras model from MLflow (``runs:/`` or ``models:/``), with the export's decoding,
    resizing and post-processing done here in eager TensorFlow."""

    def __init__(self, uri: str, tracking_uri: str | None = None):
        import cnn_apps.segmentation  # noqa: F401  (registers the segmenters' classes for loading)
        from cnn_apps import tracking
        from cnn_apps.data.proposal_cache import ProposalSettings
        from cnn_apps.detection import Detector
        from cnn_apps.segmentation import Segmenter
        from cnn_apps.serving.saved_model import image_input_shape

        store = _set_tracking(tracking_uri)
        self.source = uri
        try:
            self.model = tracking.load_keras_model(uri)
        except TrackingError as exc:
            raise TrackingError(f"{exc} (tracking URI {store})") from exc
        model = self.model
        self.task = (
            "detection"
            if isinstance(model, Detector)
            else "segmentation"
            if isinstance(model, Segmenter)
            else "classification"
        )
        height, width, self.channels = image_input_shape(model)
        self.model_size = (height, width)
        count = None
        if self.task == "classification":
            count = int(model.output_shape[-1])
        self.class_names = _names(getattr(model, "class_names", None), count)
        self.proposal_settings = ProposalSettings.of(model) if self.task == "detection" else None
        if self.task != "classification" and self.channels != 3:
            raise ModelError(f"{uri}: a {self.task} model with {self.channels} channels; exports take 3")

    def _decode(self, images, always_resize: bool):
        """(B, H, W, C) float32 at the model's size and (B, 2) (H, W), decoded by TensorFlow
        from the bytes the export would get."""
        import tensorflow as tf

        from cnn_apps.serving.saved_model import _resize_to

        height, width = self.model_size
        pixels, sizes = [], []
        try:
            for image in images:
                decoded = tf.io.decode_image(image.data, channels=self.channels, expand_animations=False)
                sizes.append(tf.shape(decoded)[:2].numpy())
                decoded = tf.cast(decoded, tf.float32)
                if always_resize:  # the classifier export resizes every decoded file
                    pixels.append(
                        tf.image.resize(decoded, (height, width), method="bilinear", antialias=True)
                    )
                else:
                    pixels.append(_resize_to(decoded, height, width))
        except tf.errors.InvalidArgumentError as exc:
            raise InputRefused(str(exc.message).strip().splitlines()[0]) from exc
        return tf.stack(pixels), np.stack(sizes).astype(np.int32)

    def predict(self, images):
        import tensorflow as tf

        model, (height, width) = self.model, self.model_size
        if self.task == "classification":
            pixels, _ = self._decode(images, always_resize=True)
            probabilities = np.asarray(model(pixels, training=False), np.float64)
            return [{"probabilities": p} for p in probabilities]
        pixels, sizes = self._decode(images, always_resize=False)
        if self.task == "segmentation":
            probabilities = tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32), axis=-1)
            maps = tf.argmax(probabilities, axis=-1, output_type=tf.int32).numpy()
            return [{"class_map": resize_nearest(m, int(h), int(w))} for m, (h, w) in zip(maps, sizes)]
        scale = sizes.astype(np.float32) / np.array([height, width], np.float32)
        factors = np.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], axis=-1)
        proposals = self._proposals(images)
        if proposals is None:
            out = model.detect(pixels)
        else:
            count = int(self.proposal_settings.count)
            boxes = np.where(proposals < 0, proposals, proposals / factors[:, None, :])[:, :count]
            boxes = np.pad(boxes, [(0, 0), (0, count - boxes.shape[1]), (0, 0)], constant_values=-1.0)
            out = model.detect({"images": pixels, "proposals": tf.constant(boxes, tf.float32)})
        out = {k: np.asarray(v) for k, v in out.items()}
        results = []
        for i in range(len(images)):
            n = int(out["num_detections"][i])
            classes = out["labels"][i][:n].astype(np.int64)
            results.append(
                {
                    "boxes": (out["boxes"][i][:n].astype(np.float32) * factors[i]).astype(np.float64),
                    "scores": out["scores"][i][:n].astype(np.float64),
                    "classes": classes,
                }
            )
        return results


class ServingPredictor(Predictor):
    """A model behind TF Serving's REST API: ``serve_bytes`` with base64 files."""

    def __init__(self, url: str, metadata: str | None = None, timeout: float = 60.0):
        from cnn_apps.data.proposal_cache import ProposalSettings
        from cnn_apps.serving.rest import TFServingClient

        self.client = TFServingClient(url, timeout=timeout)
        self.source = self.client.url
        signatures = self.client.signatures()
        if SIGNATURE not in signatures:
            raise ModelError(
                f"TF Serving at {self.client.url} has no {SIGNATURE} signature "
                f"(it has {sorted(signatures)}); serve an export written by `cnn-apps export`"
            )
        signature = signatures[SIGNATURE]
        meta = _read_metadata_option(metadata) if metadata else {}
        self.task = task_from_outputs(signature.get("outputs", {}))
        if meta.get("task") and meta["task"] != self.task:
            raise ModelError(
                f"--metadata {metadata} describes a {meta['task']} model, but TF Serving at "
                f"{self.client.url} serves a {self.task} model"
            )
        self.class_names = _names(meta.get("class_names"))
        self.model_size = tuple(meta["image_size"]) if meta.get("image_size") else None
        self.inputs = sorted(signature.get("inputs", {}))
        if "proposals" in self.inputs:
            if not meta.get("proposals") or self.model_size is None:
                raise ModelError(
                    f"TF Serving at {self.client.url} serves a detector fed region proposals: pass "
                    "--metadata <export>/assets.extra/cnn_apps.json so they are made with the settings "
                    "it was trained with (export folders and runs:/ or models:/ URIs need nothing more)"
                )
            self.proposal_settings = ProposalSettings(**meta["proposals"])

    def predict(self, images):
        from cnn_apps.serving.rest import ServingError

        proposals = self._proposals(images)
        extra = None if proposals is None else {"proposals": proposals}
        try:
            out = self.client.predict([image.data for image in images], SIGNATURE, extra)
        except ServingError as exc:
            # the server refused the request's content (400), or it was too large to send or
            # take (413): split the batch to find the file
            if exc.status in (400, 413):
                raise InputRefused(str(exc)) from exc
            raise
        return _signature_results(self.task, out, images, self.class_names)


def _read_metadata_option(value: str) -> dict:
    from cnn_apps.serving.saved_model import METADATA_FILE

    path = Path(value)
    if path.is_dir():
        path = resolve_export(path) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--metadata {value}: cannot read it as JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"--metadata {value}: expected a JSON object (an export's {METADATA_FILE})")
    _check_metadata(meta, f"--metadata {value}")
    return meta


def open_predictor(
    model: str, tracking_uri: str | None = None, metadata: str | None = None, timeout: float = 60.0
) -> Predictor:
    """The :class:`Predictor` for what ``--model`` names."""
    if model.startswith(("http://", "https://")):
        return ServingPredictor(model, metadata=metadata, timeout=timeout)
    if model.startswith(("runs:/", "models:/")):
        return KerasPredictor(model, tracking_uri=tracking_uri)
    if ":/" in model and not Path(model).exists():
        raise ModelError(
            f"--model {model}: expected an export folder, runs:/..., models:/... or an http(s):// "
            "TF Serving URL"
        )
    if not Path(model).exists():
        raise ModelError(f"--model {model}: no such export folder")
    return ExportPredictor(model)


# ---------------------------------------------------------------------- records
def _round(value: float, digits: int) -> float:
    return round(float(value), digits)


def make_record(predictor: Predictor, image: ImageFile, raw: dict) -> dict:
    """The results.jsonl line of one predicted image (see :func:`run_predict`)."""
    names = predictor.class_names
    if predictor.task == "classification":
        probabilities = raw["probabilities"]
        class_id = int(np.argmax(probabilities))
        keys = (
            names
            if names is not None and len(names) == len(probabilities)
            else [str(i) for i in range(len(probabilities))]
        )
        class_name = raw.get("class_name") or (names[class_id] if names is not None else str(class_id))
        return {
            "file": image.file,
            "class_name": class_name,
            "class_id": class_id,
            "score": _round(probabilities[class_id], 6),
            "probabilities": {k: _round(p, 6) for k, p in zip(keys, probabilities)},
        }
    if predictor.task == "detection":
        detections = []
        given = raw.get("class_names")
        for j, (box, score, cls) in enumerate(zip(raw["boxes"], raw["scores"], raw["classes"])):
            cls = int(cls)
            name = (
                given[j]
                if given
                else (names[cls] if names is not None and 0 <= cls < len(names) else str(cls))
            )
            detections.append(
                {
                    "box": [_round(v, 3) for v in box],
                    "score": _round(score, 6),
                    "class_id": cls,
                    "class_name": name,
                }
            )
        return {"file": image.file, "width": image.width, "height": image.height, "detections": detections}
    class_map = raw["class_map"]
    seen = raw.get("class_names_seen")
    keys = names if names is not None else seen
    count = len(keys) if keys is not None else int(class_map.max()) + 1
    counts = np.bincount(class_map.ravel(), minlength=count)
    keys = keys if keys is not None else [str(i) for i in range(len(counts))]
    return {
        "file": image.file,
        "width": image.width,
        "height": image.height,
        "class_pixels": {k: int(c) for k, c in zip(keys, counts)},
    }


def _coco_ids(path: str | None):
    """({file_name or basename: image id}, {category name: id}) from a COCO annotations file."""
    if path is None:
        return None, None
    try:
        gt = json.loads(Path(path).read_text())
        images = {str(img["file_name"]): int(img["id"]) for img in gt["images"]}
        categories = {str(cat["name"]): int(cat["id"]) for cat in gt["categories"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"--coco-gt {path}: not a COCO annotations file ({type(exc).__name__}: {exc})"
        ) from exc
    by_name = {}
    for name, image_id in images.items():
        by_name.setdefault(Path(name).name, []).append(image_id)
    images.update({name: ids[0] for name, ids in by_name.items() if len(ids) == 1 and name not in images})
    return images, categories


def _mask_path(folder: Path, file: str, used: set) -> Path:
    """``<stem>.png`` in ``folder``, or ``<name>.png`` when another input already took the stem."""
    path = folder / (Path(file).stem + ".png")
    if path in used:
        path = folder / (Path(file).name + ".png")
    n = 2
    while path in used:
        path = folder / f"{Path(file).stem}-{n}.png"
        n += 1
    used.add(path)
    return path


def _predict_isolating(predictor: Predictor, images: list[ImageFile]) -> list:
    """Raw results (or the :class:`InputRefused` error) per image; a refused batch is split
    until the refused files are alone."""
    try:
        return predictor.predict(images)
    except InputRefused as exc:
        if len(images) == 1:
            return [exc]
        half = len(images) // 2
        return _predict_isolating(predictor, images[:half]) + _predict_isolating(predictor, images[half:])


def run_predict(args) -> int:
    """``cnn-apps predict``: writes ``args.output`` (JSON lines, input order):

    * classification: ``file, class_name, class_id, score, probabilities {name: p}``;
    * detection: ``file, width, height, detections [{box [x1, y1, x2, y2] (pixels of the
      image), score, class_id, class_name}]``;
    * segmentation: ``file, width, height, class_pixels {name: count}`` and ``mask`` (the
      PNG's path) with ``--masks``;
    * a file that could not be predicted: ``file, error``.

    ``--coco-json`` (detection): a COCO results list ``[{image_id, category_id, bbox [x, y, w,
    h], score}]``; ids from ``--coco-gt`` (images by file_name, then by base name; categories
    by name; detections of files or classes it lacks are left out, with a warning), else
    image_id = the file's 1-based position in the input, category_id = class_id + 1.
    ``--masks DIR`` (segmentation): ``DIR/<stem>.png`` per image at its own size, pixel =
    class id (uint8). A progress bar and a summary go to stderr. Returns 0 when at least
    one file was predicted, 1 when every file failed."""
    from tqdm import tqdm

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.coco_gt and not args.coco_json:
        raise ConfigError("--coco-gt only names the ids of --coco-json's results; pass --coco-json FILE too")
    files = list_inputs(args.input)
    coco_images, coco_categories = _coco_ids(args.coco_gt)
    predictor = open_predictor(
        args.model,
        tracking_uri=args.tracking_uri,
        metadata=getattr(args, "metadata", None),
        timeout=getattr(args, "timeout", 60.0),
    )
    if args.coco_json and predictor.task != "detection":
        raise ConfigError(f"--coco-json is for detectors; {predictor.source} is a {predictor.task} model")
    if args.masks and predictor.task != "segmentation":
        raise ConfigError(f"--masks is for segmenters; {predictor.source} is a {predictor.task} model")
    if args.masks and predictor.class_names is not None and len(predictor.class_names) > 256:
        raise ConfigError(f"--masks writes uint8 PNGs: {len(predictor.class_names)} classes do not fit")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    masks = Path(args.masks) if args.masks else None
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
    used_masks: set = set()
    coco, warned = [], set()
    predicted = failed = 0

    def warn(message):
        if message not in warned:
            warned.add(message)
            tqdm.write(f"warning: {message}", file=sys.stderr)

    with (
        open(output, "w") as out,
        tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr, dynamic_ncols=True) as bar,
    ):
        for start in range(0, len(files), args.batch_size):
            batch = files[start : start + args.batch_size]
            slots: list = []  # per file: ImageFile or the error record
            for path in batch:
                try:
                    limit = getattr(args, "max_image_pixels", None)
                    slots.append(read_image(path) if limit is None else read_image(path, max_pixels=limit))
                except DataError as exc:
                    slots.append({"file": str(path), "error": str(exc)})
            images = [s for s in slots if isinstance(s, ImageFile)]
            raws = iter(_predict_isolating(predictor, images) if images else [])
            for position, slot in enumerate(slots, start=start + 1):
                if isinstance(slot, dict):
                    record = slot
                else:
                    raw = next(raws)
                    if isinstance(raw, Exception):
                        record = {"file": slot.file, "error": f"{slot.file}: the model refused it ({raw})"}
                    else:
                        record = make_record(predictor, slot, raw)
                        if masks is not None:
                            mask = _mask_path(masks, slot.file, used_masks)
                            _write_mask(mask, raw["class_map"])
                            record["mask"] = str(mask)
                        if args.coco_json:
                            coco.extend(_coco_results(record, position, coco_images, coco_categories, warn))
                if "error" in record:
                    failed += 1
                    tqdm.write(f"error: {record['error']}", file=sys.stderr)
                else:
                    predicted += 1
                out.write(json.dumps(record) + "\n")
            out.flush()
            bar.update(len(batch))
    if args.coco_json:
        Path(args.coco_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.coco_json).write_text(json.dumps(coco) + "\n")
    print(
        f"predicted {predicted} file{'s' * (predicted != 1)}, {failed} failed (see {output})", file=sys.stderr
    )
    return 0 if predicted else 1


def _write_mask(path: Path, class_map: np.ndarray) -> None:
    import cv2

    if class_map.max(initial=0) > 255 or class_map.min(initial=0) < 0:
        raise ModelError(f"{path}: class ids outside 0..255 do not fit a uint8 PNG")
    if not cv2.imwrite(str(path), class_map.astype(np.uint8)):
        raise DataError(f"cannot write {path}")


def _coco_results(record: dict, position: int, images, categories, warn) -> list[dict]:
    file = record["file"]
    if images is None:
        image_id = position
    else:
        image_id = images.get(file, images.get(Path(file).name))
        if image_id is None:
            warn(
                f"{file} is not an image of --coco-gt (by file_name): "
                "its detections are left out of --coco-json"
            )
            return []
    results = []
    for det in record["detections"]:
        if categories is None:
            category_id = det["class_id"] + 1
        else:
            category_id = categories.get(det["class_name"])
            if category_id is None:
                warn(f"class {det['class_name']!r} is not a category of --coco-gt: left out of --coco-json")
                continue
        x1, y1, x2, y2 = det["box"]
        results.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x1, y1, _round(x2 - x1, 3), _round(y2 - y1, 3)],
                "score": det["score"],
            }
        )
    return results
