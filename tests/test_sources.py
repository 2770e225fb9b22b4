import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_apps.config import load_config
from cnn_apps.data.sources import (
    FASHION_MNIST_DIR,
    FashionMnistSource,
    FolderSource,
    TfdsSource,
    read_idx,
    stratified_split,
)
from cnn_apps.errors import ConfigError, DataError


def _png(path: Path, value: int, size=(20, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _folder(root: Path, per_class=10):
    for c, cls in enumerate(["benign", "malignant", "normal"]):
        for i in range(per_class):
            _png(root / cls / f"img{i}.png", 40 * c + i)
    (root / "benign" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "normal" / "notes.txt").write_text("not an image")
    (root / "normal" / ".DS_Store").write_bytes(b"\0")  # hidden files are not records


def _config(tmp_path, **sets):
    items = {"data.source": "folder", "data.data_dir": str(tmp_path / "data"), **sets}
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def test_folder_split_is_stratified_and_bad_files_are_named(tmp_path):
    _folder(tmp_path / "scans")
    cfg = _config(
        tmp_path,
        **{"data.path": str(tmp_path / "scans"), "data.val_fraction": 0.2, "data.test_fraction": 0.2},
    )
    source = FolderSource(cfg)
    spec = source.prepare()
    assert spec.class_names == ["benign", "malignant", "normal"]
    assert spec.counts == {"train": 18, "validation": 6, "test": 6}
    for split in ("train", "validation", "test"):
        assert len(set(spec.class_counts[split].values())) == 1  # same count for every class
    skipped = {Path(s["file"]).name: s["reason"] for s in spec.skipped}
    assert set(skipped) == {"broken.jpg", "notes.txt"}
    assert "cannot be decoded" in skipped["broken.jpg"] and "not an image" in skipped["notes.txt"]
    ex = next(iter(source.load(spec, "test")))
    assert ex["image"].shape == (14, 20, 3) and int(ex["label"]) in (0, 1, 2)
    again = FolderSource(cfg).prepare()  # deterministic split
    assert again.counts == spec.counts and Path(again.location).read_text() == Path(spec.location).read_text()


def test_folder_that_is_already_split(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / "pets" / split / cls / f"{i}.png", i)
    spec = FolderSource(_config(tmp_path, **{"data.path": str(tmp_path / "pets")})).prepare()
    assert spec.counts == {"train": 12, "validation": 4, "test": 6}


def test_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        FolderSource(_config(tmp_path)).prepare()
    with pytest.raises(DataError, match="is not a folder"):
        FolderSource(_config(tmp_path, **{"data.path": str(tmp_path / "nope")})).prepare()
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="at least two class"):
        FolderSource(_config(tmp_path, **{"data.path": str(tmp_path / "one")})).prepare()
    with pytest.raises(ConfigError, match="supports task classification"):
        FolderSource(_config(tmp_path, task="detection"))


def _write_idx(path: Path, array: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(folder: Path, n_train=60, n_test=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_mnist_from_idx_files(tmp_path):
    _fake_fashion(tmp_path / "fm")
    cfg = load_config(
        None, ["data.source=fashion_mnist", f"data.path={tmp_path / 'fm'}", "data.val_fraction=0.2"]
    )
    source = FashionMnistSource(cfg)
    spec = source.prepare()
    assert spec.counts == {"train": 50, "validation": 10, "test": 20}  # 1 of 6 per class
    assert spec.image_shape == [28, 28, 1] and spec.num_classes == 10
    ex = next(iter(source.load(spec, "validation")))
    assert ex["image"].shape == (28, 28, 1)
    rgb = load_config(None, ["data.source=fashion_mnist", f"data.path={tmp_path / 'fm'}", "data.channels=3"])
    source = FashionMnistSource(rgb)
    assert next(iter(source.load(source.prepare(), "test")))["image"].shape == (28, 28, 3)


def test_fashion_mnist_missing_offline_fails_fast_with_the_fix(tmp_path, offline):
    cfg = load_config(None, ["data.source=fashion_mnist", f"data.path={tmp_path / 'nothing'}"])
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        FashionMnistSource(cfg).prepare()
    assert time.perf_counter() - start < 5
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "data.path" in str(err.value)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_reads_the_real_debian_fashion_mnist_files():
    labels = read_idx(Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"PK\x03\x04")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\0" * 3)
    with pytest.raises(DataError, match="truncated"):
        read_idx(short)


def test_tfds_offline_error_is_immediate(tmp_path, offline):
    cfg = load_config(None, ["data.source=tfds", "data.tfds_name=cifar10", f"data.data_dir={tmp_path}"])
    start = time.perf_counter()
    with pytest.raises(DataError, match="offline"):
        TfdsSource(cfg).prepare()
    assert time.perf_counter() - start < 10
    with pytest.raises(ConfigError, match="tfds_name"):
        TfdsSource(load_config(None, ["data.source=tfds"]))


def test_stratified_split_keeps_balance_and_one_per_class():
    labels = np.repeat(np.arange(4), [50, 20, 10, 1])
    parts = stratified_split(labels, {"test": 0.2, "validation": 0.1}, seed=0)
    assert np.bincount(labels[parts["test"]], minlength=4).tolist() == [10, 4, 2, 0]
    assert np.bincount(labels[parts["rest"]], minlength=4)[3] == 1
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(len(labels)))
