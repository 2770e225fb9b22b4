"""Images we refuse or fix before training on them (issue "Trust", point 5):

* a header claiming more than ``data.max_image_pixels`` pixels is skipped and named before
  anything is decoded (PIL's own 89 MP warning / 179 MP error never fires first);
* a photo with an EXIF orientation is read upright by every file source and by predict;
* a class folder without usable training images is an error naming it (or, with
  ``data.skip_empty_classes``, left out with a warning), never a silent extra class.

Sources are called directly (no MLflow run), so the whole file runs in seconds.
"""

import io
import json
import logging
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from cnn_apps.config import Config, load_config
from cnn_apps.data.sources import CocoSource, FolderSource, MaskFolderSource, VocSource
from cnn_apps.errors import ConfigError, DataError


def _cfg(tmp_path, **sets):
    items = {"data.data_dir": str(tmp_path / "prepared"), **sets}
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def _png(path: Path, value=0, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _bomb_png(path: Path, width=100_000, height=100_000):
    """A 100-byte PNG whose IHDR claims ``width`` x ``height`` grey pixels (one row of data):
    a decompression bomb's header, cheap to write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _folder(root: Path, per_class=3):
    for c, cls in enumerate(("cat", "dog")):
        for i in range(per_class):
            _png(root / cls / f"{i}.png", 60 * c + i)


def _skipped(spec) -> dict:
    return {Path(s["file"]).name: s["reason"] for s in spec.skipped}


# ---------------------------------------------------------------------- the pixel limit
def test_a_header_bomb_is_skipped_and_named_before_decoding(tmp_path):
    _folder(tmp_path / "pets")
    _bomb_png(tmp_path / "pets" / "cat" / "bomb.png")  # 10 gigapixels: PIL's own guard would raise
    _bomb_png(tmp_path / "pets" / "dog" / "big.png", 10_000, 9_000)  # 90 MP: PIL would only warn
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        spec = FolderSource(
            _cfg(tmp_path, **{"data.source": "folder", "data.path": tmp_path / "pets"})
        ).prepare()
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's guard is back on afterwards
    skipped = _skipped(spec)
    assert skipped["bomb.png"] == (
        "100000x100000 = 10,000,000,000 pixels > data.max_image_pixels 89,478,485 (a decompression "
        "bomb or an image too large to train on); raise the limit if you trust it"
    )
    assert skipped["big.png"].startswith("10000x9000 = 90,000,000 pixels > data.max_image_pixels 89,478,485")
    assert sum(spec.counts.values()) == 6


def test_the_limit_is_a_setting_and_0_means_none(tmp_path):
    _folder(tmp_path / "pets")
    _png(tmp_path / "pets" / "cat" / "wide.png", size=(20, 20))  # 400 pixels
    sets = {"data.source": "folder", "data.path": tmp_path / "pets", "data.max_image_pixels": 100}
    spec = FolderSource(_cfg(tmp_path, **sets)).prepare()
    assert _skipped(spec) == {
        "wide.png": "20x20 = 400 pixels > data.max_image_pixels 100 (a decompression bomb or an image "
        "too large to train on); raise the limit if you trust it"
    }
    for no_limit in (0, "null"):
        spec = FolderSource(_cfg(tmp_path, **{**sets, "data.max_image_pixels": no_limit})).prepare()
        assert spec.skipped == [] and sum(spec.counts.values()) == 7
    with pytest.raises(ConfigError, match="data.max_image_pixels: a pixel count, or 0"):
        _cfg(tmp_path, **{"data.max_image_pixels": -1})


def test_new_keys_at_their_defaults_keep_older_fingerprints():
    assert Config().data_fingerprint() == "7450e9137f89"  # the fingerprint before these keys existed
    assert load_config(None, ["data.max_image_pixels=100"]).data_fingerprint() != "7450e9137f89"


def _voc(root: Path, stem: str, size: tuple, image_writer):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    image_writer(root / "JPEGImages" / f"{stem}.png")
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.png</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height></size><object><name>cat</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )


def test_voc_coco_and_masks_skip_a_bomb_naming_it(tmp_path):
    voc = tmp_path / "voc"
    _voc(voc, "ok", (8, 6), lambda p: _png(p))
    _voc(voc, "bomb", (100_000, 100_000), _bomb_png)
    spec = VocSource(_cfg(tmp_path, task="detection", **{"data.source": "voc", "data.path": voc})).prepare()
    reason = _skipped(spec)["bomb.png"]
    assert reason.startswith("100000x100000 = 10,000,000,000 pixels > data.max_image_pixels 89,478,485")
    assert reason.endswith("(annotation bomb.xml)")

    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": "bomb.png"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 3, 3]}],
                "categories": [{"id": 1, "name": "cat"}],
            }
        )
    )
    sets = {"data.source": "coco", "data.path": coco, "data.image_dir": voc / "JPEGImages"}
    spec = CocoSource(_cfg(tmp_path, task="detection", **sets)).prepare()
    assert _skipped(spec)["bomb.png"].startswith("100000x100000 = 10,000,000,000 pixels > data.max_image")
    assert _skipped(spec)["bomb.png"].endswith("(image id 2)")

    masks = tmp_path / "masks"
    (masks / "masks").mkdir(parents=True)
    for stem, writer in (("ok", _png), ("bomb", _bomb_png)):
        writer(masks / "images" / f"{stem}.png")
        Image.fromarray(np.ones((6, 8), np.uint8)).save(masks / "masks" / f"{stem}.png")
    spec = MaskFolderSource(
        _cfg(tmp_path, task="segmentation", **{"data.source": "masks", "data.path": masks})
    )
    assert _skipped(spec.prepare())["bomb.png"].startswith("100000x100000 = 10,000,000,000 pixels")


def test_predict_refuses_a_bomb_before_decoding(tmp_path):
    from cnn_apps.serving.images import read_image

    _bomb_png(tmp_path / "bomb.png")
    with pytest.raises(DataError) as info:
        read_image(tmp_path / "bomb.png")
    assert str(info.value) == (
        f"{tmp_path / 'bomb.png'}: 100000x100000 = 10,000,000,000 pixels > --max-image-pixels "
        "89,478,485 (a decompression bomb or an image too large to predict on); "
        "raise the limit if you trust it"
    )
    _png(tmp_path / "small.png", size=(20, 20))
    with pytest.raises(DataError, match="20x20 = 400 pixels > --max-image-pixels 100"):
        read_image(tmp_path / "small.png", max_pixels=100)
    assert read_image(tmp_path / "small.png", max_pixels=0).pixels.shape == (20, 20, 3)


# ---------------------------------------------------------------------- EXIF orientation
def _halves(width=40, height=20) -> np.ndarray:
    """Stored pixels: the left half black, the right half white (unambiguous after JPEG)."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, width // 2 :] = 255
    return array


def _exif_jpeg(path: Path, array: np.ndarray, orientation: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif, quality=95)


def _upright(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_helpers_match_pil(orientation):
    import tensorflow as tf

    from cnn_apps.data.sources.images import orient, orient_array

    stored = np.random.default_rng(orientation).integers(0, 255, (5, 3, 3), np.uint8)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(buf, "PNG", exif=exif)  # lossless: exact comparison
    buf.seek(0)
    with Image.open(buf) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(orient_array(stored, orientation), expected)
    np.testing.assert_array_equal(orient(tf.constant(stored), tf.constant(orientation)).numpy(), expected)


def test_a_rotated_jpeg_is_read_upright_by_the_folder_source(tmp_path):
    _folder(tmp_path / "pets")
    _exif_jpeg(tmp_path / "pets" / "cat" / "portrait.jpg", _halves(), 6)  # shown turned 90 degrees clockwise
    upright = _upright(tmp_path / "pets" / "cat" / "portrait.jpg")
    assert upright.shape == (40, 20, 3) and upright[:20].mean() < 30 and upright[20:].mean() > 225
    cfg = _cfg(tmp_path, **{"data.source": "folder", "data.path": tmp_path / "pets", "data.test_fraction": 0})
    source = FolderSource(cfg)
    spec = source.prepare()
    seen = [ex["image"].numpy() for split in spec.counts for ex in source.load(spec, split)]
    portrait = [im for im in seen if im.shape[:2] != (6, 8)]
    assert len(seen) == 7 and len(portrait) == 1
    assert portrait[0].shape == (40, 20, 3)  # today: (20, 40, 3), lying on its side
    assert np.abs(portrait[0].astype(int) - upright.astype(int)).max() < 40


def test_detection_boxes_and_masks_are_taken_upright(tmp_path):
    """The VOC <size>, COCO width/height and masks of a turned photo are its upright ones
    (annotation tools show it upright); the image is turned, the boxes are not. A size that
    matches the stored pixels is skipped, saying why."""
    voc = tmp_path / "voc"
    _voc(voc, "upright", (20, 40), lambda p: _exif_jpeg(p.with_suffix(".jpg"), _halves(), 6))
    _voc(voc, "stored", (40, 20), lambda p: _exif_jpeg(p.with_suffix(".jpg"), _halves(), 6))
    for stem in ("upright", "stored"):  # the XML names a .png: point it at the JPEG
        xml = voc / "Annotations" / f"{stem}.xml"
        xml.write_text(xml.read_text().replace(f"{stem}.png", f"{stem}.jpg"))
    cfg = _cfg(
        tmp_path, task="detection", **{"data.source": "voc", "data.path": voc, "data.test_fraction": 0}
    )
    source = VocSource(cfg)
    spec = source.prepare()
    assert _skipped(spec) == {
        "stored.xml": "<size> 40x20 differs from the image's 20x40 (stored.jpg); its EXIF orientation 6 "
        "turns the stored 40x20 pixels upright, and the annotation matches the unturned pixels: "
        "re-save the image upright or drop its EXIF orientation tag"
    }
    (ex,) = [ex for split in spec.counts for ex in source.load(spec, split)]
    assert ex["image"].shape == (40, 20, 3) and ex["boxes"].numpy().tolist() == [[0, 0, 4, 4]]
    assert np.abs(ex["image"].numpy().astype(int) - _upright(voc / "JPEGImages" / "upright.jpg")).max() < 40

    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "upright.jpg", "width": 20, "height": 40},
                    {"id": 2, "file_name": "stored.jpg", "width": 40, "height": 20},
                ],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 3, 3]}],
                "categories": [{"id": 1, "name": "cat"}],
            }
        )
    )
    sets = {
        "data.source": "coco",
        "data.path": coco,
        "data.image_dir": voc / "JPEGImages",
        "data.test_fraction": 0,
    }
    source = CocoSource(_cfg(tmp_path, task="detection", **sets))
    spec = source.prepare()
    assert _skipped(spec)["stored.jpg"].startswith(
        "coco.json says 40x20, the image is 20x40 (image id 2); its EXIF"
    )
    (ex,) = [ex for split in spec.counts for ex in source.load(spec, split)]
    assert ex["image"].shape == (40, 20, 3)

    masks = tmp_path / "masks"
    _exif_jpeg(masks / "images" / "portrait.jpg", _halves(), 6)
    (masks / "masks").mkdir()
    Image.fromarray(np.ones((40, 20), np.uint8)).save(masks / "masks" / "portrait.png")  # upright: 20 wide
    sets = {"data.source": "masks", "data.path": masks, "data.test_fraction": 0}
    source = MaskFolderSource(_cfg(tmp_path, task="segmentation", **sets))
    spec = source.prepare()
    assert spec.skipped == []
    (ex,) = [ex for split in spec.counts for ex in source.load(spec, split)]
    assert ex["image"].shape == (40, 20, 3) and ex["mask"].shape == (40, 20, 1)


