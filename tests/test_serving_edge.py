"""The serving edge. ``cnn-apps serve``'s server (:class:`cnn_apps.serving.edge.EdgeApp`
under uvicorn, on a loopback port, a tiny classifier saved as an MLflow model) refuses a bad
request with a 4xx and a one-line JSON message, logs one line for it and no traceback, and
after a few hundred bad requests still answers a good one with the model's own prediction.
The TF Serving REST client refuses to send a request over its limit and turns error replies,
wrong content types and cut replies into one-line errors."""

import base64
import http.client
import json
import logging
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from tf_serving_stub import TFServingStub, export, tiny_classifier

from cnn_apps.errors import ModelError
from cnn_apps.serving import model_server
from cnn_apps.serving.edge import DEFAULT_MAX_PIXELS, Limits
from cnn_apps.serving.rest import RequestTooLarge, ServingError, TFServingClient, predict_request

SIZE = 32  # the tiny classifier's input size
LIMITS = Limits(max_request_bytes=64 * 1024, max_instances=4, max_pixels=4 * SIZE * SIZE, body_timeout=1.0)
LOGGER = "cnn_apps.serving.model_server"


# ---------------------------------------------------------------------- images and bodies
def _pixels(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def _png(pixels) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))[1].tobytes()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and that holds no pixels (a bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _json(body) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# ---------------------------------------------------------------------- the server
class Served:
    def __init__(self, app, server, port, model):
        self.app, self.server, self.port, self.model = app, server, port, model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import mlflow.tensorflow
    import uvicorn
    from mlflow.models import infer_signature

    model = tiny_classifier()
    path = tmp_path_factory.mktemp("mlflow") / "model"
    sample = np.zeros((2, SIZE, SIZE, 3), np.float32)
    signature = infer_signature(sample, model.predict(sample, verbose=0))
    mlflow.tensorflow.save_model(model, path, signature=signature, pip_requirements=["tensorflow"])
    app = model_server.load_app(path, LIMITS)
    server = uvicorn.Server(model_server.uvicorn_config(app))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield Served(app, server, sock.getsockname()[1], model)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _request(port, method, path, body=None, headers=None, timeout=5.0):
    """(status, headers, body) of one request on a new connection (http.client)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def _raw(port, data: bytes, timeout=5.0):
    """(status, headers, body) of the first reply to ``data`` sent as it is on a new socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        reply = http.client.HTTPResponse(s)
        reply.begin()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()


def _post(port, body: bytes, content_type="application/json", timeout=5.0):
    return _request(port, "POST", "/invocations", body, {"Content-Type": content_type}, timeout)


def _error(reply, status: int, *fragments) -> str:
    """The one-line message of an error ``reply`` of ``status`` holding ``fragments``."""
    got, headers, body = reply
    assert got == status, body
    assert headers["content-type"] == "application/json", headers
    message = json.loads(body)
    assert set(message) == {"error"} and isinstance(message["error"], str), message
    message = message["error"]
    assert "\n" not in message and len(message) <= 300 and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _predictions(reply) -> np.ndarray:
    status, headers, body = reply
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return np.asarray(json.loads(body)["predictions"], np.float32)


def _bad_requests():
    """(name, send(port) -> reply, status, message fragments): every kind of refusal that is
    answered at once (the body timeout's 408 is tested on its own)."""
    good = _pixels(1)[0]
    png = _png(good)
    big = b"0" * (LIMITS.max_request_bytes + 1)
    head = "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return [
        (
            "oversized by its Content-Length",
            lambda p: _raw(p, f"{head}Content-Length: {10**9}\r\n\r\n".encode()),
            413,
            ["1000000000 bytes", f"limit of {LIMITS.max_request_bytes} bytes", "--max-request-bytes"],
        ),
        ("oversized body", lambda p: _post(p, big), 413, ["--max-request-bytes"]),
        ("no Content-Length", lambda p: _raw(p, f"{head}\r\n".encode()), 411, ["Content-Length"]),
        (
            "no Content-Type header",
            lambda p: _raw(p, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"),
            415,
            ["no Content-Type", "application/json"],
        ),
        (
            "chunked",
            lambda p: _raw(p, f"{head}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode()),
            411,
            ["chunked"],
        ),
        (
            "a Content-Length that is no number",
            lambda p: _raw(p, f"{head}Content-Length: ten\r\n\r\n".encode()),
            400,
            ["invalid HTTP request"],
        ),
        (
            "a Content-Length shorter than the body",
            lambda p: _raw(p, f"{head}Content-Length: 10\r\n\r\n".encode() + _json({"inputs": [[1, 2]]})),
            400,
            ["malformed JSON at line 1 column 11"],
        ),
        (
            "wrong content type",
            lambda p: _post(p, b"{}", "text/plain"),
            415,
            ["'text/plain'", "application/json"],
        ),
        (
            "form content type",
            lambda p: _post(p, b"a=1", "application/x-www-form-urlencoded"),
            415,
            ["application/json"],
        ),
        (
            "no content type",
            lambda p: _request(p, "POST", "/invocations", b"{}", {"Content-Type": ""}),
            415,
            ["application/json"],
        ),
        (
            "latin-1",
            lambda p: _post(p, b"{}", "application/json; charset=latin-1"),
            415,
            ["latin-1", "UTF-8"],
        ),
        ("empty body", lambda p: _post(p, b""), 400, ["empty body"]),
        (
            "malformed JSON",
            lambda p: _post(p, b'{"inputs": [1, 2'),
            400,
            ["malformed JSON at line 1 column 17"],
        ),
        ("not UTF-8", lambda p: _post(p, b'{"inputs": "\xff"}'), 400, ["not UTF-8", "byte 12"]),
        ("nested too deeply", lambda p: _post(p, b"[" * 50000), 400, ["nested too deeply"]),
        ("a list", lambda p: _post(p, b"[1, 2]"), 400, ["JSON object", "got a list"]),
        ("no input key", lambda p: _post(p, _json({"data": [1]})), 400, ["exactly one of", "['data']"]),
        (
            "two input keys",
            lambda p: _post(p, _json({"inputs": [1], "instances": [1]})),
            400,
            ["exactly one of"],
        ),
        ("no instances", lambda p: _post(p, _json({"instances": []})), 400, ["no instances"]),
        (
            "too many instances",
            lambda p: _post(p, _json({"inputs": [[0]] * 5})),
            413,
            ["5 instances", "limit of 4", "--max-instances"],
        ),
        (
            "too many raw pixels",
            lambda p: _post(p, _json({"inputs": np.zeros((2, 48, 48, 3), int).tolist()})),
            413,
            ["2 images of 48x48", "--max-pixels"],
        ),
        (
            "malformed base64",
            lambda p: _post(p, _json({"instances": [_b64(png), {"b64": "@@not base64@@"}]})),
            400,
            ["instance 1: malformed base64"],
        ),
        (
            "b64 of no image",
            lambda p: _post(p, _json({"instances": [_b64(b"plain text, not an image")]})),
            400,
            ["instance 0: not an image", "no image format recognised"],
        ),
        (
            "b64 of a truncated PNG",
            lambda p: _post(p, _json({"instances": [_b64(png), _b64(png[: len(png) // 2])]})),
            400,
            ["instance 1: not a readable image"],
        ),
        (
            "b64 that is no string",
            lambda p: _post(p, _json({"instances": [{"b64": 12}]})),
            400,
            ['instance 0: "b64" must be a string'],
        ),
        (
            "a decompression bomb's header",
            lambda p: _post(p, _json({"instances": [_b64(_png_header(20000, 20000))]})),
            413,
            ["instance 0", "--max-pixels"],
        ),
        (
            "images of too many pixels",
            lambda p: _post(p, _json({"instances": [_b64(_png_header(100, 100))]})),
            413,
            ["instance 0: 100x100 pixels", "10000 pixels", f"limit of {LIMITS.max_pixels}", "--max-pixels"],
        ),
        (
            "an image of another size",
            lambda p: _post(p, _json({"instances": [_b64(_png(_pixels(1, 40)[0]))]})),
            400,
            ["instance 0 is 40x40 pixels", "the model takes 32x32"],
        ),
        (
            "b64 and pixels mixed",
            lambda p: _post(p, _json({"instances": [_b64(png), good.tolist()]})),
            400,
            ['instance 1 is not {"b64": ...}'],
        ),
        (
            "b64 inside a named input",
            lambda p: _post(p, _json({"instances": [{"images": _b64(png)}]})),
            400,
            ['instance 0: {"b64": ...} is taken only as a whole instance'],
        ),
        (
            "pixels of another size",
            lambda p: _post(p, _json({"inputs": np.zeros((1, 20, 20, 3), int).tolist()})),
            400,
            ["(1, 20, 20, 3)", "(-1, 32, 32, 3)"],
        ),
        ("ragged pixels", lambda p: _post(p, _json({"inputs": [[1, 2], [3]]})), 400, ["inhomogeneous"]),
        ("unknown path", lambda p: _request(p, "GET", "/v1/models/x"), 404, ["no such path '/v1/models/x'"]),
        (
            "unknown path, POST",
            lambda p: _request(p, "POST", "/", b"{}", {"Content-Type": "application/json"}),
            404,
            ["no such path '/'"],
        ),
        (
            "GET /invocations",
            lambda p: _request(p, "GET", "/invocations"),
            405,
            ["GET is not allowed", "use POST"],
        ),
        ("POST /ping", lambda p: _request(p, "POST", "/ping", b"{}"), 405, ["POST is not allowed on /ping"]),
        ("DELETE /version", lambda p: _request(p, "DELETE", "/version"), 405, ["DELETE"]),
    ]


BAD = _bad_requests()


# ---------------------------------------------------------------------- the server's tests
def test_good_requests_get_the_models_own_predictions(served):
    pixels = _pixels(2)
    want = served.model.predict(pixels.astype(np.float32), verbose=0)
    # encoded images, in TF Serving's body (the REST client's own request)
    body = _json(predict_request([_png(p) for p in pixels]))
    np.testing.assert_allclose(_predictions(_post(served.port, body)), want, atol=1e-5)
    # raw pixels, MLflow's body, as before
    body = _json({"inputs": pixels.astype(int).tolist()})
    np.testing.assert_allclose(_predictions(_post(served.port, body)), want, atol=1e-5)
    body = _json({"inputs": [_b64(_png(p)) for p in pixels]})  # the columnar form takes images too
    np.testing.assert_allclose(_predictions(_post(served.port, body)), want, atol=1e-5)
    assert _post(served.port, body, "application/json; charset=utf-8")[0] == 200
    assert _request(served.port, "GET", "/ping")[0] == 200
    assert _request(served.port, "GET", "/health")[0] == 200
    status, _, version = _request(served.port, "GET", "/version")
    assert status == 200 and version.decode()[0].isdigit()


@pytest.mark.parametrize("case", BAD, ids=[case[0] for case in BAD])
def test_a_bad_request_gets_a_4xx_with_a_one_line_json_message(served, case, caplog):
    name, send, status, fragments = case
    caplog.set_level(logging.INFO, logger=LOGGER)
    _error(send(served.port), status, *fragments)
    lines = [r for r in caplog.records if r.name == LOGGER]
    if "invalid HTTP request" in fragments:  # refused by the HTTP layer before the app: uvicorn logs it
        assert lines == []
    else:  # one line per refusal, no traceback
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
        assert (
            lines[0].getMessage().startswith("rejected 127.0.0.1 ")
            and f": {status} " in lines[0].getMessage()
        )
    assert all(r.exc_info is None and "Traceback" not in r.getMessage() for r in caplog.records)


def test_an_oversized_request_is_answered_before_its_body_and_the_connection_closed(served):
    """413 by Content-Length alone: nothing of the body is waited for."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 40000000\r\n\r\n"
        )
        reply = http.client.HTTPResponse(s)
        reply.begin()
        assert reply.status == 413 and reply.getheader("Connection") == "close"
        reply.read()
        assert s.recv(1) == b""  # closed by the server


def test_a_body_that_does_not_arrive_times_out(served, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    head = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    started = time.monotonic()
    message = _error(_raw(served.port, head + b'{"inputs":', timeout=10), 408, "did not arrive within 1 s")
    assert "10 of the 100 bytes" in message and time.monotonic() - started < 5
    assert sum(r.name == LOGGER for r in caplog.records) == 1


def test_a_failure_inside_the_server_answers_500_and_the_server_goes_on(served, monkeypatch, caplog):
    class Broken:
        def predict(self, data, params=None):
            raise RuntimeError("boom\nsecond line")

    caplog.set_level(logging.INFO, logger=LOGGER)
    pixels = _pixels(1)
    body = _json({"instances": [_b64(_png(pixels[0]))]})
    with monkeypatch.context() as patch:
        patch.setattr(served.app, "model", Broken())
        _error(_post(served.port, body), 500, "internal error (RuntimeError: boom second line)")
    [line] = [r for r in caplog.records if r.name == LOGGER]
    assert line.levelno == logging.ERROR and line.exc_info is None
    want = served.model.predict(pixels.astype(np.float32), verbose=0)
    np.testing.assert_allclose(_predictions(_post(served.port, body)), want, atol=1e-5)


def test_hundreds_of_bad_requests_leave_the_server_answering_correctly(served, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    threads = threading.active_count()
    started, wrong = time.monotonic(), []
    count = 300
    for i in range(count):
        name, send, status, _ = BAD[i % len(BAD)]
        got = send(served.port)[0]
        if got != status:
            wrong.append(f"{name}: {got}, expected {status}")
    elapsed = time.monotonic() - started
    assert not wrong, wrong[:10]
    assert elapsed < 30, f"{count} bad requests took {elapsed:.1f} s"
    # no connection or request task left behind, no thread per request
    deadline = time.monotonic() + 5
    state = served.server.server_state
    while (state.connections or state.tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not state.connections and not state.tasks
    assert threading.active_count() <= threads + 8
    refused_by_app = sum(
        "invalid HTTP request" not in case[3] for case in (BAD[i % len(BAD)] for i in range(count))
    )
    rejected = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(rejected) == refused_by_app
    assert all(r.exc_info is None for r in caplog.records)
    # and a good request still gets the model's own prediction
    pixels = _pixels(3, seed=7)[:2]
    want = served.model.predict(pixels.astype(np.float32), verbose=0)
    body = _json({"instances": [_b64(_png(p)) for p in pixels]})
    np.testing.assert_allclose(_predictions(_post(served.port, body)), want, atol=1e-5)


# ---------------------------------------------------------------------- the command line
def test_serve_passes_its_limits_to_the_server(monkeypatch, tmp_path, capsys):
    import os

    from cnn_apps.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    served_with = {}
    monkeypatch.setattr(os, "execvpe", lambda file, cmd, env: served_with.update(cmd=cmd, env=env))
    argv = ["serve", "--model", "models:/m/1", "--port", "5099", "--max-request-bytes", "1000"]
    assert main([*argv, "--max-instances", "3", "--body-timeout", "2.5"]) == 0
    cmd = served_with["cmd"]
    assert cmd[:3] == [sys.executable, "-m", "cnn_apps.serving.model_server"]
    args = model_server.server_parser().parse_args(cmd[3:])
    assert (args.model, args.host, args.port, args.workers) == ("models:/m/1", "127.0.0.1", 5099, 1)
    assert model_server.limits_from_args(args) == Limits(1000, 3, DEFAULT_MAX_PIXELS, 2.5)
    assert "bodies up to 1000 bytes" in capsys.readouterr().out
    for bad in (["--max-request-bytes", "0"], ["--max-pixels", "many"], ["--body-timeout", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--model", "models:/m/1", *bad])
        assert exit_.value.code == 2
    assert "expected a positive" in capsys.readouterr().err


@pytest.mark.slow
def test_the_server_process_refuses_and_logs_one_line_each(tmp_path):
    """``python -m cnn_apps.serving.model_server`` (what ``cnn-apps serve`` runs) as a process."""
    import os
    import signal
    import subprocess

    import mlflow.tensorflow
    from mlflow.models import infer_signature

    model = tiny_classifier()
    path = tmp_path / "model"
    sample = np.zeros((1, SIZE, SIZE, 3), np.float32)
    signature = infer_signature(sample, model.predict(sample, verbose=0))
    mlflow.tensorflow.save_model(model, path, signature=signature, pip_requirements=["tensorflow"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = model_server.edge_command(str(path), port=port, limits=Limits(max_request_bytes=8192))
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if _request(port, "GET", "/ping", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        bad = [
            (lambda: _post(port, b"x" * 10000), 413),
            (lambda: _post(port, b"{}", "text/csv"), 415),
            (lambda: _post(port, b"{nope"), 400),
            (lambda: _post(port, _json({"instances": [{"b64": "%%%"}]})), 400),
            (lambda: _raw(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n"), 400),
            (lambda: _request(port, "GET", "/nowhere"), 404),
        ]
        for send, status in bad:
            _error(send(), status)
        pixels = _pixels(1)
        reply = _post(port, _json({"instances": [_b64(_png(pixels[0]))]}), timeout=60)
        want = model.predict(pixels.astype(np.float32), verbose=0)
        np.testing.assert_allclose(_predictions(reply), want, atol=1e-5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("rejected 127.0.0.1") == 5, text[-3000:]  # the sixth: uvicorn's own line
    assert "Invalid HTTP request received." in text


# ---------------------------------------------------------------------- the REST client
@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    path = tmp_path_factory.mktemp("exports") / "shapes" / "1"
    export(tiny_classifier(), path)
    with TFServingStub(path, name="shapes", version=1) as server:
        yield server


def test_the_client_refuses_a_request_over_its_limit_before_sending_it(stub):
    small, large = _png(_pixels(1, 8)[0]), _png(_pixels(1, 64)[0])
    client = TFServingClient(stub.url, max_request_bytes=2000)
    sent = len(stub.requests)
    with pytest.raises(
        RequestTooLarge, match=r"the request body of \d+ bytes is over the client's limit"
    ) as info:
        client.predict([large])
    message = str(info.value)
    assert message.startswith(f"not sent to {stub.url}:predict: ") and "of 2000 bytes" in message
    assert info.value.status == 413 and isinstance(info.value, ServingError)
    assert len(stub.requests) == sent  # nothing went out
    assert client.predict([small])["probabilities"].shape == (1, 3)  # under the limit: sent


def test_predict_splits_a_batch_too_large_to_send(stub):
    from cnn_apps.serving.images import ImageFile
    from cnn_apps.serving.predict import _predict_isolating
    from cnn_apps.serving.predictors import InputRefused, ServingPredictor

    pixels = _pixels(3)
    images = [ImageFile(f"{i}.png", _png(p), p) for i, p in enumerate(pixels)]
    predictor = ServingPredictor(stub.url)
    one = len(json.dumps(predict_request([images[0].data])))
    predictor.client.max_request_bytes = 2 * one + 200  # two files fit, three do not
    sent = len(stub.requests)
    results = _predict_isolating(predictor, images)
    assert [len(r["instances"]) for r in stub.requests[sent:]] == [1, 2]
    alone = [ServingPredictor(stub.url).predict([image])[0] for image in images]
    for got, want in zip(results, alone):
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
    predictor.client.max_request_bytes = one - 1  # a file too large alone: refused, named
    [refused] = _predict_isolating(predictor, images[:1])
    assert isinstance(refused, InputRefused) and "over the client's limit" in str(refused)


class _Canned:
    """A loopback HTTP server that answers every request with (status, headers, body), or
    with ``body`` cut after ``cut`` bytes (the connection then closed)."""

    def __init__(self):
        self.reply = (200, {"Content-Type": "application/json"}, b"{}")
        self.cut = None
        canned = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, headers, body = canned.reply
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers and canned.cut is None:
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body if canned.cut is None else body[: canned.cut])
                self.close_connection = True

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/models/m"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned():
    server = _Canned()
    yield server
    server.close()


def test_the_client_turns_error_replies_into_one_line(canned):
    client = TFServingClient(canned.url, timeout=5)
    json_type = {"Content-Type": "application/json"}
    for reply, status, message in (
        # TF Serving's error shape, a message over two lines
        ((413, json_type, _json({"error": "too large:\nsend less"})), 413, "too large: send less"),
        # MLflow's error shape
        ((400, json_type, _json({"error_code": "BAD_REQUEST", "message": "bad\n input"})), 400, "bad input"),
        # a proxy's HTML page
        (
            (502, {"Content-Type": "text/html"}, b"<html><body>\n<h1>Bad Gateway</h1>\n</body></html>"),
            502,
            "Bad Gateway",
        ),
    ):
        canned.reply = reply
        with pytest.raises(ServingError) as info:
            client.predict([b"x"])
        text = str(info.value)
        assert text == f"TF Serving at {canned.url}:predict answered HTTP {status}: {message}"
        assert info.value.status == status and "\n" not in text
    canned.reply = (200, json_type, _json({"error": "failed\nto run"}))
    with pytest.raises(ServingError, match=r"answered an error: failed to run$"):
        client.metadata()


def test_the_client_checks_the_replys_type_length_and_size(canned):
    client = TFServingClient(canned.url, timeout=5, max_response_bytes=1000)
    canned.reply = (200, {"Content-Type": "text/plain"}, _json({"predictions": [1]}))
    with pytest.raises(ServingError, match=r"answered Content-Type 'text/plain', not application/json"):
        client.predict([b"x"])
    canned.reply = (200, {"Content-Type": "application/json"}, b"<html>no</html>")
    with pytest.raises(ServingError, match="answered something other than JSON"):
        client.metadata()
    canned.reply = (200, {"Content-Type": "application/json", "Content-Length": "500"}, b'{"predictions": [')
    with pytest.raises(ServingError, match=r"the reply was cut short \(17 of 500 bytes came\)"):
        client.metadata()
    canned.reply = (200, {"Content-Type": "application/json"}, _json({"predictions": [0] * 1000}))
    with pytest.raises(ServingError, match=r"answered \d+ bytes, over the client's limit of 1000 bytes"):
        client.metadata()
    canned.cut = 2000  # no Content-Length: read up to the limit
    with pytest.raises(ServingError, match="answered more than the client's limit of 1000 bytes"):
        client.metadata()
    with pytest.raises(ModelError, match="positive"):
        TFServingClient(canned.url, max_request_bytes=0)
