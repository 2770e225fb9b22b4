"""The guarded edge of ``cnn-apps serve``: request limits and the refusals that keep a bad
request from reaching the model.

The edge (:class:`EdgeApp`) refuses a bad request before it reaches the model, with a 4xx
status and a one-line JSON body ``{"error": "..."}``, and logs one line for it (never a
traceback):

======  ==========================================================================
status  when
======  ==========================================================================
404     a path other than /invocations, /ping, /health, /version
405     a method the path does not take (``Allow`` says which)
411     a POST without Content-Length (chunked bodies are not accepted)
413     Content-Length over ``--max-request-bytes`` (default 32 MiB; answered before
        the body is read, and the connection closed), more instances than
        ``--max-instances`` (default 256), images of more pixels in all than
        ``--max-pixels`` (default 33,554,432; read from the headers, before decoding)
415     a Content-Type other than application/json (charset, if given, utf-8)
408     the body did not arrive within ``--body-timeout`` seconds (default 60)
400     an empty body, a body that is not UTF-8 or not JSON (with line and column),
        not an object with exactly one of the input keys, malformed base64 or bytes
        that are no image (naming the instance), images of another size than the
        model's, an input the model refuses (MLflow's reason, on one line)
======  ==========================================================================

A failure inside the server answers 500 with the same JSON shape; the server goes on.
A request whose Content-Length is smaller than its body is read as far as Content-Length
says (its JSON then is malformed: 400) and the rest is refused by uvicorn as an invalid
request (400, text).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass

log = logging.getLogger("cnn_apps.serving.model_server")  # the server process logs under one name

MIB = 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 32 * MIB
DEFAULT_MAX_INSTANCES = 256
DEFAULT_MAX_PIXELS = 32 * MIB  # 33,554,432 pixels in one request (under PIL's 89 MP warning)
DEFAULT_BODY_TIMEOUT = 60.0
JSON_TYPE = "application/json"
INPUT_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records")
ROUTES = {
    "/invocations": ("POST",),
    "/ping": ("GET", "HEAD"),
    "/health": ("GET", "HEAD"),
    "/version": ("GET", "HEAD"),
}
MESSAGE_CHARS = 300  # an error message is one line of at most this many characters


@dataclass(frozen=True)
class Limits:
    """What one request may hold (see the module's table)."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_pixels: int = DEFAULT_MAX_PIXELS
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")


class Rejected(Exception):
    """A request refused with ``status`` and a one-line ``message``; ``close``: answer with
    ``Connection: close`` (the body was not read)."""

    def __init__(self, status: int, message: str, close: bool = False, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.close = int(status), one_line(message), close
        self.headers = list(headers or [])


class _Disconnected(Exception):
    """The client went away before its body arrived."""


def one_line(text, limit: int = MESSAGE_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed) of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def mlflow_reason(message: str, stack_trace: str | None = None) -> str:
    """The reason in an MLflow scoring error, without the input it echoes: the text after
    its last ``Error: `` (MLflow nests "Failed to predict data '<the input>'. Error: ..."),
    or, for "an unexpected error while evaluating the model", the exception's last line."""
    reason = str(message).rsplit("Error: ", 1)[-1]
    if "unexpected error while evaluating the model" in reason and stack_trace:
        lines = [line for line in str(stack_trace).strip().splitlines() if line.strip()]
        if lines:
            reason = f"the model failed on the input: {lines[-1].strip()}"
    return one_line(reason)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": one_line(message)}).encode("utf-8")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _nested_shape(value) -> tuple:
    """The shape of nested lists, read along their first elements (cheap; not checked)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _count_instances(key: str, value) -> int:
    if key == "dataframe_split":
        data = value.get("data") if isinstance(value, dict) else None
        return len(data) if isinstance(data, list) else 1
    if isinstance(value, list):
        return len(value)
    if key == "inputs" and isinstance(value, dict) and value and not _is_b64(value):
        first = next(iter(value.values()))  # named inputs: {name: batch}
        return len(first) if isinstance(first, list) else 1
    return 1


class EdgeApp:
    """An ASGI app: MLflow's scoring routes for a pyfunc ``model`` behind request checks.

    ``model`` is an MLflow ``PyFuncModel`` (``mlflow.pyfunc.load_model``); requests it may
    see go through MLflow's own parsing and serialization
    (``mlflow.pyfunc.scoring_server.invocations``), so replies keep MLflow's shapes, and
    ``{"b64": ...}`` images are decoded here and passed to ``model.predict`` as an array.
    Every refusal is :class:`Rejected`; anything else that goes wrong answers 500; both
    as ``{"error": "<one line>"}`` and one log line."""

    def __init__(self, model, limits: Limits | None = None, predict_timeout: float | None = None):
        from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

        self.model = model
        self.limits = limits or Limits()
        self.input_schema = model.metadata.get_input_schema()
        self.predict_timeout = float(predict_timeout or MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
        self.image_size, self.dtype = self._image_input()

    def _image_input(self):
        """(height, width) the model takes (None where free or unknown) and the input dtype."""
        import numpy as np

        schema = self.input_schema
        try:
            if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1:
                spec = schema.inputs[0]
                shape, dtype = tuple(spec.shape), np.dtype(spec.type)
                if len(shape) == 4 and shape[1] and shape[2] and shape[1] > 0 and shape[2] > 0:
                    return (int(shape[1]), int(shape[2])), dtype
                return None, dtype
        except (AttributeError, TypeError, ValueError):  # pragma: no cover - a schema of another kind
            pass
        return None, np.dtype("float32")

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # websockets: not served (uvicorn answers 403)
            return
        method, path = scope.get("method", "?"), scope.get("path", "?")
        client = scope.get("client") or ("-", 0)
        where = f"{client[0]} {method} {path}"
        started = time.monotonic()
        headers: list = []
        try:
            status, body, content_type = await self._respond(scope, receive)
        except Rejected as exc:
            status, body, content_type = exc.status, _error_body(exc.message), JSON_TYPE
            headers = exc.headers + ([(b"connection", b"close")] if exc.close else [])
            log.warning("rejected %s: %d %s", where, status, exc.message)
        except _Disconnected as exc:
            log.warning("rejected %s: the client went away before its body arrived (%s)", where, exc)
            return
        except Exception as exc:  # a failure of ours: answered, logged on one line, the server goes on
            message = f"internal error ({type(exc).__name__}: {exc})"
            status, body, content_type = 500, _error_body(message), JSON_TYPE
            log.error("failed %s: 500 %s", where, one_line(message))
            log.debug("the failure of %s", where, exc_info=True)  # its traceback, at debug level only
        else:
            took = 1000 * (time.monotonic() - started)
            if status < 400:
                log.info("%s: %d (%.0f ms)", where, status, took)
            else:  # the prediction timed out
                log.error("failed %s: %d %s (%.0f ms)", where, status, json.loads(body)["error"], took)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("latin-1")),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope, receive) -> tuple[int, bytes, str]:
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length", "0").strip()
        has_body = "transfer-encoding" in headers or length not in ("0", "")
        allowed = ROUTES.get(path)
        if allowed is None:
            raise Rejected(
                404,
                f"no such path {path!r}: this server answers POST /invocations and "
                "GET /ping, /health, /version",
                close=has_body,
            )
        if method not in allowed:
            raise Rejected(
                405,
                f"{method} is not allowed on {path}: use {' or '.join(allowed)}",
                close=has_body,
                headers=[(b"allow", ", ".join(allowed).encode("latin-1"))],
            )
        if path in ("/ping", "/health"):
            return 200, b"\n", JSON_TYPE
        if path == "/version":
            from mlflow.version import VERSION

            return 200, VERSION.encode("utf-8"), JSON_TYPE
        body = await self._read_body(headers, receive)
        try:
            reply = await asyncio.wait_for(asyncio.to_thread(self.invoke, body), self.predict_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return 504, _error_body(f"no prediction within {self.predict_timeout:g} s"), JSON_TYPE
        return 200, reply, JSON_TYPE

    async def _read_body(self, headers: dict, receive) -> bytes:
        limits = self.limits
        if "transfer-encoding" in headers:
            raise Rejected(
                411, "chunked request bodies are not accepted: send a Content-Length header", close=True
            )
        text = headers.get("content-length")
        if text is None:
            raise Rejected(411, "POST /invocations needs a Content-Length header", close=True)
        try:
            length = int(text.strip())
            if length < 0:
                raise ValueError(text)
        except ValueError:
            raise Rejected(400, f"invalid Content-Length {text!r}", close=True) from None
        if length > limits.max_request_bytes:
            raise Rejected(
                413,
                f"the request body of {length} bytes is over this server's limit of "
                f"{limits.max_request_bytes} bytes (--max-request-bytes): send fewer or smaller instances",
                close=True,
            )
        content_type = headers.get("content-type")
        if not content_type:
            raise Rejected(415, f"no Content-Type: send the body as {JSON_TYPE}", close=length > 0)
        mime, *params = (part.strip() for part in content_type.split(";"))
        if mime.lower() != JSON_TYPE:
            raise Rejected(415, f"Content-Type {mime!r} is not accepted: send {JSON_TYPE}", close=length > 0)
        for param in params:
            name, _, value = param.partition("=")
            charset = value.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
                raise Rejected(
                    415, f"charset {value.strip()!r} is not accepted: send {JSON_TYPE} in UTF-8", close=True
                )
        if length == 0:
            raise Rejected(400, 'empty body: send a JSON object such as {"inputs": [...]}')
        chunks, size = [], 0
        deadline = time.monotonic() + limits.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, TimeoutError):
                raise Rejected(
                    408,
                    f"the body did not arrive within {limits.body_timeout:g} s "
                    f"({size} of the {length} bytes Content-Length announced came)",
                    close=True,
                ) from None
            if message["type"] == "http.disconnect":
                raise _Disconnected(f"{size} of {length} bytes came")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > length:  # pragma: no cover - the HTTP layer stops at Content-Length
                raise Rejected(400, f"the body is longer than its Content-Length {length}", close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    # ------------------------------------------------------------------ the request
    def parse(self, body: bytes):
        """The JSON request in ``body``, checked: (its input key, the request)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Rejected(400, f"the body is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        try:
            request = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Rejected(
                400, f"malformed JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"
            ) from None
        except RecursionError:
            raise Rejected(400, "malformed JSON: nested too deeply") from None
        keys = ", ".join(INPUT_KEYS)
        if not isinstance(request, dict):
            raise Rejected(
                400, f"the body must be a JSON object with one of {keys}; got a {type(request).__name__}"
            )
        present = [k for k in INPUT_KEYS if k in request]
        if len(present) != 1:
            raise Rejected(
                400, f"the body must hold exactly one of {keys}; it holds {sorted(request) or 'nothing'}"
            )
        key = present[0]
        count = _count_instances(key, request[key])
        if count == 0:
            raise Rejected(400, f'"{key}" holds no instances')
        if count > self.limits.max_instances:
            raise Rejected(
                413,
                f"{count} instances are over this server's limit of {self.limits.max_instances} "
                "per request (--max-instances)",
            )
        value = request[key]
        if key in ("inputs", "instances") and isinstance(value, list):
            shape = _nested_shape(value)
            if len(shape) >= 3 and shape[0] * shape[1] * shape[2] > self.limits.max_pixels:
                raise Rejected(
                    413,
                    f"{shape[0]} images of {shape[1]}x{shape[2]} pixels are over this server's limit of "
                    f"{self.limits.max_pixels} pixels per request (--max-pixels)",
                )
        return key, request

    def invoke(self, body: bytes) -> bytes:
        """The reply to a POST /invocations ``body`` (raises :class:`Rejected`)."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server

        key, request = self.parse(body)
        value = request[key]
        _no_progress_bar()
        try:
            if key in ("inputs", "instances") and isinstance(value, list) and any(map(_is_b64, value)):
                array = self.decode_images(value)
                params = request.get("params")
                raw = self.model.predict(array, params=params) if params else self.model.predict(array)
                out = io.StringIO()
                scoring_server.predictions_to_json(raw, out)
                return out.getvalue().encode("utf-8")
            for i, instance in enumerate(value if isinstance(value, list) else []):
                if isinstance(instance, dict) and any(map(_is_b64, instance.values())):
                    raise Rejected(
                        400,
                        f'instance {i}: {{"b64": ...}} is taken only as a whole instance (an encoded '
                        'image): {"instances": [{"b64": "..."}, ...]}',
                    )
            result = scoring_server.invocations(body, JSON_TYPE, self.model, self.input_schema)
        except MlflowException as exc:
            status = exc.get_http_status_code()
            status = status if 400 <= status < 600 else 400
            raise Rejected(status, mlflow_reason(exc.message, getattr(exc, "stack_trace", None))) from None
        if result.status != 200:  # pragma: no cover - content types are checked before
            raise Rejected(result.status, result.response)
        return result.response.encode("utf-8")

    def decode_images(self, items: list):
        """``{"b64": ...}`` instances -> (B, H, W, 3) array of the model's input dtype. Every
        header is read (and the pixels counted) before anything is decoded."""
        import numpy as np
        from PIL import Image, ImageOps

        opened, total = [], 0
        for i, item in enumerate(items):
            if not _is_b64(item):
                raise Rejected(
                    400, f'instance {i} is not {{"b64": ...}} while others are: send all images one way'
                )
            text = item["b64"]
            if not isinstance(text, str):
                raise Rejected(400, f'instance {i}: "b64" must be a string, got {type(text).__name__}')
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Rejected(400, f"instance {i}: malformed base64 ({exc})") from None
            if not data:
                raise Rejected(400, f"instance {i}: empty image (0 bytes)")
            over = f"over this server's limit of {self.limits.max_pixels} pixels per request (--max-pixels)"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image = Image.open(io.BytesIO(data))  # the header only
            except Image.DecompressionBombError as exc:
                raise Rejected(413, f"instance {i}: the image is {over} ({exc})") from None
            except Exception as exc:  # PIL raises many kinds for what is no image
                kind = "no image format recognised" if isinstance(exc, Image.UnidentifiedImageError) else exc
                raise Rejected(400, f"instance {i}: not an image ({kind}; {len(data)} bytes)") from None
            width, height = image.size
            total += width * height
            if total > self.limits.max_pixels:
                image.close()
                raise Rejected(
                    413, f"instance {i}: {width}x{height} pixels bring the request to {total} pixels, {over}"
                )
            opened.append(image)
        arrays = []
        try:
            for i, image in enumerate(opened):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        image.load()
                        upright = ImageOps.exif_transpose(image)
                        pixels = np.asarray(upright.convert("RGB"))
                except Exception as exc:  # truncated or corrupt data
                    raise Rejected(
                        400, f"instance {i}: not a readable image ({type(exc).__name__}: {exc})"
                    ) from None
                height, width = pixels.shape[:2]
                if self.image_size is not None and (height, width) != self.image_size:
                    want = f"{self.image_size[1]}x{self.image_size[0]}"
                    raise Rejected(
                        400,
                        f"instance {i} is {width}x{height} pixels (width x height); the model takes "
                        f"{want}: resize the image before sending it",
                    )
                if arrays and pixels.shape != arrays[0].shape:
                    first = f"{arrays[0].shape[1]}x{arrays[0].shape[0]}"
                    raise Rejected(
                        400,
                        f"instance {i} is {width}x{height} pixels, instance 0 {first}: "
                        "the images of one request must have one size",
                    )
                arrays.append(pixels)
        finally:
            for image in opened:
                image.close()
        return np.stack(arrays).astype(self.dtype)


def _no_progress_bar() -> None:
    """No Keras progress bar per prediction in the server's log; Keras keeps this setting per
    thread, and predictions run in a pool of threads."""
    keras = sys.modules.get("keras")
    if keras is not None:
        try:
            keras.config.disable_interactive_logging()
        except AttributeError:  # pragma: no cover - older Keras
            pass