def test_predict_reads_a_rotated_jpeg_upright(tmp_path):
    import tensorflow as tf

    from cnn_apps.serving.images import read_image

    _exif_jpeg(tmp_path / "portrait.jpg", _halves(), 6)
    image = read_image(tmp_path / "portrait.jpg")
    upright = _upright(tmp_path / "portrait.jpg")
    assert image.pixels.shape == (40, 20, 3) and (image.height, image.width) == (40, 20)
    assert np.abs(image.pixels.astype(int) - upright.astype(int)).max() < 40
    assert image.converted  # the model's decoder ignores EXIF: it gets the upright pixels as PNG
    np.testing.assert_array_equal(tf.io.decode_png(image.data).numpy(), image.pixels)


# ---------------------------------------------------------------------- empty class folders
def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    _folder(tmp_path / "pets")
    (tmp_path / "pets" / "bird").mkdir()
    cfg = _cfg(tmp_path, **{"data.source": "folder", "data.path": tmp_path / "pets"})
    with pytest.raises(DataError) as info:
        FolderSource(cfg).prepare()  # today: a class 'bird' with no examples
    assert str(info.value) == (
        f"class folder {tmp_path / 'pets' / 'bird'} has no images: a class without training images is one "
        "the model can never learn; add images, remove the folder, or set data.skip_empty_classes=true "
        "to leave it out"
    )


