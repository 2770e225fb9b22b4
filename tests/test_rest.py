"""TF Serving's REST protocol (cnn_apps.serving.rest): the exact request body docs/serving.md
documents, decoded as TF Serving decodes it and run through each kind of export's
``serve_bytes`` signature, the row-format reply, and the client against a loopback stub of
the server (tests/tf_serving_stub.py)."""

import base64
import json
import socket

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tf_serving_stub import TFServingStub, export, tiny_classifier, tiny_detector, tiny_segmenter

from cnn_apps.errors import ModelError
from cnn_apps.serving.rest import (
    ServingError,
    TFServingClient,
    decode_instances,
    predict_request,
    response_columns,
    row_format_response,
)

KINDS = {"classifier": tiny_classifier, "detector": tiny_detector, "segmenter": tiny_segmenter}
# per-instance shapes of every serve_bytes output (the detector keeps 20 detections, the segmenter
# is 32 px, 3 classes)
OUTPUTS = {
    "classifier": {"probabilities": (3,), "class_id": (), "class_name": ()},
    "detector": {
        "detection_boxes": (20, 4),
        "detection_scores": (20,),
        "detection_classes": (20,),
        "detection_class_names": (20,),
        "num_detections": (),
    },
    "segmenter": {
        "probabilities": (32, 32, 3),
        "class_map": (32, 32),
        "image_size": (2,),
        "class_names": (3,),
    },
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def exported(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("exports") / request.param / "1"
    export(KINDS[request.param](), path)
    return request.param, path


def _files():
    """A JPEG (48 x 40) and a PNG (32 x 64) of random pixels."""
    rng = np.random.default_rng(0)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (40, 48, 3)).astype(np.uint8))[1].tobytes()
    png = cv2.imencode(".png", rng.integers(0, 256, (64, 32, 3)).astype(np.uint8))[1].tobytes()
    return [jpeg, png]


def test_the_request_body_is_the_documented_one():
    jpeg, png = _files()
    assert predict_request([jpeg, png]) == {
        "signature_name": "serve_bytes",
        "instances": [{"b64": base64.b64encode(jpeg).decode()}, {"b64": base64.b64encode(png).decode()}],
    }
    proposals = np.arange(16, dtype=np.float32).reshape(2, 2, 4)
    body = predict_request([jpeg, png], inputs={"proposals": proposals})
    assert body["instances"][1] == {
        "images": {"b64": base64.b64encode(png).decode()},
        "proposals": [[8.0, 9.0, 10.0, 11.0], [12.0, 13.0, 14.0, 15.0]],
    }
    with pytest.raises(ModelError, match="input proposals has 1 rows for 2 files"):
        predict_request([jpeg, png], inputs={"proposals": proposals[:1]})


def test_the_body_decoded_as_tf_serving_does_runs_through_the_signature(exported):
    kind, path = exported
    files = _files()
    body = json.loads(json.dumps(predict_request(files)))  # what goes over the wire
    inputs = decode_instances(body)
    assert set(inputs) == {"images"} and inputs["images"].tolist() == files
    signature = tf.saved_model.load(str(path)).signatures[body["signature_name"]]
    outputs = signature(images=tf.constant(inputs["images"].tolist()))
    reply = json.loads(json.dumps(row_format_response(outputs)))
    assert set(reply) == {"predictions"} and len(reply["predictions"]) == 2
    for instance in reply["predictions"]:
        assert {k: np.shape(v) for k, v in instance.items()} == OUTPUTS[kind]
    direct = signature(images=tf.constant(files))  # the reply holds the signature's values
    columns = response_columns(reply)
    for name, value in direct.items():
        value = value.numpy()
        if value.dtype == object:
            assert columns[name].tolist() == [
                [s.decode() for s in row] if isinstance(row, np.ndarray) else row.decode() for row in value
            ]
        else:
            np.testing.assert_array_equal(columns[name], value)
    if kind == "segmenter":  # serve_bytes tells each file's size to resize the map back
        assert columns["image_size"].tolist() == [[40, 48], [64, 32]]
        assert columns["class_names"][0].tolist() == ["background", "circle", "square"]
    if kind == "classifier":
        assert isinstance(reply["predictions"][0]["class_name"], str)


