import numpy as np
import pytest
import tensorflow as tf

from cnn_apps.config import AugmentConfig
from cnn_apps.data.pipeline import flip_example, make_pipeline, resize_example, translate_example


def _scene(size=32):
    """An image whose red channel marks exactly the object pixels given by mask and box."""
    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size, 1), np.uint8)
    image[4:12, 18:30, 0] = 255
    mask[4:12, 18:30] = 2
    boxes = np.array([[18, 4, 30, 12]], np.float32)
    return {
        "image": tf.constant(image),
        "mask": tf.constant(mask),
        "boxes": tf.constant(boxes),
        "labels": tf.constant([1], tf.int64),
    }


def _bbox(binary):
    ys, xs = np.nonzero(binary)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("seed", range(12))
def test_flip_and_translate_keep_image_mask_and_boxes_aligned(seed):
    ex = _scene()
    s = tf.constant([seed, 7], tf.int64)
    out = translate_example(flip_example(ex, s), 0.25, s + 2)
    red = out["image"].numpy()[..., 0] > 0
    mask = out["mask"].numpy()[..., 0]
    assert np.array_equal(red, mask == 2)
    if red.any():
        kept = out["boxes"].numpy()
        visible = red.sum() / (8 * 12)
        if visible >= 0.5:
            assert kept.shape == (1, 4)
            assert list(kept[0]) == _bbox(red)
        else:
            assert kept.shape == (0, 4) and out["labels"].shape == (0,)


def test_resize_scales_boxes_and_keeps_mask_labels():
    ex = _scene(32)
    out = resize_example(ex, 64)
    assert out["image"].shape == (64, 64, 3)
    assert set(np.unique(out["mask"].numpy())) <= {0, 2}  # nearest neighbour: no new labels
    np.testing.assert_allclose(out["boxes"].numpy(), [[36, 8, 60, 24]])
    assert list(out["boxes"].numpy()[0]) == _bbox(out["mask"].numpy()[..., 0] == 2)


def _images(n=24, size=16):
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
        {
            "image": rng.integers(0, 255, (n, size, size, 3)).astype(np.uint8),
            "label": np.arange(n, dtype=np.int64) % 3,
        }
    )


def _epoch(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_seeded_pipeline_is_deterministic_and_epochs_differ():
    kw = dict(
        task="classification",
        image_size=16,
        batch_size=8,
        training=True,
        augment=AugmentConfig(flip=True, translate=0.2),
        seed=5,
        num_examples=24,
    )
    a = make_pipeline(_images(), **kw)
    b = make_pipeline(_images(), **kw)
    first_a, second_a = _epoch(a), _epoch(a)
    first_b = _epoch(b)
    for (xa, ya), (xb, yb) in zip(first_a, first_b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert any(not np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(first_a, second_a))
    x, y = first_a[0]
    assert x.dtype == np.float32 and x.shape == (8, 16, 16, 3) and y.shape == (8,)


def test_evaluation_pipeline_keeps_order_and_pixels():
    ds = make_pipeline(
        _images(), task="classification", image_size=16, batch_size=10, training=False, num_examples=24
    )
    labels = np.concatenate([y for _, y in _epoch(ds)])
    assert list(labels) == [i % 3 for i in range(24)]


def test_detection_batches_pad_with_minus_one():
    def gen():
        for n in (1, 3, 0):
            yield {
                "image": np.zeros((16, 16, 3), np.uint8),
                "boxes": np.tile(np.array([[1, 1, 5, 5]], np.float32), (n, 1)),
                "labels": np.zeros(n, np.int64),
            }

    sig = {
        "image": tf.TensorSpec((16, 16, 3), tf.uint8),
        "boxes": tf.TensorSpec((None, 4), tf.float32),
        "labels": tf.TensorSpec((None,), tf.int64),
    }
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    images, targets = next(
        iter(make_pipeline(ds, task="detection", image_size=16, batch_size=3, training=False, num_examples=3))
    )
    assert targets["boxes"].shape == (3, 3, 4) and targets["labels"].shape == (3, 3)
    assert targets["labels"].numpy()[0].tolist() == [0, -1, -1]
    assert targets["labels"].numpy()[2].tolist() == [-1, -1, -1]  # an image without objects
