"""A loopback stand-in for TF Serving's REST API serving one SavedModel folder, and the
tiny models the serving tests export.

:class:`TFServingStub` answers, on 127.0.0.1 and a free port:

* ``GET /v1/models/<name>[/versions/<v>]``: the version status;
* ``GET /v1/models/<name>[/versions/<v>]/metadata``: ``{"model_spec", "metadata": {"signature_def":
  {"signature_def": {...}}}}`` with each signature's inputs and outputs (dtype, shape);
* ``POST /v1/models/<name>[/versions/<v>]:predict``: the body decoded as TF Serving does
  (:func:`cnn_apps.serving.rest.decode_instances`), cast to the signature's dtypes, run through
  the loaded signature, answered in row format (:func:`~cnn_apps.serving.rest.row_format_response`);
  errors as ``{"error": ...}`` with HTTP 400 (bad request) or 404 (unknown model or version).

So the client is tested against the documented protocol rather than against itself.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from cnn_apps.errors import ModelError
from cnn_apps.serving.rest import decode_instances, row_format_response

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:predict)?$"
)


def _tensor_info(spec, prefix: str) -> dict:
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    return {
        "dtype": "DT_" + spec.dtype.name.upper(),
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": f"{prefix}_{spec.name}:0",
    }


class TFServingStub:
    """TF Serving's REST API for the SavedModel at ``path`` as model ``name``, version
    ``version``. Use as a context manager or call :meth:`close`."""

    def __init__(self, path, name: str = "model", version: int = 1):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(str(path))
        self.name, self.version = name, int(version)
        self.requests: list[dict] = []  # the bodies POSTed, for the tests to look at
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self):
                m = _PATH.match(self.path)
                if not m:
                    self._reply(404, {"error": f"Malformed request: {self.command} {self.path}"})
                    return None
                version = int(m["version"]) if m["version"] else stub.version
                if m["name"] != stub.name or version != stub.version:
                    what = f"Specific({m['name']}, {version})" if m["version"] else f"Latest({m['name']})"
                    self._reply(404, {"error": f"Servable not found for request: {what}"})
                    return None
                return m["rest"] or ""

            def do_GET(self):
                rest = self._route()
                if rest is None:
                    return
                if rest == "":
                    self._reply(
                        200,
                        {
                            "model_version_status": [
                                {
                                    "version": str(stub.version),
                                    "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""},
                                }
                            ]
                        },
                    )
                elif rest == "/metadata":
                    self._reply(200, stub.metadata())
                else:
                    self._reply(404, {"error": f"Malformed request: GET {self.path}"})

            def do_POST(self):
                rest = self._route()
                if rest is None:
                    return
                if rest != ":predict":
                    self._reply(404, {"error": f"Malformed request: POST {self.path}"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError as exc:
                    self._reply(400, {"error": f"JSON Parse error: {exc}"})
                    return
                stub.requests.append(body)
                code, reply = stub.predict(body)
                self._reply(code, reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models/{self.name}"

    def metadata(self) -> dict:
        defs = {}
        for sig_name, fn in self.loaded.signatures.items():
            inputs = fn.structured_input_signature[1]
            defs[sig_name] = {
                "inputs": {k: _tensor_info(s, sig_name) for k, s in inputs.items()},
                "outputs": {
                    k: _tensor_info(s, "StatefulPartitionedCall") for k, s in fn.structured_outputs.items()
                },
                "method_name": "tensorflow/serving/predict",
            }
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": {"signature_def": defs}},
        }

    def predict(self, body: dict) -> tuple[int, dict]:
        import tensorflow as tf

        name = body.get("signature_name") or "serving_default"
        if name not in self.loaded.signatures:
            return 400, {"error": f'Serving signature name: "{name}" not found in signature def'}
        fn = self.loaded.signatures[name]
        specs = fn.structured_input_signature[1]
        try:
            values = decode_instances(body, input_name=next(iter(specs)) if len(specs) == 1 else "inputs")
        except ModelError as exc:
            return 400, {"error": str(exc)}
        if set(values) != set(specs):
            return 400, {"error": f"input names {sorted(values)} are not the signature's {sorted(specs)}"}
        tensors = {}
        for key, spec in specs.items():
            array = values[key]
            try:
                if spec.dtype == tf.string:
                    tensors[key] = tf.constant(array.tolist(), tf.string)
                else:
                    tensors[key] = tf.constant(np.asarray(array).astype(spec.dtype.as_numpy_dtype))
            except (TypeError, ValueError) as exc:
                return 400, {"error": f"input {key}: cannot convert to {spec.dtype.name}: {exc}"}
        try:
            outputs = fn(**tensors)
            return 200, row_format_response(outputs)
        except (tf.errors.InvalidArgumentError, ValueError) as exc:
            return 400, {"error": str(exc).strip().splitlines()[0]}
        except ModelError as exc:
            return 400, {"error": str(exc)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------- tiny models for the serving tests
CLASS_NAMES = ["circle", "square", "star"]
DETECTOR_CLASSES = ["circle", "square", "star", "triangle"]
SEGMENTER_CLASSES = ["background", "circle", "square"]


def tiny_classifier(seed: int = 0):
    import keras

    from cnn_apps.classification import ImageClassifier

    keras.utils.set_random_seed(seed)
    return ImageClassifier(
        3,
        (32, 32, 3),
        class_names=CLASS_NAMES,
        backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)},
    )


def tiny_detector(seed: int = 0):
    """A tiny SSD (64 px) keeping candidates down to score 0.05."""
    import keras

    from cnn_apps.detection.ssd import SSD

    keras.utils.set_random_seed(seed)
    return SSD(
        4,
        image_size=64,
        backbone_args={"stage_filters": [8, 16, 32, 32]},
        extra_blocks=(32, 32),
        postprocess={"score_threshold": 0.05, "max_detections": 20},
        class_names=DETECTOR_CLASSES,
    )


def tiny_fast_rcnn(seed: int = 0):
    """A tiny Fast R-CNN (64 px, 24 proposals): a detector fed region proposals."""
    import keras

    from cnn_apps.detection.fast_rcnn import FastRCNN

    keras.utils.set_random_seed(seed)
    return FastRCNN(
        4,
        image_size=64,
        backbone_args={"stage_filters": [8, 16, 16, 32]},
        head_units=[32],
        max_proposals=24,
        postprocess={"score_threshold": 0.05, "max_detections": 20},
        class_names=DETECTOR_CLASSES,
    )


def tiny_segmenter(seed: int = 0):
    import keras

    from cnn_apps.segmentation.unet import UNet

    keras.utils.set_random_seed(seed)
    return UNet(3, image_size=32, filters=4, depth=2, class_names=SEGMENTER_CLASSES)


def export(model, path):
    """``model`` exported with the signatures of its kind; returns ``path``."""
    from cnn_apps.detection import Detector
    from cnn_apps.segmentation import Segmenter
    from cnn_apps.serving import export_classifier, export_detector, export_segmenter

    if isinstance(model, Detector):
        export_detector(model, path, model.class_names)
    elif isinstance(model, Segmenter):
        export_segmenter(model, path, model.class_names)
    else:
        export_classifier(model, path, model.class_names)
    return path