def test_a_class_folder_of_unusable_files_is_an_error_naming_it(tmp_path):
    _folder(tmp_path / "pets")
    (tmp_path / "pets" / "bird").mkdir()
    (tmp_path / "pets" / "bird" / "notes.txt").write_text("no image")
    with pytest.raises(
        DataError, match=r"class folder .*bird has no usable images \(1 skipped, e.g. notes.txt: "
    ):
        FolderSource(_cfg(tmp_path, **{"data.source": "folder", "data.path": tmp_path / "pets"})).prepare()


def test_split_folders_need_every_class_in_train_only(tmp_path):
    root = tmp_path / "pets"
    for split in ("train", "val", "test"):
        _folder(root / split)
    (root / "train" / "bird").mkdir()  # empty in train: an error
    (root / "test" / "dog").rename(root / "test" / "gone")  # 'gone' is not in train: an error
    cfg = _cfg(tmp_path, **{"data.source": "folder", "data.path": root})
    with pytest.raises(DataError) as info:
        FolderSource(cfg).prepare()
    assert str(info.value).startswith(
        f"class folder {root / 'train' / 'bird'} has no images; class folder {root / 'train' / 'gone'} "
        f"does not exist (the class comes from {root / 'test' / 'gone'}): a class without training images"
    )
    _png(root / "train" / "bird" / "0.png")
    _png(root / "train" / "gone" / "0.png")
    (root / "val" / "bird").mkdir()  # empty outside train: allowed (a small split may miss a class)
    spec = FolderSource(cfg).prepare()
    assert spec.class_names == ["bird", "cat", "dog", "gone"] and spec.class_counts["validation"]["bird"] == 0


def test_skip_empty_classes_leaves_the_class_out_with_a_warning(tmp_path, caplog):
    root = tmp_path / "pets"
    for split in ("train", "val"):
        _folder(root / split)
    (root / "train" / "bird").mkdir()
    _png(root / "val" / "bird" / "0.png")
    cfg = _cfg(tmp_path, **{"data.source": "folder", "data.path": root, "data.skip_empty_classes": "true"})
    with caplog.at_level(logging.WARNING, logger="cnn_apps"):
        spec = FolderSource(cfg).prepare()
    assert spec.class_names == ["cat", "dog"] and spec.extra == {"empty_classes_left_out": ["bird"]}
    assert f"class folder {root / 'train' / 'bird'} has no images: left out, not a class" in caplog.text
    assert spec.skipped == [
        {
            "file": str((root / "val" / "bird" / "0.png").resolve()),
            "reason": "its class bird has no training images and is left out (data.skip_empty_classes)",
        }
    ]
    assert spec.counts == {"train": 6, "validation": 6}
