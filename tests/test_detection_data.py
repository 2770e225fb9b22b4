"""Detection data: VOC and COCO sources (boxes converted once, bad records named),
box- and mask-aware augmentation, and the prepare stage's detection metrics."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_overrides

from cnn_apps.config import AugmentConfig, load_config
from cnn_apps.data.pipeline import augment_example, crop_example, flip_example, make_pipeline, scale_example
from cnn_apps.data.sources import (
    VOC_CLASSES,
    CocoSource,
    VocSource,
    coco_box_to_xyxy,
    get_source,
    tfds_boxes_to_xyxy,
    voc_box_to_xyxy,
)
from cnn_apps.errors import ConfigError

W, H = 40, 30  # every fixture image is 40 wide, 30 high


# ---------------------------------------------------------------------- fixtures
def _image(path: Path, w=W, h=H):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    cv2.rectangle(img, (3, 3), (12, 12), (0, 200, 0), -1)
    assert cv2.imwrite(str(path), img)


def _obj(name, xmin, ymin, xmax, ymax, difficult=0):
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _xml(root: Path, image_id: str, *objects, filename=None, size=(W, H)):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    text = (
        f"<annotation><folder>VOC</folder><filename>{filename or image_id + '.jpg'}</filename>"
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        + "".join(objects)
        + "</annotation>"
    )
    (root / "Annotations" / f"{image_id}.xml").write_text(text)


def _voc(root: Path, image_sets=True):
    for i in (1, 2, 3, 6, 7):
        _image(root / "JPEGImages" / f"00000{i}.jpg")
    _xml(
        root,
        "000001",
        _obj("cat", 5, 6, 14, 20),
        _obj("dog", 1, 1, 8, 8, difficult=1),
        _obj("dog", 30, 10, 50, 25),
    )  # the last one runs off the right edge: clipped
    _xml(root, "000002", _obj("dog", 20, 5, 10, 15), _obj("dog", 2, 3, 40, 30))  # x2 <= x1, then a full one
    _xml(root, "000003")  # an image without objects
    (root / "Annotations" / "000004.xml").write_text("<annotation><filename>000004.jpg</filename>")  # bad XML
    _xml(root, "000005", _obj("cat", 1, 1, 5, 5))  # its image is missing
    _xml(root, "000006", _obj("cat", 60, 40, 70, 50))  # wholly outside: left without objects
    _xml(root, "000007", _obj("cat", 11, 11, 20, 20))
    if image_sets:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        (main / "train.txt").write_text("000001\n000002\n000004\n000005\n000006\n")
        (main / "val.txt").write_text("000007\n")
        (main / "test.txt").write_text("000003\n000008\n")  # 000008 has no annotation


def _config(tmp_path, source, task="detection", **sets):
    items = {"task": task, "data.source": source, "data.data_dir": str(tmp_path / "data"), **sets}
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def _examples(source, spec, split):
    return [{k: v.numpy() for k, v in ex.items()} for ex in source.load(spec, split)]


# ---------------------------------------------------------------------- conversions
def test_box_conversions():
    assert voc_box_to_xyxy(1, 1, 3, 4) == [0, 0, 3, 4]  # pixels 1..3 (1-based, inclusive): 3 wide
    assert coco_box_to_xyxy(2.5, 3, 10, 5) == [2.5, 3, 12.5, 8]
    yxyx = np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)
    np.testing.assert_allclose(tfds_boxes_to_xyxy(yxyx, 100, 200).numpy(), [[40, 10, 120, 50]], atol=1e-4)
    np.testing.assert_allclose(
        tfds_boxes_to_xyxy(yxyx, 100, 200, one_based=True).numpy(), [[39, 9, 120, 50]], atol=1e-4
    )
    assert tfds_boxes_to_xyxy(np.zeros((0, 4), np.float32), 10, 10).shape == (0, 4)


# ---------------------------------------------------------------------- VOC
def test_voc_prepare_counts_skips_and_exact_boxes(tmp_path):
    _voc(tmp_path / "myvoc")
    source = VocSource(_config(tmp_path, "voc", **{"data.path": str(tmp_path / "myvoc")}))
    spec = source.prepare()
    assert spec.class_names == ["cat", "dog"]
    assert spec.counts == {"train": 3, "validation": 1, "test": 1}
    assert spec.class_counts == {
        "train": {"cat": 1, "dog": 2},
        "validation": {"cat": 1, "dog": 0},
        "test": {"cat": 0, "dog": 0},
    }
    assert spec.extra["images_without_objects"] == {"train": 1, "validation": 0, "test": 1}
    assert spec.extra["difficult_boxes"] == {"train": 1, "validation": 0, "test": 0}
    reasons = {(Path(s["file"]).name, s["reason"].split(":")[0]) for s in spec.skipped}
    assert len(spec.skipped) == 5
    assert ("000004.xml", "not valid XML") in reasons
    assert ("000005.jpg", "image file not found (annotation 000005.xml)") in reasons
    assert ("000008.xml", "annotation file not found (listed in ImageSets/Main for test)") in reasons
    assert ("000002.xml", "object 0 (dog)") in reasons and ("000006.xml", "object 0 (cat)") in reasons
    why = {Path(s["file"]).name: s["reason"] for s in spec.skipped}
    assert "x2 <= x1" in why["000002.xml"] and "outside the 40x30 image" in why["000006.xml"]

    train = _examples(source, spec, "train")
    assert [ex["image"].shape for ex in train] == [(H, W, 3)] * 3
    np.testing.assert_array_equal(
        train[0]["boxes"], [[4, 5, 14, 20], [0, 0, 8, 8], [29, 9, 40, 25]]
    )  # 1-based -> xyxy, clipped; the difficult dog stays, flagged as an ignore region
    assert train[0]["labels"].tolist() == [0, 1, 1] and train[0]["boxes"].dtype == np.float32
    assert train[0]["ignore"].tolist() == [False, True, False]
    np.testing.assert_array_equal(train[1]["boxes"], [[1, 2, 40, 30]])
    assert train[1]["ignore"].tolist() == [False]
    assert train[2]["boxes"].shape == (0, 4) and train[2]["labels"].shape == (0,)
    assert train[2]["labels"].dtype == np.int64
    test = _examples(source, spec, "test")
    assert test[0]["boxes"].shape == (0, 4)
    assert _examples(source, spec, "no-such-split") == []  # an empty split is an empty, typed dataset

    keep = VocSource(
        _config(tmp_path, "voc", **{"data.path": str(tmp_path / "myvoc"), "data.keep_difficult": True})
    ).prepare()
    assert keep.class_counts["train"] == {"cat": 1, "dog": 3}
    assert keep.extra["difficult_boxes"]["train"] == 0
    kept = _examples(
        VocSource(
            _config(tmp_path, "voc", **{"data.path": str(tmp_path / "myvoc"), "data.keep_difficult": True})
        ),
        keep,
        "train",
    )
    assert kept[0]["ignore"].tolist() == [False, False, False]


def test_voc_without_image_sets_is_split_by_seed_and_real_voc_uses_the_20_classes(tmp_path):
    root = tmp_path / "VOC2007"
    _voc(root, image_sets=False)
    cfg = _config(
        tmp_path, "voc", **{"data.path": str(root), "data.val_fraction": 0.25, "data.test_fraction": 0.25}
    )
    spec = VocSource(cfg).prepare()
    assert spec.class_names == list(VOC_CLASSES)  # a VOC2007 folder: labels as in real VOC
    assert sum(spec.counts.values()) == 5 and spec.counts["test"] == 1 and spec.counts["validation"] == 1
    assert len(spec.skipped) == 4  # bad XML, missing image, two bad boxes
    again = VocSource(cfg).prepare()
    assert Path(again.location).read_text() == Path(spec.location).read_text()
    cat, dog = VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")
    labels = {
        int(v) for split in spec.counts for ex in _examples(VocSource(cfg), spec, split) for v in ex["labels"]
    }
    assert labels == {cat, dog}


def test_voc_and_coco_are_detection_only(tmp_path):
    with pytest.raises(ConfigError, match="supports task detection"):
        get_source(_config(tmp_path, "voc", task="classification"))
    with pytest.raises(ConfigError, match="supports task detection"):
        get_source(_config(tmp_path, "coco", task="segmentation"))
    with pytest.raises(ConfigError, match="data.path"):
        VocSource(_config(tmp_path, "voc")).prepare()


# ---------------------------------------------------------------------- COCO
def _coco(tmp_path) -> Path:
    images = tmp_path / "imgs"
    for name in ("a.png", "b.png", "c.png"):
        _image(images / name)
    ann = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": W, "height": H},
            {"id": 3, "file_name": "b.png", "width": W, "height": H},
            {"id": 7, "file_name": "c.png", "width": W, "height": H},  # no annotations: kept
            {"id": 99, "file_name": "missing.png", "width": W, "height": H},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 18, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # clipped
            {"id": 3, "image_id": 10, "category_id": 18, "bbox": [0, 0, 40, 30], "iscrowd": 1},
            {"id": 4, "image_id": 3, "category_id": 3, "bbox": [1, 1, 0, 5], "iscrowd": 0},  # no width
            {"id": 5, "image_id": 3, "category_id": 3, "bbox": [5.5, 5, 4, 4], "iscrowd": 0},
            {"id": 6, "image_id": 42, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0},  # no such image
            {"id": 7, "image_id": 99, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0},  # image missing
            {
                "id": 8,
                "image_id": 3,
                "category_id": 77,
                "bbox": [1, 1, 4, 4],
                "iscrowd": 0,
            },  # no such category
            {"id": 9, "image_id": 3, "category_id": 18, "bbox": [50, 50, 5, 5], "iscrowd": 0},  # outside
        ],
    }
    path = tmp_path / "annotations" / "instances.json"
    path.parent.mkdir()
    path.write_text(json.dumps(ann))
    return path


def test_coco_prepare_counts_skips_and_exact_boxes(tmp_path):
    path = _coco(tmp_path)
    source = CocoSource(
        _config(
            tmp_path,
            "coco",
            **{
                "data.path": str(path),
                "data.image_dir": str(tmp_path / "imgs"),
                "data.val_fraction": 0,
                "data.test_fraction": 0,
            },
        )
    )
    spec = source.prepare()
    assert spec.class_names == ["car", "dog"] and spec.extra["category_ids"] == [3, 18]  # sorted by id
    assert spec.counts == {"train": 3}
    assert spec.class_counts == {"train": {"car": 2, "dog": 1}}
    assert spec.extra["crowd_annotations"] == {"train": 1}
    assert spec.extra["images_without_objects"] == {"train": 1}
    why = sorted(s["reason"] for s in spec.skipped)
    assert len(why) == 5
    assert any("missing.png" in s["file"] and "not found" in s["reason"] for s in spec.skipped)
    for text in (
        "annotation 4: empty box",
        "annotation 6: image_id 42",
        "annotation 8: category_id 77",
        "annotation 9: box outside",
    ):
        assert any(r.startswith(text) for r in why), text
    a, b, c = _examples(source, spec, "train")
    # the crowd annotation stays, flagged as an ignore region (COCOeval ignores it)
    np.testing.assert_array_equal(a["boxes"], [[2, 3, 12, 8], [30, 20, 40, 30], [0, 0, 40, 30]])
    assert a["labels"].tolist() == [1, 0, 1] and a["ignore"].tolist() == [False, False, True]
    np.testing.assert_allclose(b["boxes"], [[5.5, 5, 9.5, 9]])
    assert c["boxes"].shape == (0, 4) and c["image"].shape == (H, W, 3)

    # without image_dir the images are looked for next to the JSON: all missing, nothing to train on
    with pytest.raises(Exception, match="no usable training images"):
        CocoSource(_config(tmp_path, "coco", **{"data.path": str(path)})).prepare()


# ---------------------------------------------------------------------- augmentation
def _rect_scene(size=48, box=(14, 10, 34, 26), with_mask=True):
    """A red filled rectangle covering exactly ``box`` (xyxy pixels), its mask and box."""
    x1, y1, x2, y2 = box
    image = np.zeros((size, size, 3), np.uint8)
    image[y1:y2, x1:x2, 0] = 255
    ex = {
        "image": tf.constant(image),
        "boxes": tf.constant([box], tf.float32),
        "labels": tf.constant([2], tf.int64),
    }
    if with_mask:
        mask = np.zeros((size, size, 1), np.uint8)
        mask[y1:y2, x1:x2] = 3
        ex["mask"] = tf.constant(mask)
    return ex


def _extent(binary):
    ys, xs = np.nonzero(binary)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _check_aligned(out, tol=1.5):
    """The box (when kept) hugs the rectangle's pixels, and so does the mask."""
    red = out["image"].numpy()[..., 0] >= 128
    mask = out["mask"].numpy()[..., 0]
    assert set(np.unique(mask)) <= {0, 3}  # nearest neighbour: no new labels
    boxes = out["boxes"].numpy()
    assert len(boxes) == len(out["labels"].numpy())
    if len(boxes):
        assert boxes.shape == (1, 4) and out["labels"].numpy().tolist() == [2]
        np.testing.assert_allclose(boxes[0], _extent(red), atol=tol)
        np.testing.assert_allclose(boxes[0], _extent(mask == 3), atol=tol)
    if red.any() and (mask == 3).any():
        np.testing.assert_allclose(_extent(red), _extent(mask == 3), atol=tol)
    return len(boxes)


