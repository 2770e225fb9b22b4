"""R-CNN and SPP-net store their SVMs and box regressors as plain arrays (``region_head.npz``
+ ``region_head.json``), never as a pickle: a saved directory round-trips to the same
detections; a pickled head (an old ``region_head.joblib`` or one planted under either name)
is refused before it is unpickled, unless ``--unsafe-load`` (``CNN_APPS_UNSAFE_LOAD=1``)
lets an old joblib head load."""

import pathlib
import pickle

import numpy as np
import pytest

from cnn_apps import tracking
from cnn_apps.detection.rcnn import RCNN
from cnn_apps.detection.region_detector import LEGACY_HEAD_FILE, RegionDetector
from cnn_apps.detection.region_head import HEAD_FILE, HEAD_META_FILE
from cnn_apps.detection.sppnet import SPPNet
from cnn_apps.errors import ModelError

SIZE = 64
CLASSES = ["circle", "square", "triangle", "star"]
TINY = dict(
    image_size=SIZE,
    backbone_args={"stage_filters": [8, 16, 16, 32]},
    warp_size=32,
    max_proposals=20,
    finetune_epochs=0,  # the head is what is saved here; the classifier keeps its initial weights
    hard_negative_rounds=1,
)


@pytest.fixture(scope="module")
def fitted():
    """A tiny R-CNN and an SPP-net sharing its classifier, fitted on 6 shapes images, and
    proposals for 2 test images (given to predict: no selective search in the comparison)."""
    from cnn_apps.data.shapes import make_scene

    scenes = [make_scene(0, "train", i, SIZE, "detection") for i in range(6)]
    images = np.stack([s.image for s in scenes])
    rcnn = RCNN(4, CLASSES, **TINY)
    rcnn.fit(images, [s.boxes for s in scenes], [s.labels for s in scenes])
    spp = SPPNet(4, CLASSES, **TINY)
    spp.fit(images, [s.boxes for s in scenes], [s.labels for s in scenes], classifier=rcnn.classifier)
    test = images[:2]
    return {"rcnn": rcnn, "sppnet": spp}, test, rcnn.propose(test)


def _same_detections(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("name", ["rcnn", "sppnet"])
def test_saved_head_is_arrays_and_round_trips_exactly(fitted, tmp_path, name):
    models, images, proposals = fitted
    model = models[name]
    before = model.predict(images, proposals)
    directory = model.save(tmp_path / name)

    files = sorted(p.name for p in directory.iterdir())
    assert files == sorted(["classifier.keras", "region_detector.json", HEAD_FILE, HEAD_META_FILE])
    for path in directory.iterdir():  # no pickle (protocol >= 2 starts with 0x80), no joblib file
        assert not path.read_bytes().startswith(b"\x80"), path
    with np.load(directory / HEAD_FILE, allow_pickle=False) as npz:  # numeric arrays only
        assert sorted(npz.files) == ["reg_b", "reg_w", "svm_b", "svm_w"]
        assert all(npz[key].dtype == np.float32 for key in npz.files)

    loaded = RegionDetector.load(directory)
    assert type(loaded) is type(model)
    for key in ("svm_w", "svm_b", "reg_w", "reg_b"):
        np.testing.assert_array_equal(getattr(loaded.head, key), getattr(model.head, key))
    assert loaded.head.scale == model.head.scale and type(loaded.head.scale) is float
    assert loaded.head.history == model.head.history
    feats = model._box_features(images, proposals)
    for f, p in zip(feats, proposals):  # the head alone, on the same features: to the bit
        _same_detections([model.head.detect(f, p, SIZE)], [loaded.head.detect(f, p, SIZE)])
    _same_detections(before, loaded.predict(images, proposals))


def _planted_pickle(marker: pathlib.Path) -> bytes:
    """A pickle that writes ``marker`` when it is unpickled."""

    class Payload:
        def __reduce__(self):
            return pathlib.Path.write_text, (marker, "unpickled")

    return pickle.dumps(Payload(), protocol=4)


def test_the_planted_pickle_does_run_code_when_unpickled(tmp_path):
    """The payload the next test plants is live: plain unpickling writes its marker."""
    marker = tmp_path / "ran"
    pickle.loads(_planted_pickle(marker))
    assert marker.read_text() == "unpickled"


@pytest.mark.parametrize(
    ("planted_as", "unsafe"),
    [(LEGACY_HEAD_FILE, False), (HEAD_FILE, False), (HEAD_FILE, True)],
)
def test_a_planted_pickle_head_is_refused_and_never_unpickled(
    fitted, tmp_path, monkeypatch, planted_as, unsafe
):
    models, _, _ = fitted
    directory = models["rcnn"].save(tmp_path / "run")
    for name in (HEAD_FILE, HEAD_META_FILE):
        (directory / name).unlink(missing_ok=True)
    marker = tmp_path / "pwned"
    (directory / planted_as).write_bytes(_planted_pickle(marker))
    if unsafe:  # --unsafe-load trusts an old joblib head, never a pickle posing as the .npz
        monkeypatch.setenv(tracking.UNSAFE_LOAD_ENV, "1")
    else:
        monkeypatch.delenv(tracking.UNSAFE_LOAD_ENV, raising=False)

    with pytest.raises(ModelError) as info:
        RegionDetector.load(directory)
    message = str(info.value)
    assert str(directory / planted_as) in message and "pickle" in message and "run any code" in message
    if planted_as == LEGACY_HEAD_FILE:
        assert "--unsafe-load" in message and tracking.UNSAFE_LOAD_ENV in message
    assert not marker.exists()


def test_an_old_joblib_head_loads_only_with_unsafe_load(fitted, tmp_path, monkeypatch):
    import joblib

    models, images, proposals = fitted
    model = models["rcnn"]
    directory = model.save(tmp_path / "old")
    for name in (HEAD_FILE, HEAD_META_FILE):  # the layout cnn-apps wrote before: a joblib head
        (directory / name).unlink(missing_ok=True)
    joblib.dump(model.head.state(), directory / LEGACY_HEAD_FILE)

    monkeypatch.delenv(tracking.UNSAFE_LOAD_ENV, raising=False)
    with pytest.raises(ModelError, match=LEGACY_HEAD_FILE.replace(".", r"\.") + ".*--unsafe-load"):
        RegionDetector.load(directory)

    monkeypatch.setenv(tracking.UNSAFE_LOAD_ENV, "1")
    loaded = RegionDetector.load(directory)
    assert isinstance(loaded, RCNN)
    _same_detections(model.predict(images, proposals), loaded.predict(images, proposals))
    # saving it again rewrites the head as arrays and drops the pickle
    again = loaded.save(directory)
    assert not (again / LEGACY_HEAD_FILE).exists() and (again / HEAD_FILE).exists()
    monkeypatch.delenv(tracking.UNSAFE_LOAD_ENV)
    _same_detections(model.predict(images, proposals), RegionDetector.load(again).predict(images, proposals))


def test_a_head_with_wrong_shapes_is_refused(fitted, tmp_path):
    models, _, _ = fitted
    directory = models["rcnn"].save(tmp_path / "bad")
    head = models["rcnn"].head
    np.savez(
        directory / HEAD_FILE, svm_w=head.svm_w[:2], svm_b=head.svm_b[:2], reg_w=head.reg_w, reg_b=head.reg_b
    )
    with pytest.raises(ModelError, match=r"svm_w .*shape \(2, .*expected float \(4, "):
        RegionDetector.load(directory)
