"""The image files ``cnn-apps predict`` reads: :func:`list_inputs` names them,
:func:`read_image` reads and checks each one into an :class:`ImageFile`.

An input is an image file, a folder (its files with an image extension, sorted, not
recursive) or a glob pattern (sorted). Each file is read and decoded here first (Pillow and
OpenCV): an empty, truncated, unreadable or non-image file raises :class:`DataError` saying
what is wrong with it, and an image whose header claims too many pixels is refused before it
is decoded (a decompression bomb). Grayscale, palette, RGBA and 16-bit images are converted to
3-channel 8-bit RGB and re-encoded as PNG; a photo with an EXIF orientation is turned upright.
"""

from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_apps.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_inputs(spec: str) -> list[Path]:
    """The files ``spec`` names: itself (a file), a folder's image files (by extension,
    sorted, not recursive), or a glob pattern's matching files (sorted)."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"--input {spec}: the folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"--input {spec}: the pattern matches no files")
        return files
    raise DataError(f"--input {spec}: no such file or folder (and not a glob pattern)")


@dataclass
class ImageFile:
    """One input image: ``data`` the encoded file sent to the model (the original bytes,
    or a PNG of the converted pixels), ``pixels`` (H, W, 3) uint8 RGB."""

    file: str
    data: bytes
    pixels: np.ndarray
    converted: bool = False

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def _to_uint8_rgb(array: np.ndarray, bgr: bool) -> tuple[np.ndarray, bool]:
    """Any decoded array -> (H, W, 3) uint8 RGB, and whether that changed anything."""
    import cv2

    changed = False
    if array.dtype == np.uint16:
        array, changed = np.round(array.astype(np.float32) / 257.0).astype(np.uint8), True
    elif array.dtype != np.uint8:
        array, changed = np.clip(np.round(array.astype(np.float64)), 0, 255).astype(np.uint8), True
    if array.ndim == 2:
        array, changed = array[..., None], True
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1), True
    if channels == 2:  # gray + alpha
        return np.repeat(array[..., :1], 3, axis=-1), True
    if channels == 4:
        array, changed = array[..., :3], True
    elif channels != 3:
        raise DataError(f"{channels}-channel image")
    return (cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_BGR2RGB) if bgr else array), changed


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> ImageFile:
    """Read and check one file; raises :class:`DataError` saying what is wrong with it.

    An image whose header claims more than ``max_pixels`` pixels (default: the default of
    ``data.max_image_pixels``; 0: no limit) is refused before it is decoded (a decompression
    bomb). A photo with an EXIF orientation is turned upright (the model's own decoder
    ignores the tag) and sent re-encoded as PNG, so its boxes and masks are upright too."""
    import warnings

    import cv2
    from PIL import Image

    from cnn_apps.data.sources.images import (
        DEFAULT_MAX_IMAGE_PIXELS,
        exif_orientation,
        orient_array,
        pil_without_bomb_guard,
        too_many_pixels,
    )

    name = str(path)
    limit = DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read the file ({exc.strerror or exc})") from exc
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    try:  # Pillow finds truncated and non-image files (OpenCV may decode part of one silently)
        with warnings.catch_warnings(), pil_without_bomb_guard():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image_format, mode = image.format, image.mode
                # the header only, nothing decoded yet
                too_big = too_many_pixels(image.size, limit, "--max-image-pixels", "predict on")
                if not too_big:
                    image.load()
                    orientation = exif_orientation(image)
                    fallback = image.copy()
    except Image.UnidentifiedImageError as exc:
        raise DataError(f"{name}: not an image file (no image format recognised)") from exc
    except Exception as exc:  # any decoder failure is the file's problem
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if too_big:
        raise DataError(f"{name}: {too_big}")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # ignores EXIF
    if decoded is not None and decoded.size:
        pixels, changed = _to_uint8_rgb(decoded, bgr=decoded.ndim == 3 and decoded.shape[-1] in (3, 4))
    else:  # a format OpenCV lacks (e.g. GIF in some builds): Pillow's pixels
        if fallback.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            pixels, changed = _to_uint8_rgb(np.asarray(fallback), bgr=False)
        else:
            pixels, changed = np.asarray(fallback.convert("RGB")), True
    if orientation != 1:  # stored turned or mirrored: upright as viewers show it
        pixels, changed = orient_array(pixels, orientation), True
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise DataError(f"{name}: the image has no pixels")
    # the export's decoder reads JPEG, PNG and BMP: anything else, or anything converted, goes as PNG
    converted = changed or mode != "RGB" or image_format not in ("JPEG", "PNG", "BMP")
    if converted:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - PNG encoding of uint8 arrays does not fail
            raise DataError(f"{name}: could not re-encode as PNG")
        data = buf.tobytes()
    return ImageFile(name, data, np.ascontiguousarray(pixels), converted)
