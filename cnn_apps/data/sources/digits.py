"""``digits`` (scikit-learn's 8x8 digits) and ``opencv_digits`` (OpenCV's 20x20
``digits.png``): small digit sets held in memory."""

from __future__ import annotations

import abc
import os
from pathlib import Path

import numpy as np

from cnn_apps.data.sources.base import Source, _tf, register_source
from cnn_apps.data.sources.images import set_channels
from cnn_apps.data.sources.records import (
    _class_counts,
    relabel,
    select_classes,
    stratified_split,
    stratified_subset,
    subset_seed,
)
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.errors import DataError

OPENCV_DIGITS_PATH = "/usr/share/doc/opencv-doc/examples/data/digits.png"  # Debian opencv-doc
OPENCV_DIGITS_CELL = 20  # digits.png: 50 rows x 100 columns of 20x20 cells
DIGIT_CLASSES = tuple(str(i) for i in range(10))


_DIGITS_CACHE: dict = {}


class _InMemoryDigitsSource(Source):
    """Shared by the two digit sets: all images as one (N, H, W) uint8 array, split
    stratified into test (``test_fraction``), validation (``val_fraction``) and train
    (the rest, optionally a stratified ``max_train_examples`` subset), deterministic
    for ``data.seed``. The images are small (8x8, 20x20); the pipeline resizes them to
    ``data.image_size``, i.e. upsizes them."""

    selects_classes = True

    @abc.abstractmethod
    def _location(self) -> str:
        """Where the digit set is read from (a file path)."""

    @abc.abstractmethod
    def _decode(self, location: str):
        """-> images (N, H, W) uint8, labels (N,) int64."""

    def _arrays(self, location: str):
        # mtime in the key: a file replaced at the same path is read again
        mtime = os.stat(location).st_mtime_ns if os.path.exists(location) else None
        key = (self.name, location, mtime)
        if key not in _DIGITS_CACHE:
            if len(_DIGITS_CACHE) >= 4:  # a few MB each; keep the memory bounded
                _DIGITS_CACHE.clear()
            _DIGITS_CACHE[key] = self._decode(location)
        return _DIGITS_CACHE[key]

    def _selected(self, location: str, data: dict):
        """The images and labels of the ``classes`` of ``data`` (renumbered), when set; and the
        class names."""
        images, labels = self._arrays(location)
        chosen = select_classes(DIGIT_CLASSES, data.get("classes"), self.name)
        if chosen is None:
            return images, labels, list(DIGIT_CLASSES)
        keep, labels = relabel(labels, chosen)
        return images[keep], labels, [DIGIT_CLASSES[i] for i in chosen]

    @staticmethod
    def _indices(labels: np.ndarray, data: dict) -> dict:
        """``{"train": idx, "validation": idx, "test": idx}`` from a data config (as a dict)."""
        parts = stratified_split(
            labels, {"test": data["test_fraction"], "validation": data["val_fraction"]}, data["seed"]
        )
        train = parts["rest"]
        if data.get("max_train_examples"):
            train = train[stratified_subset(labels[train], data["max_train_examples"], subset_seed(data))]
        return {"train": train, "validation": parts["validation"], "test": parts["test"]}

    def prepare(self) -> DatasetSpec:
        import dataclasses

        location = self._location()
        data = dataclasses.asdict(self.data)
        images, labels, names = self._selected(location, data)
        idx = self._indices(labels, data)
        channels = self.data.channels or 1
        h, w = images.shape[1:3]
        return self._spec(
            class_names=names,
            image_shape=[int(h), int(w), channels],
            counts={s: int(len(i)) for s, i in idx.items()},
            class_counts={s: _class_counts(labels[i], names) for s, i in idx.items()},
            location=location,
            extra={"total": int(len(labels))},
        )

    def load(self, spec: DatasetSpec, split: str):
        import dataclasses

        tf = _tf()
        # The spec's own data settings made the split: reuse them, so a later stage
        # with other fractions or seed still reads the examples that were counted.
        data = {**dataclasses.asdict(self.data), **(spec.data or {})}
        images, labels, _ = self._selected(spec.location, data)
        keep = self._indices(labels, data)[split]
        ds = tf.data.Dataset.from_tensor_slices({"image": images[keep][..., None], "label": labels[keep]})
        return ds.map(lambda x: {**x, "image": set_channels(x["image"], spec.channels)})


@register_source("digits")
class DigitsSource(_InMemoryDigitsSource):
    """scikit-learn's ``load_digits``: 1,797 8x8 grey digits (values 0..16, classes
    "0".."9"), bundled with scikit-learn, so always offline. Pixels become uint8
    ``round(x * 255 / 16)``. ``data.path`` is not used."""

    name = "digits"

    def _location(self) -> str:
        import sklearn.datasets

        return os.path.join(os.path.dirname(sklearn.datasets.__file__), "data", "digits.csv.gz")

    def _decode(self, location: str):
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        return images, d.target.astype(np.int64)


@register_source("opencv_digits")
class OpenCvDigitsSource(_InMemoryDigitsSource):
    """OpenCV's sample ``digits.png``: 5,000 20x20 grey digits, 500 per class, in one
    2000x1000 image of 50 rows x 100 columns of cells; class k is cell rows 5k..5k+4.
    Default path: Debian ``opencv-doc``'s copy; ``data.path`` names another file."""

    name = "opencv_digits"

    def _location(self) -> str:
        path = Path(self.data.path or OPENCV_DIGITS_PATH).expanduser()
        if not path.is_file():
            raise DataError(
                f"OpenCV digits image not found at {path}. Fix: `apt-get install opencv-doc` "
                f"(Debian; installs {OPENCV_DIGITS_PATH}), or set data.path to a copy of "
                "OpenCV's samples/data/digits.png."
            )
        return str(path.resolve())

    def _decode(self, location: str):
        from PIL import Image

        try:
            with Image.open(location) as im:
                sheet = np.asarray(im.convert("L"))
        except Exception as exc:  # PIL raises many kinds for a broken file
            raise DataError(f"{location}: cannot decode the digits image ({exc})") from exc
        c = OPENCV_DIGITS_CELL
        if sheet.shape != (50 * c, 100 * c):
            raise DataError(
                f"{location}: expected a {100 * c}x{50 * c} image of 20x20 digit cells, "
                f"got {sheet.shape[1]}x{sheet.shape[0]}"
            )
        # (rows*20, cols*20) -> (rows, cols, 20, 20) -> row-major cells; 500 per class
        cells = sheet.reshape(50, c, 100, c).transpose(0, 2, 1, 3).reshape(-1, c, c)
        labels = np.repeat(np.arange(10, dtype=np.int64), len(cells) // 10)
        return np.ascontiguousarray(cells), labels
