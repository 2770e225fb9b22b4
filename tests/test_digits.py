"""The two small digit sources: scikit-learn's 8x8 digits and OpenCV's 20x20 digits.png."""

from pathlib import Path

import numpy as np
import pytest

from cnn_apps.config import load_config
from cnn_apps.data.sources import (
    OPENCV_DIGITS_PATH,
    SOURCES,
    DigitsSource,
    OpenCvDigitsSource,
    get_source,
)
from cnn_apps.errors import DataError

needs_opencv_doc = pytest.mark.skipif(
    not Path(OPENCV_DIGITS_PATH).is_file(), reason="Debian opencv-doc is not installed"
)


def _config(tmp_path, source, **sets):
    items = {"data.source": source, "data.data_dir": str(tmp_path / "data"), **sets}
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def _arrays(source, spec, split):
    images, labels = [], []
    for x in source.load(spec, split).as_numpy_iterator():
        images.append(x["image"])
        labels.append(x["label"])
    return np.stack(images), np.asarray(labels)


def test_registered_and_configurable(tmp_path):
    assert SOURCES["digits"] is DigitsSource and SOURCES["opencv_digits"] is OpenCvDigitsSource
    assert isinstance(get_source(_config(tmp_path, "digits")), DigitsSource)
    assert isinstance(get_source(_config(tmp_path, "opencv_digits")), OpenCvDigitsSource)


def test_sklearn_digits_counts_split_and_pixels(tmp_path):
    cfg = _config(tmp_path, "digits", **{"data.val_fraction": 0.1, "data.test_fraction": 0.2})
    source = DigitsSource(cfg)
    spec = source.prepare()
    assert spec.class_names == [str(i) for i in range(10)]
    assert spec.image_shape == [8, 8, 1] and spec.num_classes == 10
    assert sum(spec.counts.values()) == 1797
    for split in ("train", "validation", "test"):
        assert sum(spec.class_counts[split].values()) == spec.counts[split]
    # stratified: every class gives ~20% to test and ~10% to validation (174..183 per class)
    assert all(35 <= n <= 37 for n in spec.class_counts["test"].values())
    assert all(17 <= n <= 18 for n in spec.class_counts["validation"].values())
    seen = {}
    for split in ("train", "validation", "test"):
        images, labels = _arrays(source, spec, split)
        assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
        assert len(labels) == spec.counts[split] and labels.dtype == np.int64
        seen[split] = images.reshape(len(images), -1)
    everything = np.concatenate(list(seen.values()))
    assert everything.max() == 255 and everything.min() == 0  # 16 -> 255, 0 -> 0
    assert set(np.unique(everything)) <= {int(round(v * 255 / 16)) for v in range(17)}
    # the splits are disjoint and cover the whole set (compare rows as multisets)
    from sklearn.datasets import load_digits

    expected = np.round(load_digits().data * 255 / 16).astype(np.uint8)
    order = np.lexsort(everything.T[::-1])
    assert np.array_equal(everything[order], expected[np.lexsort(expected.T[::-1])])


def test_sklearn_digits_deterministic_and_max_train_examples(tmp_path):
    cfg = _config(tmp_path, "digits", **{"data.max_train_examples": 100, "data.seed": 3})
    spec = DigitsSource(cfg).prepare()
    assert spec.counts["train"] == 100
    assert all(9 <= n <= 11 for n in spec.class_counts["train"].values())  # stratified subset
    a_img, a_lab = _arrays(DigitsSource(cfg), spec, "train")
    b_img, b_lab = _arrays(DigitsSource(cfg), DigitsSource(cfg).prepare(), "train")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    other = _config(tmp_path, "digits", **{"data.max_train_examples": 100, "data.seed": 4})
    c_img, _ = _arrays(DigitsSource(other), DigitsSource(other).prepare(), "train")
    assert not np.array_equal(a_img, c_img)  # another seed, another split


def test_sklearn_digits_to_three_channels(tmp_path):
    source = DigitsSource(_config(tmp_path, "digits", **{"data.channels": 3}))
    spec = source.prepare()
    assert spec.image_shape == [8, 8, 3]
    images, _ = _arrays(source, spec, "validation")
    assert images.shape[1:] == (8, 8, 3)
    assert np.array_equal(images[..., 0], images[..., 2])  # grey copied into R, G, B


