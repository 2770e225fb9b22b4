"""TF Serving's REST API in one place: the request body, what the server does with it,
the reply, and a small client.

* :func:`predict_request`: the exact body POSTed to ``.../v1/models/<name>:predict`` for the
  ``serve_bytes`` signature: ``{"signature_name": "serve_bytes", "instances": [{"b64": ...}, ...]}``
  (row format; with further inputs, such as Fast R-CNN's ``proposals``, each instance is an
  object ``{"images": {"b64": ...}, "proposals": [[x1, y1, x2, y2], ...]}``).
* :func:`decode_instances`: what TF Serving makes of a body: ``{"b64": ...}`` objects become
  bytes, strings become bytes, nested number lists become arrays, a list of objects feeds a
  signature with several inputs; the columnar ``"inputs"`` form is read too.
* :func:`row_format_response`: a signature's outputs as TF Serving answers them:
  ``{"predictions": [...]}`` with one entry per instance (an object of the outputs when there
  are several, the bare value when there is one), string tensors as UTF-8 text (those whose
  name ends in ``_bytes`` as ``{"b64": ...}``); refused, as TF Serving refuses it, when the
  outputs differ in their 0-th (batch) dimension.
* :class:`TFServingClient`: ``metadata()`` (GET ``{url}/metadata``), ``status()`` (GET ``{url}``)
  and ``predict(files)`` (POST ``{url}:predict``) with urllib and a timeout; connection errors,
  error statuses and ``{"error": ...}`` replies raise :class:`ServingError` naming the URL, the
  status and the server's message on one line. A request body over ``max_request_bytes``
  (default 32 MiB, the limit of ``cnn-apps serve``) is refused before it is sent
  (:class:`RequestTooLarge`, status 413); a reply that is not ``application/json``, is cut
  short, or is over ``max_response_bytes`` (default 1 GiB) is refused when it is read.

Only the standard library and NumPy: no TensorFlow on the client side.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.error
import urllib.request

import numpy as np

from cnn_apps.errors import ModelError

#: http(s)://host[:port]/v1/models/<name>[/versions/<n> | /labels/<label>]
URL_PATTERN = re.compile(r"^https?://[^/\s]+/v1/models/[^/:\s]+(/versions/\d+|/labels/[^/:\s]+)?$")
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024 * 1024
_ERROR_BYTES = 64 * 1024  # of an error reply, read for its message
_READ_BYTES = 1024 * 1024  # a reply is read in pieces of this size
_MESSAGE_CHARS = 300


class ServingError(ModelError):
    """TF Serving could not be reached or answered an error; ``status`` is the HTTP status
    (None when no answer came)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(_one_line(message, 1000))
        self.status = status


class RequestTooLarge(ServingError):
    """A request body over the client's ``max_request_bytes``: refused before it was sent
    (``status`` 413, as the server would answer; predict splits its batch on it)."""

    def __init__(self, message: str):
        super().__init__(message, status=413)


def _one_line(text, limit: int = _MESSAGE_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed) of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# ---------------------------------------------------------------------- request
def b64(data: bytes) -> dict:
    """TF Serving's JSON for a binary string: ``{"b64": "<base64>"}``."""
    return {"b64": base64.b64encode(bytes(data)).decode("ascii")}


def predict_request(
    files: list[bytes], signature: str = "serve_bytes", inputs: dict | None = None, input_name: str = "images"
) -> dict:
    """The body of a ``:predict`` call in TF Serving's row format for encoded image ``files``.

    Without ``inputs``: ``{"signature_name": signature, "instances": [{"b64": ...}, ...]}``.
    ``inputs``: further named inputs, one row per file (``{"proposals": (B, P, 4)}``); each
    instance then becomes ``{input_name: {"b64": ...}, "proposals": [[...], ...]}``.
    """
    files = [bytes(f) for f in files]
    if not inputs:
        return {"signature_name": signature, "instances": [b64(f) for f in files]}
    columns = {name: np.asarray(values).tolist() for name, values in inputs.items()}
    for name, values in columns.items():
        if len(values) != len(files):
            raise ModelError(f"input {name} has {len(values)} rows for {len(files)} files")
    instances = [
        {input_name: b64(f), **{name: values[i] for name, values in columns.items()}}
        for i, f in enumerate(files)
    ]
    return {"signature_name": signature, "instances": instances}


# ---------------------------------------------------------------------- the server's side
def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_value(value):
    """JSON value -> Python value TF Serving would make a tensor of (b64 and text -> bytes)."""
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise ModelError(f'invalid base64 in a {{"b64": ...}} value: {exc}') from exc
    if isinstance(value, dict):
        raise ModelError(f'an object other than {{"b64": ...}} where a value was expected: {sorted(value)}')
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _array(values, name: str) -> np.ndarray:
    """A rectangular array of decoded values (object dtype for strings)."""

    def has_bytes(v):
        return isinstance(v, bytes) or (isinstance(v, list) and any(has_bytes(x) for x in v))

    try:
        if has_bytes(values):
            return _nested_fill(values, _shape(values))
        return np.asarray(values)
    except ValueError as exc:
        raise ModelError(f"input {name}: the values do not form a rectangular tensor ({exc})") from exc


