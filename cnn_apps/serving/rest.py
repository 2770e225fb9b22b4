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
  and ``predict(files)`` (POST ``{url}:predict``) with urllib and a timeout; connection errors
  and ``{"error": ...}`` replies raise :class:`ServingError` naming the URL.

Only the standard library and NumPy: no TensorFlow on the client side.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import numpy as np

from cnn_apps.errors import ModelError

#: http(s)://host[:port]/v1/models/<name>[/versions/<n> | /labels/<label>]
URL_PATTERN = re.compile(r"^https?://[^/\s]+/v1/models/[^/:\s]+(/versions/\d+|/labels/[^/:\s]+)?$")


class ServingError(ModelError):
    """TF Serving could not be reached or answered an error; ``status`` is the HTTP status
    (None when no answer came)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


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
    dropped). ``timeout`` (seconds) applies to each call."""

    def __init__(self, url: str, timeout: float = 60.0):
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

    def __repr__(self) -> str:
        return f"TFServingClient({self.url!r})"

    def _call(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            url,
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", errors="replace") if exc.fp else ""
            raise ServingError(
                f"TF Serving at {url} answered HTTP {exc.code}: {_error_text(text) or exc.reason}",
                status=exc.code,
            ) from exc
        except (
            urllib.error.URLError,
            TimeoutError,
            ConnectionError,
        ) as exc:  # socket.timeout is TimeoutError
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            raise ServingError(f"cannot reach TF Serving at {url}: {reason}") from exc
        try:
            reply = json.loads(text)
        except ValueError as exc:
            raise ServingError(
                f"TF Serving at {url} answered something other than JSON: {text[:200]!r}"
            ) from exc
        if isinstance(reply, dict) and "error" in reply:
            raise ServingError(f"TF Serving at {url} answered an error: {reply['error']}", status=200)
        return reply

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
    try:
        reply = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    return str(reply.get("error", reply)) if isinstance(reply, dict) else str(reply)