@pytest.mark.parametrize("seed", range(8))
def test_scale_keeps_boxes_and_masks_aligned(seed):
    s = tf.constant([seed, 11], tf.int64)
    out = scale_example(_rect_scene(), (0.6, 1.6), s)
    assert out["image"].shape == (48, 48, 3) and out["mask"].shape == (48, 48, 1)
    _check_aligned(out)


@pytest.mark.parametrize("seed", range(8))
def test_crop_keeps_boxes_and_masks_aligned(seed):
    s = tf.constant([seed, 3], tf.int64)
    out = crop_example(_rect_scene(), 1.0, 0.5, s)
    assert out["image"].shape == (48, 48, 3)
    _check_aligned(out)


def test_scale_and_crop_drop_boxes_mostly_out_of_view():
    # a box in the corner: zooming in 2x around the far corner leaves little of it
    kept = [
        _check_aligned(crop_example(_rect_scene(box=(0, 0, 10, 10)), 1.0, 0.5, tf.constant([k, 1], tf.int64)))
        for k in range(20)
    ]
    assert 0 in kept and 1 in kept  # both outcomes happen over 20 seeds


@pytest.mark.parametrize("seed", range(4))
def test_flip_then_everything_keeps_alignment(seed):
    cfg = AugmentConfig(flip=True, translate=0.1, scale=[0.8, 1.25], crop=0.5, crop_min_fraction=0.6)
    _check_aligned(augment_example(_rect_scene(), cfg, tf.constant([seed, 5], tf.int64)))
    out = flip_example(_rect_scene(), tf.constant([seed, 5], tf.int64))
    _check_aligned(out, tol=0)


