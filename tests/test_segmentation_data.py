"""Segmentation data: the ``masks`` source (id, palette and VOC-colour mask PNGs, the VOC2012
layout, bad records named), its batches through the pipeline, and oxford_iiit_pet's trimap."""

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_apps.config import load_config
from cnn_apps.data.sources import SOURCES, VOC_CLASSES, TfdsSource, get_source, pet_trimap_to_mask
from cnn_apps.data.sources.masks import MaskFolderSource, colours_to_ids, voc_colormap
from cnn_apps.errors import ConfigError, DataError

CMAP = voc_colormap()


# ---------------------------------------------------------------------- fixtures
def _ids(w, h, value, seed, border=False):
    """(h, w) uint8 ids: background, a block of ``value``, a corner of 1, optionally a 255 border."""
    ids = np.zeros((h, w), np.uint8)
    ids[h // 4 : 3 * h // 4, w // 4 : 3 * w // 2 // 2 + 2] = value
    ids[:3, : 3 + seed] = 1
    if border:
        ids[h // 4 - 1, :] = 255
    return ids


def _save_image(path: Path, w, h, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    img = Image.fromarray(rgb)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)


def _save_mask(path: Path, ids: np.ndarray, kind: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "L":
        img = Image.fromarray(ids)
    elif kind == "P":  # VOC's SegmentationClass: palette indices are the ids
        img = Image.fromarray(ids)
        img.putpalette(CMAP.ravel().tolist())
    else:  # RGB colours of the VOC map
        img = Image.fromarray(CMAP[ids])
    img.save(path)
    assert Image.open(path).mode == kind


def _config(tmp_path, root, task="segmentation", **sets):
    items = {
        "task": task,
        "data.source": "masks",
        "data.path": str(root),
        "data.data_dir": str(tmp_path / "data"),
        **sets,
    }
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def _examples(source, spec, split):
    return [{k: v.numpy() for k, v in ex.items()} for ex in source.load(spec, split)]


def _why(spec):
    return {Path(s["file"]).name: s["reason"] for s in spec.skipped}


def _id_folder(root: Path) -> dict:
    """images/ + masks/ (mode L) with classes.txt and split lists; returns the good masks by name."""
    good = {}
    for i, (w, h, mode) in enumerate(
        [(20, 16, "RGB"), (32, 24, "L"), (24, 24, "RGBA"), (40, 30, "RGB"), (16, 16, "RGB"), (28, 20, "RGB")]
    ):
        name = f"im{i}"
        _save_image(root / "images" / f"{name}.{'jpg' if mode == 'RGB' and i == 3 else 'png'}", w, h, mode)
        good[name] = _ids(w, h, 1 + i % 2, i, border=i % 2 == 0)
        _save_mask(root / "masks" / f"{name}.png", good[name], "L")
    _save_image(root / "images" / "nomask.png", 20, 20)  # no mask
    _save_image(root / "images" / "small.png", 20, 20)
    _save_mask(root / "masks" / "small.png", _ids(18, 20, 1, 0), "L")  # 18x20 mask for a 20x20 image
    _save_image(root / "images" / "three.png", 20, 20)
    _save_mask(root / "masks" / "three.png", _ids(20, 20, 3, 0), "L")  # value 3, but two classes
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("im0\nim1\nim2\nnomask\nsmall\nthree\n")
    (root / "splits" / "val.txt").write_text("im3\nim4\n")
    (root / "splits" / "test.txt").write_text("im5\nghost\n")  # ghost: no such image
    return good


# ---------------------------------------------------------------------- id masks (mode L)
def test_id_masks_with_classes_and_split_lists(tmp_path):
    good = _id_folder(tmp_path / "pets")
    source = get_source(_config(tmp_path, tmp_path / "pets"))
    assert isinstance(source, MaskFolderSource) and SOURCES["masks"] is MaskFolderSource
    spec = source.prepare()
    assert spec.class_names == ["cat", "dog"] and spec.num_classes == 2
    assert spec.counts == {"train": 3, "validation": 2, "test": 1}
    assert spec.image_shape == [None, None, 3]
    why = _why(spec)
    assert len(spec.skipped) == 4, spec.skipped
    assert why["nomask.png"] == "mask not found (expected masks/nomask.png)"
    assert why["small.png"] == "mask is 18x20, its image small.png is 20x20"
    assert why["three.png"].startswith("mask value 3 is above the 2 classes of classes.txt")
    assert why["ghost"] == "image not found (listed for test)"

    splits = {"train": ["im0", "im1", "im2"], "validation": ["im3", "im4"], "test": ["im5"]}
    for split, names in splits.items():
        hist = np.sum([np.bincount(good[n].ravel(), minlength=256) for n in names], axis=0)
        assert spec.class_counts[split] == {"background": hist[0], "cat": hist[1], "dog": hist[2]}
        assert spec.extra["ignored_pixels"][split] == hist[255]
    assert spec.extra["ignored_pixels"]["train"] > 0

    train = _examples(source, spec, "train")
    for ex, name in zip(train, splits["train"]):
        h, w = good[name].shape
        assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8  # grey, RGBA -> RGB
        assert ex["mask"].shape == (h, w, 1) and ex["mask"].dtype == np.uint8
        np.testing.assert_array_equal(ex["mask"][..., 0], good[name])  # 255 stays 255
    assert _examples(source, spec, "no-such-split") == []


def test_masks_is_segmentation_only_and_names_its_folder(tmp_path):
    with pytest.raises(ConfigError, match="supports task segmentation"):
        get_source(_config(tmp_path, tmp_path, task="classification"))
    with pytest.raises(ConfigError, match="data.path"):
        MaskFolderSource(load_config(None, ["task=segmentation", "data.source=masks"])).prepare()
    with pytest.raises(DataError, match="no images/ and masks/"):
        MaskFolderSource(_config(tmp_path, tmp_path)).prepare()
    root = tmp_path / "bg"
    _save_image(root / "images" / "a.png", 16, 16)
    _save_mask(root / "masks" / "a.png", np.zeros((16, 16), np.uint8), "L")
    with pytest.raises(DataError, match="classes.txt"):  # only background, and no names
        MaskFolderSource(_config(tmp_path, root)).prepare()
    (root / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(DataError, match="line 1 is 'background'"):
        MaskFolderSource(_config(tmp_path, root)).prepare()


# ---------------------------------------------------------------------- VOC2012 layout, palette masks
def test_voc2012_layout_palette_masks_keep_the_255_border(tmp_path):
    root = tmp_path / "VOC2012"
    good = {}
    for i in range(6):
        name = f"2007_00000{i}"
        _save_image(root / "JPEGImages" / f"{name}.jpg", 24 + 2 * i, 20)
        good[name] = _ids(24 + 2 * i, 20, VOC_CLASSES.index("person") + 1, i, border=True)
        _save_mask(root / "SegmentationClass" / f"{name}.png", good[name], "P")
    _save_image(
        root / "JPEGImages" / "2007_000099.jpg", 20, 20
    )  # an image without mask, unlisted: not a record
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(sorted(good)[:4]) + "\n")
    (sets / "val.txt").write_text("\n".join(sorted(good)[4:]) + "\n")
    source = MaskFolderSource(_config(tmp_path, root, **{"data.val_fraction": 0.25}))
    spec = source.prepare()
    assert spec.class_names == list(VOC_CLASSES) and spec.skipped == []
    assert spec.counts == {
        "train": 3,
        "validation": 1,
        "test": 2,
    }  # VOC val is our test; validation from train
    assert spec.extra["layout"] == "voc"
    person = sum(int((m == 15).sum()) for m in good.values())
    assert sum(c["person"] for c in spec.class_counts.values()) == person
    assert sum(c["aeroplane"] for c in spec.class_counts.values()) == sum(
        int((m == 1).sum()) for m in good.values()
    )
    test = _examples(source, spec, "test")
    for ex, name in zip(test, sorted(good)[4:]):
        np.testing.assert_array_equal(ex["mask"][..., 0], good[name])  # raw indices, not palette colours
    assert set(np.unique(test[0]["mask"])) == {0, 1, 15, 255}


# ---------------------------------------------------------------------- RGB VOC-colour masks
def test_rgb_colour_masks_without_classes_are_split_by_fractions(tmp_path):
    root = tmp_path / "colours"
    good = {}
    for i in range(8):
        name = f"c{i}"
        _save_image(root / "images" / f"{name}.png", 20, 16 + i)
        good[name] = _ids(20, 16 + i, 2 + i % 2, i, border=i == 0)
        _save_mask(root / "masks" / f"{name}.png", good[name], "RGB")
    _save_image(root / "images" / "odd.png", 20, 16)
    odd = CMAP[_ids(20, 16, 2, 0)]
    odd[5, 7] = (10, 20, 30)
    Image.fromarray(odd).save(root / "masks" / "odd.png")
    Image.fromarray(CMAP[_ids(20, 16, 2, 0)]).save(root / "masks" / "orphan.png")

    cfg = _config(tmp_path, root, **{"data.val_fraction": 0.25, "data.test_fraction": 0.25})
    spec = MaskFolderSource(cfg).prepare()
    assert spec.class_names == ["class1", "class2", "class3"]  # from the largest value seen
    assert spec.counts == {"train": 4, "validation": 2, "test": 2}
    why = _why(spec)
    assert why["odd.png"].startswith("unknown colour (10, 20, 30) at x=7, y=5: not in the VOC colour map")
    assert why["orphan.png"] == "no image named orphan in images/"
    assert len(spec.skipped) == 2
    total = np.sum([np.bincount(m.ravel(), minlength=256) for m in good.values()], axis=0)
    assert {n: sum(c[n] for c in spec.class_counts.values()) for n in spec.class_counts["train"]} == {
        "background": total[0],
        "class1": total[1],
        "class2": total[2],
        "class3": total[3],
    }
    assert sum(spec.extra["ignored_pixels"].values()) == total[255] > 0  # (224, 224, 192) is void: 255
    again = MaskFolderSource(cfg).prepare()
    assert again.counts == spec.counts and Path(again.location).read_text() == Path(spec.location).read_text()
    source = MaskFolderSource(cfg)
    seen = {}
    for split in spec.counts:
        for ex in _examples(source, spec, split):
            seen[ex["mask"].shape[:2]] = ex["mask"][..., 0]
    for ids in good.values():
        np.testing.assert_array_equal(seen[ids.shape], ids)


def test_colour_conversion_and_the_voc_colour_map():
    assert CMAP[0].tolist() == [0, 0, 0] and CMAP[1].tolist() == [128, 0, 0]
    assert CMAP[15].tolist() == [192, 128, 128] and CMAP[255].tolist() == [224, 224, 192]
    ids = np.array([[0, 1, 20], [255, 15, 0]], np.uint8)
    np.testing.assert_array_equal(colours_to_ids(CMAP[ids]), ids)


# ---------------------------------------------------------------------- through the pipeline
def test_split_dataset_gives_nearest_resized_masks(tmp_path):
    from cnn_apps.tasks.inputs import split_dataset

    good = _id_folder(tmp_path / "pets")
    config = _config(tmp_path, tmp_path / "pets", **{"data.image_size": 24, "training.batch_size": 2})
    spec = get_source(config).prepare()
    allowed = {0, 1, 2, 255}
    assert set(np.unique(np.concatenate([m.ravel() for m in good.values()]))) == allowed
    for training in (True, False):
        batches = list(split_dataset(spec, config, "train", training=training))
        assert sum(len(x) for x, _ in batches) == 3
        for images, masks in batches:
            assert images.shape[1:] == (24, 24, 3) and images.dtype.name == "float32"
            assert masks.shape[1:] == (24, 24, 1) and masks.dtype.name == "uint8"
            assert set(np.unique(masks.numpy())) <= allowed  # nearest neighbour: no new values
    _, masks = batches[0]
    assert 255 in masks.numpy()  # im0's border survives the resize


# ---------------------------------------------------------------------- TFDS oxford_iiit_pet
def test_pet_trimap_becomes_background_pet_and_ignore(tmp_path, offline):
    trimap = np.array([[2, 2, 3, 1], [2, 3, 1, 1], [3, 1, 1, 1]], np.uint8)[..., None]
    mask = pet_trimap_to_mask(trimap).numpy()
    assert mask.shape == (3, 4, 1) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[..., 0], [[0, 0, 255, 1], [0, 255, 1, 1], [255, 1, 1, 1]])

    cfg = load_config(
        None,
        [
            "task=segmentation",
            "data.source=tfds",
            "data.tfds_name=oxford_iiit_pet",
            f"data.data_dir={tmp_path}",
        ],
    )
    start = time.perf_counter()
    with pytest.raises(DataError, match="offline"):
        TfdsSource(cfg).prepare()
    assert time.perf_counter() - start < 10
    with pytest.raises(ConfigError, match="data.source=masks"):
        TfdsSource(load_config(None, ["task=segmentation", "data.source=tfds", "data.tfds_name=cifar10"]))


def test_tfds_segmentation_counts_pixels_and_loads_masks(tmp_path, monkeypatch):
    import tensorflow as tf

    trimap = np.array([[2, 2, 3, 1], [2, 3, 1, 1]], np.uint8)[..., None]

    class FakeBuilder:  # oxford_iiit_pet's features, one example per split
        info = type("Info", (), {"splits": {"train": 1, "test": 1}})

        def as_dataset(self, split, decoders=None, shuffle_files=False):
            return tf.data.Dataset.from_tensors(
                {"image": tf.zeros((2, 4, 3), tf.uint8), "segmentation_mask": trimap}
            )

    cfg = load_config(
        None,
        [
            "task=segmentation",
            "data.source=tfds",
            "data.tfds_name=oxford_iiit_pet",
            f"data.data_dir={tmp_path}",
        ],
    )
    source = TfdsSource(cfg)
    monkeypatch.setattr(source, "_builder", FakeBuilder)
    monkeypatch.setattr(source, "_ensure_prepared", lambda builder: None)
    spec = source.prepare()
    assert spec.class_names == ["pet"] and spec.counts == {"train": 1, "validation": 1, "test": 1}
    assert (
        spec.class_counts["train"] == {"background": 3, "pet": 3}
        and spec.extra["ignored_pixels"]["test"] == 2
    )
    (ex,) = _examples(source, spec, "test")
    assert ex["image"].shape == (2, 4, 3)
    np.testing.assert_array_equal(ex["mask"][..., 0], [[0, 0, 255, 1], [0, 255, 1, 1]])
