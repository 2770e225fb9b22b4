import numpy as np
import pytest

from cnn_apps.data.shapes import CLASS_NAMES, make_scene


def test_same_arguments_same_bytes():
    a = make_scene(3, "train", 7, 48, "detection")
    b = make_scene(3, "train", 7, 48, "detection")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    c = make_scene(3, "validation", 7, 48, "detection")
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_boxes_are_tight_around_each_objects_mask(task):
    for i in range(40):
        s = make_scene(0, "train", i, 64, task, max_objects=4)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.boxes.dtype == np.float32 and s.boxes.shape == (len(s.labels), 4)
        assert 1 <= len(s.labels) <= 4
        for box, label in zip(s.boxes, s.labels):
            x1, y1, x2, y2 = box.astype(int)
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            inside = s.mask[y1:y2, x1:x2] == label + 1
            # tight: the object's pixels touch all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # every labelled pixel lies in a box of its class (objects do not overlap)
        ys, xs = np.nonzero(s.mask)
        for y, x in zip(ys, xs):
            k = s.mask[y, x] - 1
            assert any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in s.boxes[s.labels == k])


def test_classification_has_one_shape_and_every_class_appears():
    labels = [int(make_scene(0, "train", i, 32).labels[0]) for i in range(60)]
    assert set(labels) == set(range(len(CLASS_NAMES)))


def test_colour_does_not_give_the_class_away():
    means = {k: [] for k in range(len(CLASS_NAMES))}
    for i in range(200):
        s = make_scene(0, "train", i, 32)
        means[int(s.labels[0])].append(s.image[s.mask > 0].mean(axis=0))
    centres = np.array([np.mean(v, axis=0) for v in means.values()])
    assert np.ptp(centres, axis=0).max() < 40  # per-class mean colours are close together


def test_tfds_builder_counts_features_and_reuse(tmp_path):
    from cnn_apps.data.shapes_tfds import prepare_builder, shapes_builder

    kw = dict(image_size=32, train_size=12, val_size=4, test_size=4, max_objects=3, seed=1)
    builder = shapes_builder("detection", tmp_path, "fp1", **kw)
    assert prepare_builder(builder) is True
    assert builder.info.splits["train"].num_examples == 12
    ex = next(iter(builder.as_dataset(split="train")))
    assert ex["image"].shape == (32, 32, 3)
    assert ex["boxes"].shape[1] == 4 and ex["boxes"].shape[0] == ex["labels"].shape[0]
    again = shapes_builder("detection", tmp_path, "fp1", **kw)
    assert prepare_builder(again) is False  # same fingerprint: reused, not rebuilt
    other = shapes_builder("detection", tmp_path / "other", "fp1", **kw)
    prepare_builder(other)
    a = sorted(
        (int(e["labels"].shape[0]), e["image"].numpy().tobytes()) for e in builder.as_dataset(split="train")
    )
    b = sorted(
        (int(e["labels"].shape[0]), e["image"].numpy().tobytes()) for e in other.as_dataset(split="train")
    )
    assert a == b  # deterministic build


def test_tfds_segmentation_masks(tmp_path):
    from cnn_apps.data.shapes_tfds import prepare_builder, shapes_builder

    builder = shapes_builder(
        "segmentation",
        tmp_path,
        "fp",
        image_size=32,
        train_size=4,
        val_size=2,
        test_size=2,
        max_objects=3,
        seed=0,
    )
    prepare_builder(builder)
    for ex in builder.as_dataset(split="train"):
        mask = ex["mask"].numpy()
        assert mask.shape == (32, 32, 1) and mask.max() <= len(CLASS_NAMES)