def test_augmentation_is_deterministic_for_a_seed():
    cfg = AugmentConfig(flip=True, translate=0.1, scale=[0.7, 1.3], crop=0.7, crop_min_fraction=0.5)
    runs = [augment_example(_rect_scene(), cfg, tf.constant([4, 2], tf.int64)) for _ in range(2)]
    for key in ("image", "mask", "boxes", "labels"):
        np.testing.assert_array_equal(runs[0][key].numpy(), runs[1][key].numpy())
    others = [
        augment_example(_rect_scene(), cfg, tf.constant([k, 2], tf.int64))["image"].numpy()
        for k in range(5, 9)
    ]
    assert any(not np.array_equal(o, runs[0]["image"].numpy()) for o in others)


def test_images_without_objects_pass_every_augmentation_and_batching():
    cfg = AugmentConfig(flip=True, translate=0.2, scale=[0.5, 1.5], crop=1.0, crop_min_fraction=0.5)
    empty = {
        "image": tf.zeros((32, 32, 3), tf.uint8),
        "boxes": tf.zeros((0, 4), tf.float32),
        "labels": tf.zeros((0,), tf.int64),
    }
    out = augment_example(empty, cfg, tf.constant([1, 2], tf.int64))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)

    def gen():
        for n in (0, 2, 0, 1):
            yield {
                "image": np.full((24, 20, 3), 90, np.uint8),
                "boxes": np.tile(np.array([[2, 2, 12, 14]], np.float32), (n, 1)),
                "labels": np.zeros(n, np.int64),
            }

    sig = {
        "image": tf.TensorSpec((24, 20, 3), tf.uint8),
        "boxes": tf.TensorSpec((None, 4), tf.float32),
        "labels": tf.TensorSpec((None,), tf.int64),
    }
    kw = dict(
        task="detection", image_size=16, batch_size=4, training=True, augment=cfg, seed=3, num_examples=4
    )
    batches = [
        [
            (x.numpy(), y["boxes"].numpy())
            for x, y in make_pipeline(tf.data.Dataset.from_generator(gen, output_signature=sig), **kw)
        ]
        for _ in range(2)
    ]
    ((images, boxes),) = batches[0]
    assert images.shape == (4, 16, 16, 3) and boxes.shape[0] == 4 and boxes.shape[2] == 4
    assert np.array_equal(batches[0][0][0], batches[1][0][0])  # same seed, same pipeline: same batch


