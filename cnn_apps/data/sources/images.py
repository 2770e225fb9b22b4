"""Image files: which ones the training pipeline can decode (checked once, at prepare, so a
bad file is skipped and named), decoding them in tf.data, and converting channels."""

from __future__ import annotations

import re
from pathlib import Path

from cnn_apps.data.sources.base import _tf
from cnn_apps.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


# the formats tf.io.decode_image reads, as PIL names them (MPO: a camera's multi-picture JPEG)
_TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")


def _image_size(path: Path):
    """``((width, height), None)`` for an image file that the training pipeline can decode,
    else ``(None, reason)``: missing, empty, not an image, corrupt or truncated, or a format
    (or a BMP/GIF variant) TensorFlow does not read."""
    if not path.is_file():
        return None, "image file not found"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return (
            None,
            f"not an image file (extension {path.suffix or 'none'}; use {', '.join(IMAGE_EXTENSIONS)})",
        )
    if path.stat().st_size == 0:
        return None, "empty file (0 bytes)"
    from PIL import Image

    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
            if fmt == "JPEG":  # decode at 1/8 scale: every byte is still read, 10x faster
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except Exception as exc:  # PIL raises many kinds for a broken file
        return None, f"cannot be decoded ({exc}): corrupt or truncated; re-save or remove it"
    if fmt not in _TF_FORMATS:
        return None, f"a {fmt} file: TensorFlow reads JPEG, PNG, GIF and BMP; convert it to PNG"
    if fmt in ("GIF", "BMP"):  # variants PIL reads and TensorFlow does not (1-bit, RLE BMPs)
        tf = _tf()
        try:
            tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
        except tf.errors.OpError as exc:
            why = re.sub(r"\{\{.*?\}\}|\[Op:.*|name:.*", "", str(exc.message).strip().splitlines()[0]).strip()
            return None, f"TensorFlow cannot decode this {fmt} ({why}); convert it to PNG"
    return (int(size[0]), int(size[1])), None


def decode_image_file(path, channels: int):
    """The tf.data decoder of every file source: (H, W, ``channels``) uint8 from a JPEG, PNG,
    GIF or BMP file; grey, palette, grey+alpha and RGBA images are converted, 16-bit PNGs
    scaled to 8 bits. TensorFlow's BMP and GIF decoders give no single channel: those are
    decoded as RGB and made grey here."""
    tf = _tf()
    contents = tf.io.read_file(path)
    if channels != 1:
        return tf.io.decode_image(contents, channels=channels, expand_animations=False)
    rgb_only = tf.logical_or(
        tf.equal(tf.strings.substr(contents, 0, 2), "BM"), tf.equal(tf.strings.substr(contents, 0, 3), "GIF")
    )

    def grey_from_rgb():
        rgb = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(rgb, tf.float32))), tf.uint8)

    image = tf.cond(
        rgb_only, grey_from_rgb, lambda: tf.io.decode_image(contents, channels=1, expand_animations=False)
    )
    return tf.ensure_shape(image, [None, None, 1])


def set_channels(image, channels: int):
    """Convert an image tensor (H, W, c) to ``channels`` (1 or 3)."""
    tf = _tf()
    have = image.shape[-1]
    if have == channels or channels is None:
        return image
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(image)
    if have == 3 and channels == 1:
        return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), image.dtype)
    raise DataError(f"cannot convert {have}-channel images to {channels} channels")
