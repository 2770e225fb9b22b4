"""``cnn-apps predict``: inputs (folder, glob, single file, bad files among good ones), each
model source (export folder, TF Serving URL through the loopback stub, runs:/ and models:/
URIs from MLflow) giving the SavedModel's answers, COCO results JSON checked with
pycocotools, PNG masks, and the exit codes."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tf_serving_stub import (
    CLASS_NAMES,
    DETECTOR_CLASSES,
    SEGMENTER_CLASSES,
    TFServingStub,
    export,
    tiny_classifier,
    tiny_detector,
    tiny_fast_rcnn,
    tiny_segmenter,
)

from cnn_apps.cli import main
from cnn_apps.errors import DataError
from cnn_apps.serving.images import list_inputs, read_image

GOOD = ["a.png", "b.jpg", "c_gray.png", "d_rgba.png", "e_16bit.png"]
BAD = {"empty.jpg": "empty file", "text.jpg": "not an image file", "truncated.png": "not a readable image"}


def _write_images(folder: Path) -> dict:
    """Good images of different sizes and kinds, three bad files and a non-image; returns
    {name: the (H, W, 3) uint8 RGB pixels the model must see}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (40, 56, 3)).astype(np.uint8), (5, 5), 0)
    cv2.imwrite(str(folder / "b.jpg"), smooth)
    gray = rng.integers(0, 256, (50, 30)).astype(np.uint8)
    cv2.imwrite(str(folder / "c_gray.png"), gray)
    rgba = rng.integers(0, 256, (24, 36, 4)).astype(np.uint8)
    cv2.imwrite(str(folder / "d_rgba.png"), rgba)  # BGRA
    deep = rng.integers(0, 65536, (36, 28, 3)).astype(np.uint16)
    cv2.imwrite(str(folder / "e_16bit.png"), deep)  # BGR, 16 bits
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a JPEG\n")
    data = (folder / "a.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image extension: not listed\n")
    jpeg = cv2.cvtColor(
        cv2.imdecode(np.frombuffer((folder / "b.jpg").read_bytes(), np.uint8), cv2.IMREAD_COLOR),
        cv2.COLOR_BGR2RGB,
    )
    return {
        "a.png": rgb,
        "b.jpg": jpeg,
        "c_gray.png": np.repeat(gray[..., None], 3, -1),
        "d_rgba.png": cv2.cvtColor(rgba[..., :3], cv2.COLOR_BGR2RGB),
        "e_16bit.png": cv2.cvtColor(np.round(deep / 257.0).astype(np.uint8), cv2.COLOR_BGR2RGB),
    }


def _png(pixels) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return folder, _write_images(folder)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    models = {
        "classification": tiny_classifier(),
        "detection": tiny_detector(),
        "segmentation": tiny_segmenter(),
    }
    for task, model in models.items():
        export(model, base / task / "1")
    (base / "classification" / "notes").mkdir()  # not a version
    return base, models


@pytest.fixture(scope="module")
def mlflow_models(exports, tmp_path_factory):
    """The three models logged to a temporary sqlite store; {task: runs:/ URI}, with the
    segmenter also registered (models:/tiny-segmenter/1)."""
    import mlflow

    from cnn_apps.tracking import log_keras_model

    _, models = exports
    store = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow.set_tracking_uri(store)
        try:
            mlflow.set_experiment("predict-test")
            uris = {}
            for task, model in models.items():
                size = 64 if task == "detection" else 32
                with mlflow.start_run() as run:
                    log_keras_model(model, np.zeros((1, size, size, 3), np.float32))
                uris[task] = f"runs:/{run.info.run_id}/model"
            mlflow.register_model(mlflow.get_run(run.info.run_id).data.tags["model_uri"], "tiny-segmenter")
            yield store, uris
        finally:
            mlflow.set_tracking_uri(None)


def _predict(*argv) -> int:
    return main(["predict", *map(str, argv)])


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _signature(path, files: list[bytes]) -> dict:
    out = tf.saved_model.load(str(path)).signatures["serve_bytes"](images=tf.constant(files))
    return {k: v.numpy() for k, v in out.items()}


# ---------------------------------------------------------------------- inputs
def test_inputs_folder_glob_and_single_file(images):
    folder, _ = images
    assert [p.name for p in list_inputs(str(folder))] == sorted([*GOOD, *BAD])  # notes.txt is not an image
    assert [p.name for p in list_inputs(str(folder / "*.png"))] == [
        "a.png",
        "c_gray.png",
        "d_rgba.png",
        "e_16bit.png",
        "truncated.png",
    ]
    assert list_inputs(str(folder / "a.png")) == [folder / "a.png"]
    with pytest.raises(DataError, match=r"--input .*\*\.gif: the pattern matches no files"):
        list_inputs(str(folder / "*.gif"))
    with pytest.raises(DataError, match="--input .*nothing: no such file or folder"):
        list_inputs(str(folder / "nothing"))
    empty = folder / "no-images"
    empty.mkdir(exist_ok=True)
    with pytest.raises(DataError, match="the folder holds no image files"):
        list_inputs(str(empty))


