"""tf.data input pipelines: resize, cache, shuffle, augment, batch, prefetch.

Elements come from :mod:`cnn_apps.data.sources` as dicts; the pipeline yields what
``model.fit`` takes, with images as float32 raw pixels (0..255, the model does its
own scaling):

* classification: ``(images (B, S, S, C), labels (B,))``;
* detection: ``(images, {"boxes": (B, N, 4), "labels": (B, N)})``, boxes xyxy
  pixels, padded with -1;
* segmentation: ``(images, masks (B, S, S, 1) uint8)``.

Masks are resized with nearest neighbour only; boxes are scaled, flipped, shifted,
clipped and dropped together with their images, so targets stay aligned.
Augmentation draws its randomness from ``tf.data.Dataset.random(seed)``, so a seed
fixes every epoch's augmentations while each epoch still differs.
"""

from __future__ import annotations

import tensorflow as tf

from cnn_apps.config import AugmentConfig

AUTOTUNE = tf.data.AUTOTUNE
CACHE_LIMIT_BYTES = 2 * 1024**3  # cache decoded images in memory up to this size


# ---------------------------------------------------------------------- element transforms
def resize_example(ex: dict, size: int) -> dict:
    """Resize one example to (size, size): image bilinear, mask nearest, boxes scaled."""
    image = ex["image"]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    out = dict(ex)
    if image.shape[0] == size and image.shape[1] == size:
        return out
    resized = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    out["image"] = tf.saturate_cast(tf.round(resized), image.dtype)
    if "mask" in ex:
        out["mask"] = tf.image.resize(ex["mask"], (size, size), method="nearest")
    if "boxes" in ex:
        sx = tf.cast(size, tf.float32) / tf.cast(w, tf.float32)
        sy = tf.cast(size, tf.float32) / tf.cast(h, tf.float32)
        out["boxes"] = ex["boxes"] * tf.stack([sx, sy, sx, sy])
    return out


def flip_example(ex: dict, seed) -> dict:
    """Flip left-right with probability 1/2 (stateless: the same seed, the same choice)."""
    do = tf.random.stateless_uniform((), seed=seed) < 0.5
    out = dict(ex)
    out["image"] = tf.cond(do, lambda: tf.image.flip_left_right(ex["image"]), lambda: ex["image"])
    if "mask" in ex:
        out["mask"] = tf.cond(do, lambda: tf.image.flip_left_right(ex["mask"]), lambda: ex["mask"])
    if "boxes" in ex:
        w = tf.cast(tf.shape(ex["image"])[1], tf.float32)
        b = ex["boxes"]
        flipped = tf.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
        out["boxes"] = tf.cond(do, lambda: flipped, lambda: b)
    return out


def translate_example(ex: dict, max_fraction: float, seed, min_visible: float = 0.5) -> dict:
    """Shift by up to ``max_fraction`` of the side (zero padding, then a crop).

    Boxes are shifted and clipped; a box keeping less than ``min_visible`` of its
    area is dropped with its label, as are boxes left with no width or height.
    """
    image = ex["image"]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    pad_y = tf.cast(tf.round(tf.cast(h, tf.float32) * max_fraction), tf.int32)
    pad_x = tf.cast(tf.round(tf.cast(w, tf.float32) * max_fraction), tf.int32)
    oy = tf.random.stateless_uniform((), seed=seed, minval=0, maxval=2 * pad_y + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform((), seed=seed + 1, minval=0, maxval=2 * pad_x + 1, dtype=tf.int32)

    def shift(x):
        padded = tf.pad(x, [[pad_y, pad_y], [pad_x, pad_x], [0, 0]])
        return padded[oy:oy + h, ox:ox + w]

    out = dict(ex)
    out["image"] = tf.ensure_shape(shift(image), image.shape)
    if "mask" in ex:
        out["mask"] = tf.ensure_shape(shift(ex["mask"]), ex["mask"].shape)
    if "boxes" in ex:
        b = ex["boxes"]
        dx = tf.cast(pad_x - ox, tf.float32)
        dy = tf.cast(pad_y - oy, tf.float32)
        moved = b + tf.stack([dx, dy, dx, dy])
        wf, hf = tf.cast(w, tf.float32), tf.cast(h, tf.float32)
        clipped = tf.stack([tf.clip_by_value(moved[:, 0], 0.0, wf), tf.clip_by_value(moved[:, 1], 0.0, hf),
                            tf.clip_by_value(moved[:, 2], 0.0, wf), tf.clip_by_value(moved[:, 3], 0.0, hf)], 1)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (cw > 0) & (ch > 0) & (cw * ch >= min_visible * area)
        out["boxes"] = tf.boolean_mask(clipped, keep)
        out["labels"] = tf.boolean_mask(ex["labels"], keep)
    return out


def augment_example(ex: dict, cfg: AugmentConfig, seed) -> dict:
    """All training augmentations for one example; ``seed`` is a (2,) int64 tensor."""
    if cfg.flip:
        ex = flip_example(ex, seed)
    if cfg.translate > 0:
        ex = translate_example(ex, cfg.translate, seed + 2)
    return ex


# ---------------------------------------------------------------------- datasets
def _to_model_inputs(task: str):
    def convert(batch):
        images = tf.cast(batch["image"], tf.float32)
        if task == "classification":
            return images, batch["label"]
        if task == "detection":
            return images, {"boxes": batch["boxes"], "labels": batch["labels"]}
        return images, batch["mask"]

    return convert


def estimated_bytes(num_examples: int, size: int, channels: int) -> int:
    return num_examples * size * size * channels


def make_pipeline(ds: tf.data.Dataset, *, task: str, image_size: int, batch_size: int,
                  training: bool, augment: AugmentConfig | None = None, seed: int = 0,
                  num_examples: int | None = None, channels: int = 3, cache: bool = True,
                  drop_remainder: bool = False) -> tf.data.Dataset:
    """Turn a source's split into batches for ``fit`` / ``evaluate`` / ``predict``.

    ``training`` switches on shuffling and augmentation. The decoded, resized
    examples are cached in memory when ``cache`` is set and they fit in
    :data:`CACHE_LIMIT_BYTES`; then each epoch only augments and batches.
    """
    ds = ds.map(lambda ex: resize_example(ex, image_size), num_parallel_calls=AUTOTUNE)
    if cache and num_examples is not None and \
            estimated_bytes(num_examples, image_size, channels) <= CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(num_examples or 10_000, 10_000), seed=seed, reshuffle_each_iteration=True)
        if augment is not None and (augment.flip or augment.translate > 0):
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip(ds, seeds).map(
                lambda ex, s: augment_example(ex, augment, s), num_parallel_calls=AUTOTUNE)
    if task == "detection":
        ds = ds.padded_batch(batch_size, padding_values={"image": tf.constant(0, tf.uint8),
                                                         "boxes": -1.0, "labels": tf.constant(-1, tf.int64)},
                             drop_remainder=drop_remainder)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    ds = ds.map(_to_model_inputs(task), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # every map above is seeded; order must not depend on timing
    return ds.with_options(options).prefetch(AUTOTUNE)