@needs_opencv_doc
def test_opencv_digits_counts_and_split(tmp_path):
    cfg = _config(tmp_path, "opencv_digits", **{"data.val_fraction": 0.1, "data.test_fraction": 0.1})
    source = OpenCvDigitsSource(cfg)
    spec = source.prepare()
    assert spec.image_shape == [20, 20, 1] and spec.class_names == [str(i) for i in range(10)]
    assert spec.counts == {"train": 4000, "validation": 500, "test": 500}
    total = {c: sum(spec.class_counts[s][c] for s in spec.counts) for c in spec.class_names}
    assert total == {str(i): 500 for i in range(10)}
    assert spec.class_counts["test"] == {str(i): 50 for i in range(10)}
    images, labels = _arrays(source, spec, "test")
    assert images.dtype == np.uint8 and images.shape == (500, 20, 20, 1)
    again_images, again_labels = _arrays(OpenCvDigitsSource(cfg), OpenCvDigitsSource(cfg).prepare(), "test")
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)


@needs_opencv_doc
def test_opencv_digits_layout(tmp_path):
    cfg = _config(tmp_path, "opencv_digits", **{"data.val_fraction": 0.0, "data.test_fraction": 0.0})
    source = OpenCvDigitsSource(cfg)
    images, labels = _arrays(source, source.prepare(), "train")
    images = images[..., 0].astype(np.float64)
    means = np.stack([images[labels == k].mean(axis=0) for k in range(10)])

    def ink_columns(mean_image):
        return int((mean_image.mean(axis=0) > 20).sum())

    # Cells cut on the 20-pixel grid hold centred digits: the mean image is blank at its
    # 2-pixel border and bright in the middle (a cut 3 px off gives a border 1/3 as bright
    # as the middle; 10 px off, the middle is blank).
    mean = images.mean(axis=0)
    ring = np.concatenate([mean[:2].ravel(), mean[-2:].ravel(), mean[:, :2].ravel(), mean[:, -2:].ravel()])
    assert ring.mean() < 0.05 * mean[6:14, 6:14].mean()
    # Labels follow the rows: a "1" is a thin stroke, a "0" a wide ring (13 vs 6 columns here).
    assert ink_columns(means[1]) + 4 <= ink_columns(means[0])
    assert ink_columns(means[1]) == min(ink_columns(m) for m in means)
    # and a "0" is hollow: its centre is darker than the ring around it
    assert means[0][8:12, 8:12].mean() < 0.5 * means[0][3:17, 3:17].max()


def test_opencv_digits_missing_file_and_custom_path(tmp_path):
    missing = tmp_path / "nowhere" / "digits.png"
    with pytest.raises(DataError, match="apt-get install opencv-doc") as info:
        OpenCvDigitsSource(_config(tmp_path, "opencv_digits", **{"data.path": str(missing)})).prepare()
    assert str(missing) in str(info.value) and "data.path" in str(info.value)
    # data.path to another file of the same layout: a synthetic sheet, cell (r, c) painted r
    from PIL import Image

    sheet = np.repeat(np.repeat(np.arange(50, dtype=np.uint8)[:, None] * 5, 100, axis=1), 20, axis=0)
    sheet = np.repeat(sheet, 20, axis=1)
    Image.fromarray(sheet).save(tmp_path / "sheet.png")
    source = OpenCvDigitsSource(
        _config(tmp_path, "opencv_digits", **{"data.path": str(tmp_path / "sheet.png")})
    )
    spec = source.prepare()
    images, labels = _arrays(source, spec, "train")
    assert np.array_equal(images[:, 0, 0, 0] // 5 // 5, labels)  # cell row // 5 is the class
    assert all(len(np.unique(im)) == 1 for im in images)  # every cell is one uniform 20x20 cut
    Image.fromarray(sheet[:500]).save(tmp_path / "half.png")
    with pytest.raises(DataError, match="expected a 2000x1000"):
        OpenCvDigitsSource(
            _config(tmp_path, "opencv_digits", **{"data.path": str(tmp_path / "half.png")})
        ).prepare()