def test_voc_through_the_training_pipeline(tmp_path):
    _voc(tmp_path / "myvoc")
    source = VocSource(_config(tmp_path, "voc", **{"data.path": str(tmp_path / "myvoc")}))
    spec = source.prepare()
    cfg = AugmentConfig(flip=True, translate=0.1, scale=[0.8, 1.2], crop=0.5)
    ds = make_pipeline(
        source.load(spec, "train"),
        task="detection",
        image_size=32,
        batch_size=3,
        training=True,
        augment=cfg,
        seed=0,
        num_examples=spec.counts["train"],
    )
    images, targets = next(iter(ds))
    assert images.shape == (3, 32, 32, 3) and targets["boxes"].shape[-1] == 4
    assert targets["labels"].shape[:1] == (3,)


def test_augment_config_is_validated():
    assert load_config(None, ["augment.scale=[0.8, 1.2]", "augment.crop=0.3"]).augment.scale == [0.8, 1.2]
    for bad, key in (
        ("augment.scale=[1.2, 0.8]", "augment.scale"),
        ("augment.scale=[0, 1]", "augment.scale"),
        ("augment.scale=[1.0]", "augment.scale"),
        ("augment.crop=1.5", "augment.crop"),
        ("augment.crop_min_fraction=0", "augment.crop_min_fraction"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


# ---------------------------------------------------------------------- prepare stage
def _prepare_run(config):
    import mlflow

    from cnn_apps.stages.prepare import prepare

    result = prepare(config)
    client = mlflow.MlflowClient(config.tracking.uri)
    run = client.get_run(result.run_id)
    return run.data.metrics, {a.path for a in client.list_artifacts(result.run_id)}


def test_prepare_logs_box_counts_and_a_sample_grid_for_shapes(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(
        None,
        tiny_overrides(
            tmp_path, task="detection", **{"data.train_size": 6, "data.val_size": 3, "data.test_size": 3}
        ),
    )
    metrics, artifacts = _prepare_run(config)
    assert {"samples.png", "class_balance.png", "dataset.json"} <= artifacts
    for split in ("train", "validation", "test"):
        per_class = [v for k, v in metrics.items() if k.startswith(f"count_{split}_")]
        assert metrics[f"boxes_{split}"] == sum(per_class) >= metrics[f"count_{split}"]  # >= 1 box per image
        assert metrics[f"images_without_objects_{split}"] == 0


def test_prepare_on_a_voc_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _voc(tmp_path / "myvoc")
    config = load_config(
        None,
        tiny_overrides(
            tmp_path, task="detection", **{"data.source": "voc", "data.path": str(tmp_path / "myvoc")}
        ),
    )
    metrics, artifacts = _prepare_run(config)
    assert {"samples.png", "skipped_records.csv"} <= artifacts
    assert metrics["boxes_train"] == 3 and metrics["count_train_dog"] == 2
    assert metrics["images_without_objects_train"] == 1 and metrics["images_without_objects_test"] == 1
    assert metrics["difficult_boxes_train"] == 1 and metrics["skipped_records"] == 5
