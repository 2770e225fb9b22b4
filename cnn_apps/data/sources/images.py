"""Image files: which ones the training pipeline can decode (checked once, at prepare, so a
bad file is skipped and named), decoding them in tf.data, and converting channels.

Two guards run at prepare, on every file source (folder, voc, coco, masks), and in
``cnn-apps predict``:

* **Pixel limit.** The header's width x height is read first (PIL opens lazily: nothing is
  decoded) and an image of more than ``data.max_image_pixels`` pixels is skipped and named
  before any decoding (a decompression bomb: a tiny file whose header claims a huge image).
  PIL's own guard (a warning above 89 MP, an error above 179 MP) is switched off while
  these files are read, so the limit is ours alone and is reported like any bad record.
* **EXIF orientation.** A camera stores a portrait photo as landscape pixels plus an EXIF
  ``Orientation`` tag (1..8); viewers and annotation tools (LabelImg, CVAT, the COCO
  annotator) show it upright, and ``tf.io.decode_image`` ignores the tag. Prepare reads the
  tag, the manifest keeps it per record (only when it is not 1), and the tf.data decoder
  turns the pixels upright (:func:`orient`), as PIL's ``ImageOps.exif_transpose`` does. The
  size a source checks and records is the upright one, so VOC/COCO boxes and segmentation
  masks are taken to be in upright coordinates: the image is turned, never the boxes. An
  annotation whose size matches the stored (unturned) pixels instead is skipped, saying so.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cnn_apps.config import DataConfig
from cnn_apps.data.sources.base import _tf
from cnn_apps.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

DEFAULT_MAX_IMAGE_PIXELS = DataConfig.max_image_pixels

# the formats tf.io.decode_image reads, as PIL names them (MPO: a camera's multi-picture JPEG)
_TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")

EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2..8 mirrored and/or turned (see orient)
_TURNED = (5, 6, 7, 8)  # orientations that swap width and height


class ImageInfo(NamedTuple):
    """What prepare learns of a readable image file."""

    size: tuple  # (width, height) upright: as viewers and annotation tools show it
    orientation: int  # EXIF orientation 1..8 (1: the stored pixels are upright)
    stored: tuple  # (width, height) of the stored pixels


def too_many_pixels(size, max_pixels, setting="data.max_image_pixels", use="train on") -> str | None:
    """The reason an image of ``size`` (width, height) is refused, or None when it is within
    ``max_pixels`` (0 or None: no limit)."""
    width, height = (int(v) for v in size)
    if not max_pixels or width * height <= max_pixels:
        return None
    return (
        f"{width}x{height} = {width * height:,} pixels > {setting} {max_pixels:,} (a decompression bomb "
        f"or an image too large to {use}); raise the limit if you trust it"
    )


_PIL_GUARD = threading.RLock()


@contextlib.contextmanager
def pil_without_bomb_guard():
    """PIL's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``: a warning above 89 MP,
    an error above 179 MP) switched off for the block, which checks the header size against
    its own limit (:func:`too_many_pixels`) before decoding anything."""
    from PIL import Image

    with _PIL_GUARD, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def exif_orientation(image) -> int:
    """The EXIF orientation (1..8) of an open PIL image; 1 when it has none, or a broken or
    unknown one (as browsers do)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: the pixels themselves are fine
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(size, orientation: int) -> tuple:
    """(width, height) of the stored pixels ``size`` once turned upright."""
    return (size[1], size[0]) if orientation in _TURNED else (size[0], size[1])


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels (H, W, ...) turned upright for an EXIF ``orientation`` (NumPy;
    what PIL's ``ImageOps.exif_transpose`` does)."""
    turn = {
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: np.rot90(a, 2),
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: np.swapaxes(a, 0, 1),  # transposed
        6: lambda a: np.rot90(a, 3),  # stored turned 90 degrees anticlockwise: turn it clockwise
        7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),  # transversed
        8: lambda a: np.rot90(a, 1),
    }.get(int(orientation))
    return np.ascontiguousarray(turn(array)) if turn else array


def orient(image, orientation):
    """The tf.data twin of :func:`orient_array`: an (H, W, C) image tensor turned upright for
    a scalar EXIF ``orientation`` tensor (values outside 2..8 leave it as it is)."""
    tf = _tf()
    o = tf.cast(orientation, tf.int32)
    branches = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        lambda: tf.image.transpose(image),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(tf.image.transpose(image), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    index = tf.where(tf.logical_and(o >= 1, o <= 8), o - 1, 0)
    return tf.ensure_shape(tf.switch_case(index, branches), [None, None, image.shape[-1]])


def _image_info(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
    """``(ImageInfo, None)`` for an image file that the training pipeline can decode, else
    ``(None, reason)``: missing, empty, not an image, more than ``max_pixels`` pixels (read
    from the header, before decoding; 0 or None: no limit), corrupt or truncated, or a format
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
        with pil_without_bomb_guard(), Image.open(path) as im:
            size, fmt = im.size, im.format
            too_big = too_many_pixels(size, max_pixels)  # the header only: nothing decoded yet
            if too_big:
                return None, too_big
            if fmt == "JPEG":  # decode at 1/8 scale: every byte is still read, 10x faster
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
            orientation = exif_orientation(im)
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
    stored = (int(size[0]), int(size[1]))
    return ImageInfo(upright_size(stored, orientation), orientation, stored), None


def _image_size(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
    """``((width, height), None)`` (upright, see :func:`_image_info`) or ``(None, reason)``."""
    info, reason = _image_info(path, max_pixels)
    return (info.size if info else None), reason


def size_mismatch_hint(info: ImageInfo, declared) -> str:
    """``""``, or what to say when a size an annotation declares is the image's stored size
    but not its upright one (the annotation was made on the unturned pixels)."""
    if info.orientation == 1 or tuple(declared) != info.stored or info.stored == info.size:
        return ""
    return (
        f"; its EXIF orientation {info.orientation} turns the stored {info.stored[0]}x{info.stored[1]} "
        "pixels upright, and the annotation matches the unturned pixels: re-save the image upright "
        "or drop its EXIF orientation tag"
    )


def decode_image_file(path, channels: int, orientation=None):
    """The tf.data decoder of every file source: (H, W, ``channels``) uint8 from a JPEG, PNG,
    GIF or BMP file; grey, palette, grey+alpha and RGBA images are converted, 16-bit PNGs
    scaled to 8 bits. TensorFlow's BMP and GIF decoders give no single channel: those are
    decoded as RGB and made grey here. ``orientation``: the EXIF orientation prepare read
    (a scalar tensor; None: the stored pixels are upright), applied with :func:`orient`."""
    image = _decode(path, channels)
    return image if orientation is None else orient(image, orientation)


def _decode(path, channels: int):
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