def test_images_are_converted_to_three_channel_uint8(images):
    folder, pixels = images
    for name in GOOD:
        image = read_image(folder / name)
        np.testing.assert_array_equal(image.pixels, pixels[name], err_msg=name)
        assert image.converted == (name not in ("a.png", "b.jpg")), name
        if image.converted:  # re-encoded as an 8-bit RGB PNG
            decoded = tf.io.decode_png(image.data).numpy()
            np.testing.assert_array_equal(decoded, pixels[name])
    for name, message in BAD.items():
        with pytest.raises(DataError, match=rf"{name}: {message}"):
            read_image(folder / name)


# ---------------------------------------------------------------------- the classifier, every source
def test_folder_with_bad_files_through_an_export(images, exports, tmp_path, capsys):
    folder, pixels = images
    base, _ = exports
    out = tmp_path / "out" / "results.jsonl"
    assert (
        _predict("--model", base / "classification", "--input", folder, "--output", out, "--batch-size", 3)
        == 0
    )
    err = capsys.readouterr().err
    assert f"predicted 5 files, 3 failed (see {out})" in err
    for name, message in BAD.items():
        assert f"error: {folder / name}: {message}" in err
    records = _records(out)
    assert [Path(r["file"]).name for r in records] == sorted([*GOOD, *BAD])  # one line per file, input order
    by_name = {Path(r["file"]).name: r for r in records}
    for name, message in BAD.items():
        assert set(by_name[name]) == {"file", "error"} and name in by_name[name]["error"]
        assert message in by_name[name]["error"]
    # the SavedModel's answers: the original file where it decodes as is, else the converted pixels as PNG
    files = [(folder / n).read_bytes() if n in ("a.png", "b.jpg") else _png(pixels[n]) for n in GOOD]
    want = _signature(base / "classification" / "1", files)
    for i, name in enumerate(GOOD):
        record = by_name[name]
        assert set(record) == {"file", "class_name", "class_id", "score", "probabilities"}
        assert list(record["probabilities"]) == CLASS_NAMES
        np.testing.assert_allclose(
            list(record["probabilities"].values()), want["probabilities"][i], atol=1e-6
        )
        assert record["class_id"] == int(want["class_id"][i])
        assert record["class_name"] == want["class_name"][i].decode() == CLASS_NAMES[record["class_id"]]
        assert record["score"] == pytest.approx(float(want["probabilities"][i].max()), abs=1e-6)


def test_glob_and_single_file_and_every_file_failing(images, exports, tmp_path, capsys):
    folder, _ = images
    model = exports[0] / "classification" / "1"
    out = tmp_path / "glob.jsonl"
    assert _predict("--model", model, "--input", folder / "[ab].*", "--output", out) == 0
    assert [Path(r["file"]).name for r in _records(out)] == ["a.png", "b.jpg"]
    assert _predict("--model", model, "--input", folder / "b.jpg", "--output", out) == 0
    assert [Path(r["file"]).name for r in _records(out)] == ["b.jpg"]
    capsys.readouterr()
    assert (
        _predict("--model", model, "--input", folder / "*.jpg", "--output", out) == 0
    )  # b.jpg among 2 bad ones
    assert (
        _predict("--model", model, "--input", folder / "t*", "--output", out) == 1
    )  # text.jpg, truncated.png
    assert "predicted 0 files, 2 failed" in capsys.readouterr().err
    assert _predict("--model", model, "--input", folder / "*.gif", "--output", out) == 2
    assert "error: --input" in capsys.readouterr().err
    assert _predict("--model", tmp_path / "missing", "--input", folder, "--output", out) == 2
    assert "no such export folder" in capsys.readouterr().err
    assert (
        _predict(
            "--model",
            exports[0] / "detection" / "1",
            "--input",
            folder / "a.png",
            "--output",
            out,
            "--masks",
            tmp_path / "m",
        )
        == 2
    )
    assert "--masks is for segmenters" in capsys.readouterr().err
    assert (
        _predict(
            "--model",
            "runs:/0123/model",
            "--input",
            folder / "a.png",
            "--output",
            out,
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'none.db'}",
        )
        == 2
    )
    assert "error: no MLflow store at sqlite:///" in capsys.readouterr().err


