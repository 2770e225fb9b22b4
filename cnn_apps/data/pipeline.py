"""tf.data input pipelines: resize, cache, shuffle, augment, batch, prefetch.

Elements come from :mod:`cnn_apps.data.sources` as dicts; the pipeline yields what
``model.fit`` takes, with images as float32 raw pixels (0..255, the model does its
own scaling):

* classification: ``(images (B, S, S, C), labels (B,))``;
* detection: ``(images, {"boxes": (B, N, 4), "labels": (B, N)})``, boxes xyxy
  pixels, padded with -1; with region proposals (``proposals=`` (N, P, 4), Fast
  R-CNN) the inputs are ``{"images": (B, S, S, C), "proposals": (B, P, 4)}``;
* segmentation: ``(images, masks (B, S, S, 1) uint8)``.

Detection elements may flag objects as ignore regions (``ignore`` (N,) bool: VOC difficult,
COCO crowd). Training targets leave them out. An evaluation pipeline (``keep_source=True``)
keeps them and adds what scoring at the source resolution needs; its targets are

* detection: ``{"boxes", "labels"`` (every object, at the model size), ``"ignore"`` (B, N)
  bool, ``"source_boxes"`` (B, N, 4) xyxy pixels of the original image, ``"source_size"``
  (B, 2) int32 its (height, width)``}``;
* segmentation: ``{"mask"`` (B, S, S, 1), ``"source_mask"`` (B, H, W, 1) the original masks
  padded with 255 to the batch's largest, ``"source_size"`` (B, 2)``}``.

Masks are resized with nearest neighbour only; boxes are scaled, flipped, shifted,
cropped, clipped and dropped together with their images, so targets stay aligned
(augmentations: flip, random crop, scale jitter, translation; see
:class:`~cnn_apps.config.AugmentConfig`). Images without objects pass through all.
Proposals (the element key ``proposals``, (P, 4) xyxy pixels, -1 rows padding) move
like boxes but are never dropped: they are clipped to the image, and one left without
area becomes a padding row, so every image keeps P rows.
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
    sx = tf.cast(size, tf.float32) / tf.cast(w, tf.float32)
    sy = tf.cast(size, tf.float32) / tf.cast(h, tf.float32)
    if "boxes" in ex:
        out["boxes"] = ex["boxes"] * tf.stack([sx, sy, sx, sy])
    if "proposals" in ex:
        out["proposals"] = _place_proposals(ex["proposals"] * tf.stack([sx, sy, sx, sy]), size, size)
    return out


def _place_proposals(moved, w, h):
    """Clip moved (P, 4) proposals to the (h, w) image; rows left without width or height
    (pushed outside, or padding all along) become -1 padding rows. None is dropped."""
    wf, hf = tf.cast(w, tf.float32), tf.cast(h, tf.float32)
    clipped = tf.stack(
        [
            tf.clip_by_value(moved[:, 0], 0.0, wf),
            tf.clip_by_value(moved[:, 1], 0.0, hf),
            tf.clip_by_value(moved[:, 2], 0.0, wf),
            tf.clip_by_value(moved[:, 3], 0.0, hf),
        ],
        1,
    )
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return tf.where(keep[:, None], clipped, -tf.ones_like(clipped))


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
    if "proposals" in ex:
        w = tf.shape(ex["image"])[1]
        p = ex["proposals"]
        wf = tf.cast(w, tf.float32)
        flipped = _place_proposals(
            tf.stack([wf - p[:, 2], p[:, 1], wf - p[:, 0], p[:, 3]], axis=1), w, tf.shape(ex["image"])[0]
        )
        out["proposals"] = tf.cond(do, lambda: flipped, lambda: p)
    return out


def _place_boxes(out: dict, ex: dict, moved, w, h, min_visible: float) -> dict:
    """Clip ``moved`` (N, 4) boxes to the (h, w) image; drop, with their labels, those
    keeping less than ``min_visible`` of their (unclipped) area or left without width or height."""
    wf, hf = tf.cast(w, tf.float32), tf.cast(h, tf.float32)
    clipped = tf.stack(
        [
            tf.clip_by_value(moved[:, 0], 0.0, wf),
            tf.clip_by_value(moved[:, 1], 0.0, hf),
            tf.clip_by_value(moved[:, 2], 0.0, wf),
            tf.clip_by_value(moved[:, 3], 0.0, hf),
        ],
        1,
    )
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (cw > 0) & (ch > 0) & (cw * ch >= min_visible * area)
    out["boxes"] = tf.boolean_mask(clipped, keep)
    out["labels"] = tf.boolean_mask(ex["labels"], keep)
    return out


def _resize(x, size, nearest: bool):
    """Resize an (H, W, C) image (bilinear, rounded back to its dtype) or mask (nearest)."""
    if nearest:
        return tf.image.resize(x, size, method="nearest")
    resized = tf.image.resize(x, size, method="bilinear", antialias=True)
    return tf.saturate_cast(tf.round(resized), x.dtype)


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
        return padded[oy : oy + h, ox : ox + w]

    out = dict(ex)
    out["image"] = tf.ensure_shape(shift(image), image.shape)
    if "mask" in ex:
        out["mask"] = tf.ensure_shape(shift(ex["mask"]), ex["mask"].shape)
    if "boxes" in ex:
        dx = tf.cast(pad_x - ox, tf.float32)
        dy = tf.cast(pad_y - oy, tf.float32)
        out = _place_boxes(out, ex, ex["boxes"] + tf.stack([dx, dy, dx, dy]), w, h, min_visible)
    if "proposals" in ex:
        dx, dy = tf.cast(pad_x - ox, tf.float32), tf.cast(pad_y - oy, tf.float32)
        out["proposals"] = _place_proposals(ex["proposals"] + tf.stack([dx, dy, dx, dy]), w, h)
    return out


def scale_example(ex: dict, scale_range, seed, min_visible: float = 0.5) -> dict:
    """Zoom by a factor drawn from ``scale_range`` ``(low, high)``, keeping the (H, W) size.

    The image is resized by the factor (mask: nearest neighbour), then a zoomed-in
    image (factor > 1) is cropped and a zoomed-out one (factor < 1) zero-padded back
    to (H, W), at a random offset. Boxes are scaled and shifted the same way, clipped,
    and dropped with their labels when less than ``min_visible`` of them stays in view.
    """
    image = ex["image"]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    lo, hi = float(scale_range[0]), float(scale_range[1])
    factor = tf.random.stateless_uniform((), seed=seed, minval=lo, maxval=hi) if hi > lo else tf.constant(lo)
    nh = tf.maximum(tf.cast(tf.round(tf.cast(h, tf.float32) * factor), tf.int32), 1)
    nw = tf.maximum(tf.cast(tf.round(tf.cast(w, tf.float32) * factor), tf.int32), 1)

    def offset(room, s):  # where the resized image's top-left lands: [min(0, room), max(0, room)]
        u = tf.random.stateless_uniform((), seed=s)
        return tf.minimum(room, 0) + tf.cast(tf.floor(u * tf.cast(tf.abs(room) + 1, tf.float32)), tf.int32)

    ty, tx = offset(h - nh, seed + 1), offset(w - nw, seed + 2)

    def place(x, nearest):
        resized = _resize(x, tf.stack([nh, nw]), nearest)
        padded = tf.pad(
            resized,
            [
                [tf.maximum(ty, 0), tf.maximum(h - nh - ty, 0)],
                [tf.maximum(tx, 0), tf.maximum(w - nw - tx, 0)],
                [0, 0],
            ],
        )
        y0, x0 = tf.maximum(-ty, 0), tf.maximum(-tx, 0)
        return padded[y0 : y0 + h, x0 : x0 + w]

    out = dict(ex)
    out["image"] = tf.ensure_shape(place(image, False), image.shape)
    if "mask" in ex:
        out["mask"] = tf.ensure_shape(place(ex["mask"], True), ex["mask"].shape)
    if "boxes" in ex:
        sx = tf.cast(nw, tf.float32) / tf.cast(w, tf.float32)
        sy = tf.cast(nh, tf.float32) / tf.cast(h, tf.float32)
        dx, dy = tf.cast(tx, tf.float32), tf.cast(ty, tf.float32)
        moved = ex["boxes"] * tf.stack([sx, sy, sx, sy]) + tf.stack([dx, dy, dx, dy])
        out = _place_boxes(out, ex, moved, w, h, min_visible)
    if "proposals" in ex:
        sx = tf.cast(nw, tf.float32) / tf.cast(w, tf.float32)
        sy = tf.cast(nh, tf.float32) / tf.cast(h, tf.float32)
        dx, dy = tf.cast(tx, tf.float32), tf.cast(ty, tf.float32)
        out["proposals"] = _place_proposals(
            ex["proposals"] * tf.stack([sx, sy, sx, sy]) + tf.stack([dx, dy, dx, dy]), w, h
        )
    return out


def crop_example(ex: dict, probability: float, min_fraction: float, seed, min_visible: float = 0.5) -> dict:
    """With ``probability``, crop a random window whose side is a fraction in
    ``[min_fraction, 1]`` of the image's (the same for height and width, so the aspect
    ratio stays) and resize it back to (H, W) (mask: nearest neighbour).

    Boxes are shifted into the window, scaled, clipped, and dropped with their labels
    when less than ``min_visible`` of their area stays inside it.
    """
    image = ex["image"]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    do = tf.random.stateless_uniform((), seed=seed) < probability
    frac = tf.random.stateless_uniform((), seed=seed + 1, minval=min_fraction, maxval=1.0)
    ch = tf.clip_by_value(tf.cast(tf.round(tf.cast(h, tf.float32) * frac), tf.int32), 1, h)
    cw = tf.clip_by_value(tf.cast(tf.round(tf.cast(w, tf.float32) * frac), tf.int32), 1, w)
    y0 = tf.random.stateless_uniform((), seed=seed + 2, minval=0, maxval=h - ch + 1, dtype=tf.int32)
    x0 = tf.random.stateless_uniform((), seed=seed + 3, minval=0, maxval=w - cw + 1, dtype=tf.int32)

    def crop(x, nearest):
        return _resize(x[y0 : y0 + ch, x0 : x0 + cw], tf.stack([h, w]), nearest)

    def cropped():
        out = dict(ex)
        out["image"] = tf.ensure_shape(crop(image, False), image.shape)
        if "mask" in ex:
            out["mask"] = tf.ensure_shape(crop(ex["mask"], True), ex["mask"].shape)
        if "boxes" in ex:
            sx = tf.cast(w, tf.float32) / tf.cast(cw, tf.float32)
            sy = tf.cast(h, tf.float32) / tf.cast(ch, tf.float32)
            dx, dy = tf.cast(x0, tf.float32), tf.cast(y0, tf.float32)
            moved = (ex["boxes"] - tf.stack([dx, dy, dx, dy])) * tf.stack([sx, sy, sx, sy])
            out = _place_boxes(out, ex, moved, w, h, min_visible)
        if "proposals" in ex:
            sx = tf.cast(w, tf.float32) / tf.cast(cw, tf.float32)
            sy = tf.cast(h, tf.float32) / tf.cast(ch, tf.float32)
            dx, dy = tf.cast(x0, tf.float32), tf.cast(y0, tf.float32)
            moved = (ex["proposals"] - tf.stack([dx, dy, dx, dy])) * tf.stack([sx, sy, sx, sy])
            out["proposals"] = _place_proposals(moved, w, h)
        return out

    return tf.cond(do, cropped, lambda: dict(ex))


def augment_example(ex: dict, cfg: AugmentConfig, seed) -> dict:
    """All training augmentations for one example; ``seed`` is a (2,) int64 tensor.

    Order: flip, crop, scale, translate; each draws from its own offset of ``seed``.
    """
    if cfg.flip:
        ex = flip_example(ex, seed)
    if cfg.crop > 0:
        ex = crop_example(ex, cfg.crop, cfg.crop_min_fraction, seed + 20)
    if list(cfg.scale) != [1.0, 1.0]:
        ex = scale_example(ex, cfg.scale, seed + 10)
    if cfg.translate > 0:
        ex = translate_example(ex, cfg.translate, seed + 2)
    return ex


# ---------------------------------------------------------------------- datasets
def drop_ignored(ex: dict) -> dict:
    """The example without its ignore regions (objects flagged ``ignore``): training targets."""
    if "ignore" not in ex:
        return ex
    keep = tf.logical_not(tf.cast(ex["ignore"], tf.bool))
    out = {k: v for k, v in ex.items() if k != "ignore"}
    out["boxes"] = tf.boolean_mask(ex["boxes"], keep)
    out["labels"] = tf.boolean_mask(ex["labels"], keep)
    return out


def with_source(ex: dict) -> dict:
    """Before the resize: keep the original (height, width), boxes or mask, and ignore flags
    (all False when the source has none) for scoring at the source resolution."""
    out = dict(ex)
    out["source_size"] = tf.shape(ex["image"])[:2]
    if "boxes" in ex:
        out["source_boxes"] = ex["boxes"]
        if "ignore" not in ex:
            out["ignore"] = tf.zeros(tf.shape(ex["labels"]), tf.bool)
        out["ignore"] = tf.cast(out["ignore"], tf.bool)
    if "mask" in ex:
        out["source_mask"] = ex["mask"]
    return out


_EVALUATION_KEYS = ("ignore", "source_boxes", "source_size", "source_mask")


def _to_model_inputs(task: str):
    def convert(batch):
        images = tf.cast(batch["image"], tf.float32)
        extra = {k: batch[k] for k in _EVALUATION_KEYS if k in batch}
        if task == "classification":
            return images, batch["label"]
        if task == "detection":
            targets = {"boxes": batch["boxes"], "labels": batch["labels"], **extra}
            if "proposals" in batch:
                return {"images": images, "proposals": batch["proposals"]}, targets
            return images, targets
        if extra:
            return images, {"mask": batch["mask"], **extra}
        return images, batch["mask"]

    return convert


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches in one epoch of ``num_examples``."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def estimated_bytes(num_examples: int, size: int, channels: int) -> int:
    return num_examples * size * size * channels


def make_pipeline(
    ds: tf.data.Dataset,
    *,
    task: str,
    image_size: int,
    batch_size: int,
    training: bool,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    num_examples: int | None = None,
    channels: int = 3,
    cache: bool = True,
    drop_remainder: bool = False,
    proposals=None,
    epochs: tuple[int, int] | None = None,
    keep_source: bool = False,
) -> tf.data.Dataset:
    """Turn a source's split into batches for ``fit`` / ``evaluate`` / ``predict``.

    ``training`` switches on shuffling and augmentation. The decoded, resized
    examples are cached in memory when ``cache`` is set and they fit in
    :data:`CACHE_LIMIT_BYTES`; then each epoch only augments and batches.
    ``proposals`` (detection): (N, P, 4) float32 xyxy pixels at ``image_size`` (-1 rows
    padding), one row block per example of ``ds`` in its order; they join each example
    after the resize and travel with it (see the module docstring).
    ``epochs`` (training): ``(first, end)`` makes one stream of the epochs first..end-1, each
    shuffled and augmented with seeds drawn from (``seed``, its epoch number) and batched on its
    own (feed it to ``fit`` with ``steps_per_epoch`` = :func:`steps_per_epoch`). An epoch's data
    then depends on its number alone, so a run resumed at epoch k sees what an uninterrupted
    run saw there. Without it, each new iterator reshuffles (Keras' fit makes one per epoch).
    ``keep_source`` (evaluation, not with ``training``): the targets keep the ignore regions
    flagged and carry the source-resolution truth (see the module docstring); otherwise
    detection targets leave the ignore regions out.
    """
    if keep_source:
        if training:
            raise ValueError("keep_source is for evaluation pipelines (training=False)")
        if task not in ("detection", "segmentation"):
            raise ValueError(f"keep_source is for detection and segmentation, not {task}")
        ds = ds.map(with_source, num_parallel_calls=AUTOTUNE)
    elif task == "detection":
        ds = ds.map(drop_ignored, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda ex: resize_example(ex, image_size), num_parallel_calls=AUTOTUNE)
    if proposals is not None:
        import numpy as np

        from cnn_apps.errors import DataError

        proposals = np.asarray(proposals, np.float32)
        if proposals.ndim != 3 or proposals.shape[-1] != 4:
            raise DataError(f"proposals must be (N, P, 4) xyxy pixels, got shape {proposals.shape}")
        if num_examples is not None and len(proposals) != num_examples:
            raise DataError(
                f"{len(proposals)} proposal sets for {num_examples} examples: the proposal cache "
                "does not belong to this split; delete it to recompute"
            )
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(proposals)).map(
            lambda ex, p: {**ex, "proposals": p}, num_parallel_calls=AUTOTUNE
        )
    if (
        cache
        and num_examples is not None
        and estimated_bytes(num_examples, image_size, channels) <= CACHE_LIMIT_BYTES
    ):
        ds = ds.cache()
    buffer = min(num_examples or 10_000, 10_000)

    def shuffled(d, epoch_seed, reshuffle):
        d = d.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=reshuffle)
        if augment is not None and augment.active:
            seeds = tf.data.Dataset.random(seed=epoch_seed, rerandomize_each_iteration=reshuffle).batch(2)
            d = tf.data.Dataset.zip(d, seeds).map(
                lambda ex, s: augment_example(ex, augment, s), num_parallel_calls=AUTOTUNE
            )
        return d

    def batched(d):
        if task == "detection":
            padding = {"image": tf.constant(0, tf.uint8), "boxes": -1.0, "labels": tf.constant(-1, tf.int64)}
            if proposals is not None:
                padding["proposals"] = -1.0
            if keep_source:
                padding.update(ignore=False, source_boxes=-1.0, source_size=0)
            return d.padded_batch(batch_size, padding_values=padding, drop_remainder=drop_remainder)
        if keep_source:  # original masks of several sizes: padded with the ignore label
            padding = {
                "image": tf.constant(0, d.element_spec["image"].dtype),
                "mask": tf.constant(0, tf.uint8),
                "source_mask": tf.constant(255, tf.uint8),
                "source_size": 0,
            }
            return d.padded_batch(batch_size, padding_values=padding, drop_remainder=drop_remainder)
        return d.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)

    if training and epochs is not None:
        if num_examples is None:
            raise ValueError("an epoch stream needs num_examples (the steps of each epoch)")
        # one dataset per epoch with Python-int seeds (TF's seed handling rejects a seed tensor
        # once a global seed is set), concatenated; each is iterated once, so no reshuffling
        parts = [batched(shuffled(ds, seed * 1_000_003 + epoch, False)) for epoch in range(*epochs)]
        ds = parts[0] if parts else batched(ds.take(0))  # nothing left: a run killed after its last epoch
        for part in parts[1:]:
            ds = ds.concatenate(part)
    else:
        ds = batched(shuffled(ds, seed, True) if training else ds)
    ds = ds.map(_to_model_inputs(task), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # every map above is seeded; order must not depend on timing
    return ds.with_options(options).prefetch(AUTOTUNE)
