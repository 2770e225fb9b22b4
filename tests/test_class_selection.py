"""``data.classes``: a classification source keeps a subset of its classes, renumbered 0..k-1 in the
order given (the split-class transfer study trains on some classes and transfers to the others).
Checked against the raw files read independently (idx files, scikit-learn's arrays, a folder)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_apps.config import load_config
from cnn_apps.data.sources import FASHION_MNIST_DIR, get_source, read_idx
from cnn_apps.errors import ConfigError


def _config(tmp_path, source, *sets):
    items = [f"data.source={source}", f"data.data_dir={tmp_path / 'data'}", *sets]
    return load_config(None, items)


def _arrays(source, spec, split):
    images, labels = [], []
    for x in source.load(spec, split).as_numpy_iterator():
        images.append(x["image"][..., 0])
        labels.append(x["label"])
    return np.stack(images), np.asarray(labels)


def test_sklearn_digits_keep_the_chosen_classes_in_the_given_order(tmp_path):
    from sklearn.datasets import load_digits

    config = _config(tmp_path, "digits", "data.classes=['7',3]", "data.test_fraction=0.2")
    source = get_source(config)
    spec = source.prepare()
    assert spec.class_names == ["7", "3"]
    raw = load_digits()
    per_class = {c: int((raw.target == c).sum()) for c in (7, 3)}
    assert sum(spec.counts.values()) == sum(per_class.values())
    for split in ("train", "validation", "test"):
        assert sum(spec.class_counts[split].values()) == spec.counts[split]
    images, labels = _arrays(source, spec, "test")
    assert set(labels) == {0, 1}
    # every loaded image is a raw image of the class its new label names
    raw_images = np.round(raw.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for image, label in zip(images, labels):
        matches = np.flatnonzero((raw_images == image).all(axis=(1, 2)))
        assert matches.size and {int(raw.target[m]) for m in matches} == {(7, 3)[label]}


def test_max_train_examples_counts_only_the_chosen_classes(tmp_path):
    config = _config(tmp_path, "digits", "data.classes=[0,1]", "data.max_train_examples=10")
    spec = get_source(config).prepare()
    assert spec.class_counts["train"] == {"0": 5, "1": 5}


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_second_half_of_the_classes(tmp_path):
    config = _config(tmp_path, "fashion_mnist", "data.classes=[5,6,7,8,9]")
    source = get_source(config)
    spec = source.prepare()
    assert spec.class_names == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert spec.counts["test"] == 5000  # t10k has 1,000 images of each class
    raw_labels = read_idx(Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz")
    raw_images = read_idx(Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz")
    images, labels = _arrays(source, spec, "test")
    keep = raw_labels >= 5
    np.testing.assert_array_equal(labels, raw_labels[keep] - 5)
    np.testing.assert_array_equal(images, raw_images[keep])
    # the source half and the target half share no training image
    other = get_source(_config(tmp_path, "fashion_mnist", "data.classes=[0,1,2,3,4]"))
    first = other.prepare()
    assert first.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert (
        first.counts["train"] + spec.counts["train"]
        == get_source(_config(tmp_path, "fashion_mnist")).prepare().counts["train"]
    )


def test_folder_reads_only_the_chosen_class_folders(tmp_path):
    root = tmp_path / "photos"
    for i, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(np.full((8, 8, 3), 40 * i + k, np.uint8)).save(root / name / f"{k}.png")
    config = _config(tmp_path, "folder", f"data.path={root}", "data.classes=[fox,cat]")
    source = get_source(config)
    spec = source.prepare()
    assert spec.class_names == ["fox", "cat"]
    assert sum(spec.counts.values()) == 12
    manifest = Path(spec.location).read_text()
    assert "/dog/" not in manifest and "/fox/" in manifest
    for split in spec.counts:
        for x in source.load(spec, split).as_numpy_iterator():
            expected = 80 if x["label"] == 0 else 0  # fox images are 80..85, cat images 0..5
            assert expected <= int(x["image"][0, 0, 0]) <= expected + 5


def test_fingerprint_changes_with_the_classes_only_when_set(tmp_path):
    plain = _config(tmp_path, "digits")
    chosen = _config(tmp_path, "digits", "data.classes=[0,1]")
    assert plain.data_fingerprint() != chosen.data_fingerprint()
    assert plain.data_fingerprint() == _config(tmp_path, "digits", "data.classes=null").data_fingerprint()


@pytest.mark.parametrize(
    "value, message",
    [
        ("[0,10]", "0..9 or names (0, 1, 2"),
        ("[cat,1]", "'cat' is not a class"),
        ("[1,'1']", "'1' is given twice"),
        ("[4]", "at least two classes"),
    ],
)
def test_bad_selections_say_what_is_valid(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        get_source(_config(tmp_path, "digits", f"data.classes={value}")).prepare()


def test_a_source_that_cannot_select_classes_says_which_can(tmp_path):
    with pytest.raises(
        ConfigError, match="the sources that can: digits, fashion_mnist, folder, opencv_digits"
    ):
        get_source(_config(tmp_path, "shapes", "data.classes=[0,1]"))