def test_decode_instances_of_several_inputs_and_the_columnar_form():
    body = {
        "instances": [
            {"images": {"b64": base64.b64encode(b"one").decode()}, "proposals": [[0, 0, 4, 4]]},
            {"images": {"b64": base64.b64encode(b"two").decode()}, "proposals": [[1, 1, 5, 5]]},
        ]
    }
    inputs = decode_instances(json.loads(json.dumps(body)))
    assert inputs["images"].tolist() == [b"one", b"two"] and inputs["images"].dtype == object
    assert inputs["proposals"].shape == (2, 1, 4) and inputs["proposals"].tolist()[1] == [[1, 1, 5, 5]]
    assert decode_instances({"instances": [[1.5, 2], [3, 4]]}, input_name="x")["x"].shape == (2, 2)
    assert decode_instances({"instances": ["text"]})["images"].tolist() == [b"text"]
    columnar = decode_instances(
        {"inputs": {"images": [{"b64": base64.b64encode(b"a").decode()}], "k": [[1, 2]]}}
    )
    assert columnar["images"].tolist() == [b"a"] and columnar["k"].tolist() == [[1, 2]]
    assert decode_instances({"inputs": [[1, 2]]})["images"].shape == (1, 2)
    for bad, message in (
        ({"instances": [[1, 2], [3]]}, "rectangular"),
        ({"instances": [{"a": 1}, {"b": 1}]}, "instance 1 has inputs"),
        ({"instances": [{"a": 1}, 2]}, "mix objects"),
        ({"instances": [{"b64": "not base64!"}]}, "invalid base64"),
        ({"instances": [], "inputs": []}, "exactly one of"),
        ({"instances": []}, "non-empty list"),
    ):
        with pytest.raises(ModelError, match=message):
            decode_instances(bad)


def test_row_format_reply_refuses_outputs_of_unequal_batch_size():
    with pytest.raises(
        ModelError, match="Tensor name: class_names has inconsistent batch size: 3 expecting: 2"
    ):
        row_format_response({"class_map": np.zeros((2, 4, 4)), "class_names": np.array([b"a", b"b", b"c"])})
    with pytest.raises(ModelError, match="scalar"):
        row_format_response({"x": np.float32(1.0)})
    # one output: bare values; a *_bytes output as base64; strings as text
    assert row_format_response({"scores": np.array([0.5, 0.25], np.float32)}) == {"predictions": [0.5, 0.25]}
    reply = row_format_response(
        {"name": np.array([b"cat"], object), "raw_bytes": np.array([b"\xff"], object)}
    )
    assert reply == {
        "predictions": [{"name": "cat", "raw_bytes": {"b64": base64.b64encode(b"\xff").decode()}}]
    }
    assert response_columns(reply)["raw_bytes"].tolist() == [b"\xff"]


# ---------------------------------------------------------------------- the client against the stub
@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    path = tmp_path_factory.mktemp("exports") / "shapes" / "3"
    export(tiny_classifier(), path)
    with TFServingStub(path, name="shapes", version=3) as server:
        yield server, path


def test_client_metadata_and_predict(stub):
    server, path = stub
    client = TFServingClient(server.url + ":predict")  # a trailing :predict is dropped
    assert client.url == server.url
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    signatures = client.signatures()
    assert set(signatures) >= {"serving_default", "serve_uint8", "serve_bytes"}
    assert signatures["serve_bytes"]["inputs"]["images"]["dtype"] == "DT_STRING"
    assert set(signatures["serve_bytes"]["outputs"]) == {"probabilities", "class_id", "class_name"}
    files = _files()
    columns = client.predict(files)
    want = tf.saved_model.load(str(path)).signatures["serve_bytes"](images=tf.constant(files))
    np.testing.assert_array_equal(columns["probabilities"], want["probabilities"].numpy())
    assert columns["class_name"].tolist() == [s.decode() for s in want["class_name"].numpy()]
    assert server.requests[-1] == json.loads(
        json.dumps(predict_request(files))
    )  # the documented body went out
    versioned = TFServingClient(f"{server.url}/versions/3")
    np.testing.assert_array_equal(versioned.predict(files)["class_id"], columns["class_id"])


def test_client_errors_name_the_url(stub):
    server, _ = stub
    client = TFServingClient(server.url)
    with pytest.raises(
        ServingError,
        match=rf"TF Serving at {server.url}:predict answered HTTP 400: .*"
        r"serve_nothing\" not found",
    ) as info:
        client.predict(_files(), signature="serve_nothing")
    assert info.value.status == 400
    with pytest.raises(
        ServingError, match="answered HTTP 400: .*"
    ) as info:  # not an image: the decoder refuses
        client.predict([b"not an image"])
    assert info.value.status == 400
    with pytest.raises(
        ServingError, match=r"answered HTTP 404: Servable not found for request: Specific\(shapes, 9\)"
    ):
        TFServingClient(f"{server.url}/versions/9").metadata()
    with pytest.raises(ModelError, match="not a TF Serving REST model URL"):
        TFServingClient("http://localhost:8501/models/x")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        ServingError, match=rf"cannot reach TF Serving at http://127.0.0.1:{port}/v1/models/m/metadata"
    ):
        TFServingClient(f"http://127.0.0.1:{port}/v1/models/m").metadata()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/models/m"
        with pytest.raises(
            ServingError, match=rf"cannot reach TF Serving at {url}/metadata: no answer within 0.5 s"
        ):
            TFServingClient(url, timeout=0.5).metadata()