def test_a_file_the_model_refuses_is_isolated(images, exports, tmp_path, monkeypatch):
    """A file this reader accepts but TensorFlow's decoder refuses fails alone; its batch
    is predicted file by file."""
    from cnn_apps.serving import predict as module

    folder, _ = images
    real = module.read_image

    def read(path):
        image = real(path)
        if Path(path).name == "b.jpg":
            image.data = image.data[:20]  # a JPEG header and nothing more
        return image

    monkeypatch.setattr(module, "read_image", read)
    out = tmp_path / "r.jsonl"
    assert (
        _predict("--model", exports[0] / "classification", "--input", folder / "*.*g", "--output", out) == 0
    )
    by_name = {Path(r["file"]).name: r for r in _records(out)}
    assert "the model refused it" in by_name["b.jpg"]["error"]
    assert all("class_id" in by_name[n] for n in ("a.png", "c_gray.png", "d_rgba.png", "e_16bit.png"))


def test_every_source_gives_the_same_answers(images, exports, mlflow_models, tmp_path, capsys):
    """Export folder, TF Serving URL (the stub) and runs:/ / models:/ URIs, for each task."""
    folder, _ = images
    base, _ = exports
    store, uris = mlflow_models
    good = [str(folder / n) for n in GOOD]
    pattern = str(folder / "?[._]*")  # the good ones

    def run(model, *extra) -> list[dict]:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.jsonl"
        rc = _predict("--model", model, "--input", pattern, "--output", out, "--tracking-uri", store, *extra)
        assert rc == 0, capsys.readouterr().err
        records = _records(out)
        assert [r["file"] for r in records] == good
        return records

    for task in ("classification", "detection", "segmentation"):
        export_path = base / task / "1"
        reference = run(base / task)
        with TFServingStub(export_path, name=task) as stub:
            assert run(stub.url, "--metadata", export_path) == reference, task
            bare = run(stub.url)  # without --metadata: names from the replies where they carry them
            if task == "classification":
                assert [r["class_name"] for r in bare] == [r["class_name"] for r in reference]
                assert list(bare[0]["probabilities"]) == ["0", "1", "2"]
            else:
                assert bare == reference, task
        sources = [uris[task]] + (["models:/tiny-segmenter/1"] if task == "segmentation" else [])
        for source in sources:
            _same(task, run(source), reference, source)
    capsys.readouterr()
    missing = "runs:/" + "0" * 32 + "/model"
    assert (
        _predict(
            "--model", missing, "--input", pattern, "--output", tmp_path / "x.jsonl", "--tracking-uri", store
        )
        == 2
    )
    assert f"error: cannot load a Keras model from {missing}" in capsys.readouterr().err


def _same(task, got: list[dict], want: list[dict], source: str):
    """The Keras model's records against the SavedModel's (float32 differences allowed)."""
    for g, w in zip(got, want):
        if task == "classification":
            assert g["class_id"] == w["class_id"] and g["class_name"] == w["class_name"], source
            np.testing.assert_allclose(
                list(g["probabilities"].values()), list(w["probabilities"].values()), atol=1e-5
            )
        elif task == "detection":
            assert len(g["detections"]) == len(w["detections"]) > 0, source
            for a, b in zip(g["detections"], w["detections"]):
                assert a["class_name"] == b["class_name"] and a["class_id"] == b["class_id"]
                np.testing.assert_allclose(a["box"], b["box"], atol=1e-2)
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        else:
            assert (g["width"], g["height"]) == (w["width"], w["height"])
            total = g["width"] * g["height"]
            assert (
                sum(abs(g["class_pixels"][k] - w["class_pixels"][k]) for k in SEGMENTER_CLASSES)
                <= 0.01 * total
            )


