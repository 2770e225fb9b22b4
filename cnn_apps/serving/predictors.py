"""The models ``cnn-apps predict`` predicts with: each a :class:`Predictor` with the same
interface, opened by :func:`open_predictor` from what ``--model`` names:

* an export folder (:class:`ExportPredictor`): ``exports/<name>`` (its highest integer
  version, :func:`resolve_export`) or ``exports/<name>/<version>``; its ``serve_bytes``
  signature and ``assets.extra/cnn_apps.json``;
* ``runs:/<run_id>/model``, ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
  (:class:`KerasPredictor`): the Keras model from MLflow (``--tracking-uri``, else
  ``MLFLOW_TRACKING_URI``, else ``./mlruns``), with decoding, resizing and post-processing
  done here the way the export does them in its graph;
* a TF Serving REST URL ``http://host:8501/v1/models/<name>[/versions/<n>]``
  (:class:`ServingPredictor`): ``serve_bytes`` requests with base64 files
  (:mod:`cnn_apps.serving.rest`); the task comes from the signature's outputs
  (:func:`task_from_outputs`), class names and proposal settings from ``--metadata`` (the
  export's ``assets.extra/cnn_apps.json``; TF Serving does not serve it).

Detectors fed region proposals (Fast R-CNN) get selective search with the settings they were
trained with, run on the image resized to the model's input size (as in training) and scaled
to the image's own pixels (:func:`image_proposals`). A file the model's own decoder refuses
raises :class:`InputRefused`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cnn_apps.errors import ConfigError, ModelError, TrackingError
from cnn_apps.serving.images import ImageFile

TASKS = ("classification", "detection", "segmentation")
SIGNATURE = "serve_bytes"


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