def _shape(values) -> tuple:
    shape, v = [], values
    while isinstance(v, list):
        shape.append(len(v))
        v = v[0] if v else None
    return tuple(shape)


def _nested_fill(values, shape):
    """values as an object array of ``shape`` (checks every level is as long as the first)."""
    out = np.empty(shape, dtype=object)

    def fill(v, index, depth):
        if depth == len(shape):
            if isinstance(v, list):
                raise ValueError("ragged nesting")
            out[index] = v
            return
        if not isinstance(v, list) or len(v) != shape[depth]:
            raise ValueError(f"dimension {depth} is not {shape[depth]} everywhere")
        for i, x in enumerate(v):
            fill(x, index + (i,), depth + 1)

    fill(values, (), 0)
    return out


def decode_instances(body: dict, input_name: str = "images") -> dict:
    """What TF Serving makes of a ``:predict`` body: {input name: NumPy array}.

    Row format (``"instances"``): a list of values for a one-input signature (named
    ``input_name``), or of objects {input: value} for several inputs (every instance with
    the same names). Columnar format (``"inputs"``): an object {input: batch} or one batch.
    ``{"b64": ...}`` becomes bytes and text becomes UTF-8 bytes (object arrays); numbers
    stay numbers (the server casts them to the signature's dtype)."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ModelError(
            'a predict body needs exactly one of "instances" (row format) or "inputs" (columnar)'
        )
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            return {name: _array(_decode_value(v), name) for name, v in inputs.items()}
        return {input_name: _array(_decode_value(inputs), input_name)}
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ModelError('"instances" must be a non-empty list')
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if not any(named):
        return {input_name: _array(_decode_value(instances), input_name)}
    if not all(named):
        raise ModelError("instances mix objects of named inputs with bare values")
    names = list(instances[0])
    for i, instance in enumerate(instances):
        if sorted(instance) != sorted(names):
            raise ModelError(f"instance {i} has inputs {sorted(instance)}, instance 0 {sorted(names)}")
    return {name: _array([_decode_value(inst[name]) for inst in instances], name) for name in names}


def _jsonable(value, binary: bool):
    if isinstance(value, list):
        return [_jsonable(v, binary) for v in value]
    if isinstance(value, bytes):
        if binary:
            return b64(value)
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(
                "a string output is not valid UTF-8; name the output *_bytes to have it returned as base64"
            ) from exc
    return value


def row_format_response(outputs: dict) -> dict:
    """A signature's ``outputs`` ({name: array or tensor}) as TF Serving's row-format reply:
    ``{"predictions": [...]}``, one entry per instance (a dict of outputs when there are
    several). Raises :class:`ModelError`, as TF Serving refuses it, when the outputs differ
    in their 0-th dimension."""
    arrays = {}
    for name, value in outputs.items():
        value = value.numpy() if hasattr(value, "numpy") else value
        arrays[name] = np.asarray(value)
    if not arrays:
        raise ModelError("no outputs")
    batch = None
    for name, array in arrays.items():
        if array.ndim == 0:
            raise ModelError(f"Tensor name: {name} is a scalar; row format needs every output batched")
        if batch is None:
            batch = array.shape[0]
        elif array.shape[0] != batch:
            raise ModelError(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
    columns = {name: _jsonable(array.tolist(), name.endswith("_bytes")) for name, array in arrays.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(batch)]}


def response_columns(reply: dict) -> dict:
    """A row-format reply back to {output: NumPy array} (strings as ``str``, ``{"b64": ...}``
    as bytes); a single unnamed output comes back as ``{"predictions": array}``."""
    if not isinstance(reply, dict) or "predictions" not in reply:
        what = sorted(reply) if isinstance(reply, dict) else type(reply).__name__
        raise ModelError(f"not a TF Serving predict reply ({what})")
    rows = reply["predictions"]

    def undo(v):
        if _is_b64(v):
            return base64.b64decode(v["b64"])
        if isinstance(v, list):
            return [undo(x) for x in v]
        return v

    if rows and all(isinstance(r, dict) and not _is_b64(r) for r in rows):
        return {name: np.asarray(undo([r[name] for r in rows])) for name in rows[0]}
    return {"predictions": np.asarray(undo(rows))}


# ---------------------------------------------------------------------- client
class TFServingClient:
    """A TF Serving model over REST: ``url`` is ``http://host:8501/v1/models/<name>``, optionally
    with ``/versions/<n>`` or ``/labels/<label>`` (a trailing ``:predict`` or ``/metadata`` is
    dropped). ``timeout`` (seconds) applies to each call; a request body over
    ``max_request_bytes`` is not sent, a reply over ``max_response_bytes`` not read."""

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ):
        url = url.strip().rstrip("/")
        for suffix in (":predict", ":classify", ":regress", "/metadata"):
            url = url.removesuffix(suffix)
        if not URL_PATTERN.match(url):
            raise ModelError(
                f"{url!r} is not a TF Serving REST model URL; expected "
                "http://HOST:8501/v1/models/NAME[/versions/N]"
            )
        self.url = url
        self.timeout = float(timeout)
        self.max_request_bytes = int(max_request_bytes)
        self.max_response_bytes = int(max_response_bytes)
        if self.max_request_bytes < 1 or self.max_response_bytes < 1:
            raise ModelError("max_request_bytes and max_response_bytes must be positive")

    def __repr__(self) -> str:
        return f"TFServingClient({self.url!r})"

    def _call(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        if data is not None and len(data) > self.max_request_bytes:
            raise RequestTooLarge(
                f"not sent to {url}: the request body of {len(data)} bytes is over the client's limit "
                f"of {self.max_request_bytes} bytes; send fewer or smaller files per request"
            )
        request = urllib.request.Request(
            url,
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                content_type, raw = self._read_reply(url, response)
        except urllib.error.HTTPError as exc:
            try:
                text = exc.read(_ERROR_BYTES).decode("utf-8", errors="replace") if exc.fp else ""
            except (OSError, http.client.HTTPException):
                text = ""
            raise ServingError(
                f"TF Serving at {url} answered HTTP {exc.code}: {_error_text(text) or exc.reason}",
                status=exc.code,
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # socket.timeout is TimeoutError; a connection closed mid-reply is an HTTPException
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            elif isinstance(exc, http.client.HTTPException):
                reason = f"the reply broke off ({type(exc).__name__}: {exc})"
            raise ServingError(f"cannot reach TF Serving at {url}: {reason}") from None
        text = raw.decode("utf-8", errors="replace")
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise ServingError(
                f"TF Serving at {url} answered Content-Type {content_type!r}, not application/json: "
                f"{_one_line(text, 200)!r}"
            )
        try:
            reply = json.loads(text)
        except (ValueError, RecursionError):
            raise ServingError(
                f"TF Serving at {url} answered something other than JSON: {_one_line(text, 200)!r}"
            ) from None
        if isinstance(reply, dict) and "error" in reply:
            raise ServingError(f"TF Serving at {url} answered an error: {reply['error']}", status=200)
        return reply

    def _read_reply(self, url: str, response) -> tuple[str, bytes]:
        """(the reply's media type, its body), within ``max_response_bytes`` and complete."""
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        announced = response.headers.get("Content-Length")
        try:
            announced = int(announced) if announced is not None else None
        except ValueError:
            announced = None
        limit = self.max_response_bytes
        if announced is not None and announced > limit:
            raise ServingError(
                f"TF Serving at {url} answered {announced} bytes, over the client's limit of {limit} bytes"
            )
        chunks, size = [], 0
        while size <= limit:  # in pieces: a reply without Content-Length is read until it ends
            chunk = response.read(min(_READ_BYTES, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
        if len(raw) > limit:
            raise ServingError(f"TF Serving at {url} answered more than the client's limit of {limit} bytes")
        if announced is not None and len(raw) < announced:
            raise ServingError(
                f"TF Serving at {url}: the reply was cut short ({len(raw)} of {announced} bytes came)"
            )
        return content_type, raw

    def status(self) -> dict:
        """GET ``{url}``: the model's version status."""
        return self._call(self.url)

    def metadata(self) -> dict:
        """GET ``{url}/metadata``: the model spec and its signature defs."""
        return self._call(f"{self.url}/metadata")

    def signatures(self) -> dict:
        """{signature name: {"inputs": {...}, "outputs": {...}}} from :meth:`metadata`."""
        meta = self.metadata()
        try:
            return meta["metadata"]["signature_def"]["signature_def"]
        except (KeyError, TypeError) as exc:
            raise ServingError(f"TF Serving at {self.url}/metadata: no signature_def in the reply") from exc

    def predict_json(self, body: dict) -> dict:
        """POST ``body`` to ``{url}:predict``; the raw reply."""
        return self._call(f"{self.url}:predict", body)

    def predict(self, files: list[bytes], signature: str = "serve_bytes", inputs: dict | None = None) -> dict:
        """Encoded ``files`` through ``signature`` (``inputs``: further inputs, one row per
        file) -> {output: NumPy array} (see :func:`response_columns`)."""
        reply = self.predict_json(predict_request(files, signature, inputs))
        columns = response_columns(reply)
        for name, values in columns.items():
            if len(values) != len(files):
                raise ServingError(
                    f"TF Serving at {self.url}:predict returned {len(values)} rows of {name} "
                    f"for {len(files)} files"
                )
        return columns


def _error_text(text: str) -> str:
    """The message of an error reply on one line: its ``error`` (TF Serving) or ``message``
    (MLflow) field, else its text without markup."""
    try:
        reply = json.loads(text)
    except (ValueError, RecursionError):
        return _one_line(re.sub(r"<[^>]*>", " ", text))
    if isinstance(reply, dict):
        reply = reply.get("error", reply.get("message", reply))
    return _one_line(reply)