# ---------------------------------------------------------------------- detection: COCO results
def test_coco_results_load_in_pycocotools(images, exports, tmp_path):
    from pycocotools.coco import COCO

    folder, pixels = images
    base, _ = exports
    good = folder / "*.png"  # a, c_gray, d_rgba, e_16bit and the truncated one
    names = ["a.png", "c_gray.png", "d_rgba.png", "e_16bit.png"]
    gt = {
        "images": [
            {
                "id": 100 + i,
                "file_name": f"val/{n}",
                "width": int(pixels[n].shape[1]),
                "height": int(pixels[n].shape[0]),
            }
            for i, n in enumerate(names)
        ],
        "categories": [{"id": 10 * (i + 1), "name": n} for i, n in enumerate(DETECTOR_CLASSES)],
        "annotations": [
            {"id": 1, "image_id": 100, "category_id": 10, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out, coco = tmp_path / "r.jsonl", tmp_path / "coco.json"
    assert (
        _predict(
            "--model",
            base / "detection",
            "--input",
            good,
            "--output",
            out,
            "--coco-json",
            coco,
            "--coco-gt",
            tmp_path / "gt.json",
        )
        == 0
    )
    records = [r for r in _records(out) if "detections" in r]
    results = json.loads(coco.read_text())
    assert len(results) == sum(len(r["detections"]) for r in records) > 0
    loaded = COCO(str(tmp_path / "gt.json")).loadRes(str(coco))  # asserts every image id is in the GT
    assert {a["image_id"] for a in loaded.dataset["annotations"]} <= {100, 101, 102, 103}
    first = records[0]["detections"][0]
    x1, y1, x2, y2 = first["box"]
    assert results[0] == {
        "image_id": 100,
        "category_id": 10 * (first["class_id"] + 1),
        "score": first["score"],
        "bbox": [x1, y1, pytest.approx(x2 - x1, abs=1e-3), pytest.approx(y2 - y1, abs=1e-3)],
    }
    assert records[1]["width"] == 30 and records[1]["height"] == 50
    # the boxes are the SavedModel's, in each image's own pixels
    want = _signature(base / "detection" / "1", [(folder / "a.png").read_bytes(), _png(pixels["c_gray.png"])])
    for i in range(2):
        n = int(want["num_detections"][i])
        np.testing.assert_allclose(
            [d["box"] for d in records[i]["detections"]], want["detection_boxes"][i][:n], atol=1e-3
        )
    # without --coco-gt: the file's position (1-based, failed files counted) and class_id + 1
    assert _predict("--model", base / "detection", "--input", good, "--output", out, "--coco-json", coco) == 0
    results = json.loads(coco.read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4} and results[0]["category_id"] == first[
        "class_id"
    ] + 1
    assert (
        _predict("--model", base / "classification", "--input", good, "--output", out, "--coco-json", coco)
        == 2
    )


# ---------------------------------------------------------------------- segmentation: PNG masks
def test_masks_at_each_images_own_size(images, exports, tmp_path):
    folder, pixels = images
    base, _ = exports
    out, masks = tmp_path / "r.jsonl", tmp_path / "masks"
    assert (
        _predict("--model", base / "segmentation", "--input", folder, "--output", out, "--masks", masks) == 0
    )
    records = {Path(r["file"]).name: r for r in _records(out)}
    assert sorted(p.name for p in masks.iterdir()) == sorted(Path(n).stem + ".png" for n in GOOD)
    files = [(folder / n).read_bytes() if n in ("a.png", "b.jpg") else _png(pixels[n]) for n in GOOD]
    want = _signature(base / "segmentation" / "1", files)
    for i, name in enumerate(GOOD):
        record = records[name]
        assert record["mask"] == str(masks / (Path(name).stem + ".png"))
        mask = cv2.imread(record["mask"], cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == pixels[name].shape[:2] == (
            record["height"],
            record["width"],
        )
        expected = cv2.resize(
            want["class_map"][i].astype(np.int32), mask.shape[::-1], interpolation=cv2.INTER_NEAREST
        )
        np.testing.assert_array_equal(mask, expected)
        assert record["class_pixels"] == {k: int((mask == c).sum()) for c, k in enumerate(SEGMENTER_CLASSES)}
    assert "error" in records["empty.jpg"] and "mask" not in records["empty.jpg"]


# ---------------------------------------------------------------------- a detector fed region proposals
@pytest.mark.slow
def test_fast_rcnn_gets_proposals_from_every_source(images, tmp_path, monkeypatch, capsys):
    import mlflow

    from cnn_apps.tracking import log_keras_model

    folder, _ = images
    model = tiny_fast_rcnn()
    path = export(model, tmp_path / "fast" / "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    try:
        mlflow.set_experiment("predict-test")
        with mlflow.start_run():
            uri = log_keras_model(
                model,
                {
                    "images": np.zeros((1, 64, 64, 3), np.float32),
                    "proposals": -np.ones((1, 24, 4), np.float32),
                },
            )
    finally:
        mlflow.set_tracking_uri(None)
    out = tmp_path / "r.jsonl"
    pattern = folder / "[ab]*"
    assert _predict("--model", path, "--input", pattern, "--output", out) == 0
    reference = _records(out)
    assert [r["width"] for r in reference] == [32, 56]
    with TFServingStub(path, name="fast") as stub:
        assert _predict("--model", stub.url, "--input", pattern, "--output", out, "--metadata", path) == 0
        assert _records(out) == reference
        assert len(stub.requests[-1]["instances"][0]["proposals"]) == 24  # the model's P rows, -1 padded
        capsys.readouterr()
        assert _predict("--model", stub.url, "--input", pattern, "--output", out) == 2
        assert "pass --metadata" in capsys.readouterr().err
    assert uri.startswith("models:/")  # MLflow 3's logged-model URI
    assert _predict("--model", uri, "--input", pattern, "--output", out, "--tracking-uri", store) == 0
    _same("detection", _records(out), reference, uri)
