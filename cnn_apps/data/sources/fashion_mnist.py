"""``fashion_mnist``: Fashion-MNIST from its idx files, else TFDS when online."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from cnn_apps.data.sources.base import Source, _tf, register_source
from cnn_apps.data.sources.images import set_channels
from cnn_apps.data.sources.online import is_online
from cnn_apps.data.sources.records import (
    _class_counts,
    relabel,
    select_classes,
    stratified_split,
    stratified_subset,
    subset_seed,
)
from cnn_apps.data.sources.tfds import TfdsSource
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in dtypes:
                raise DataError(f"{path}: not an idx file (magic bytes {head!r})")
            ndim = head[3]
            dims = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
            data = np.frombuffer(fh.read(), dtype=dtypes[head[2]])
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from exc
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: idx header says {dims} but holds {data.size} values (truncated?)")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


_IDX_CACHE: dict = {}


@register_source("fashion_mnist")
class FashionMnistSource(Source):
    """Fashion-MNIST from its idx files (default: Debian's ``dataset-fashion-mnist``
    location), else TFDS ``fashion_mnist`` when online. Validation is a stratified
    ``val_fraction`` of the 60,000 training images; test is the 10,000 t10k images."""

    name = "fashion_mnist"
    selects_classes = True
    _STEMS = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def _folder(self) -> Path:
        return Path(self.data.path or FASHION_MNIST_DIR).expanduser()

    def _files(self) -> dict | None:
        folder = self._folder()
        found = {k: tuple(_find_idx(folder, s) for s in stems) for k, stems in self._STEMS.items()}
        if all(all(v) for v in found.values()):
            return found
        return None

    def _arrays(self, part: str):
        files = self._files()
        key = tuple(str(f) for f in files[part])
        if key not in _IDX_CACHE:
            images, labels = read_idx(files[part][0]), read_idx(files[part][1])
            if len(images) != len(labels):
                raise DataError(
                    f"{files[part][0]} has {len(images)} images but {files[part][1]} has {len(labels)} labels"
                )
            _IDX_CACHE.clear()  # keep one part in memory at a time
            _IDX_CACHE[key] = (images, labels.astype(np.int64))
        return _IDX_CACHE[key]

    def _chosen(self) -> list[int] | None:
        return select_classes(FASHION_MNIST_CLASSES, self.data.classes, self.name)

    def _selected(self, part: str):
        """``part``'s images and labels, of the ``data.classes`` only (renumbered), when set."""
        images, labels = self._arrays(part)
        chosen = self._chosen()
        if chosen is None:
            return images, labels
        keep, labels = relabel(labels, chosen)
        return images[keep], labels

    def _indices(self, labels: np.ndarray) -> dict:
        parts = stratified_split(labels, {"validation": self.data.val_fraction}, self.data.seed)
        train = parts["rest"]
        if self.data.max_train_examples:
            train = train[
                stratified_subset(labels[train], self.data.max_train_examples, subset_seed(self.data))
            ]
        return {"train": train, "validation": parts["validation"]}

    def _tfds_fallback(self) -> TfdsSource:
        folder = self._folder()
        if not is_online():
            raise DataError(
                f"Fashion-MNIST idx files not found in {folder} and TFDS cannot download "
                "(offline). Fix: `apt-get install dataset-fashion-mnist` (Debian), or set "
                "data.path to a folder holding train-images-idx3-ubyte.gz, "
                "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz."
            )
        return TfdsSource(self.config, tfds_name="fashion_mnist")

    def prepare(self) -> DatasetSpec:
        if self._files() is None:
            spec = self._tfds_fallback().prepare()
            spec.extra["via"] = "tfds"
            return spec
        _, train_labels = self._selected("train")
        idx = self._indices(train_labels)
        splits = {s: train_labels[i] for s, i in idx.items()}
        test_images, test_labels = self._selected("test")
        splits["test"] = test_labels
        chosen = self._chosen()
        names = list(FASHION_MNIST_CLASSES) if chosen is None else [FASHION_MNIST_CLASSES[i] for i in chosen]
        channels = self.data.channels or 1
        h, w = test_images.shape[1:3]
        return self._spec(
            class_names=names,
            image_shape=[int(h), int(w), channels],
            counts={s: int(len(v)) for s, v in splits.items()},
            class_counts={s: _class_counts(v, names) for s, v in splits.items()},
            location=str(self._folder().resolve()),
            extra={"via": "idx"},
        )

    def load(self, spec: DatasetSpec, split: str):
        if spec.extra.get("via") == "tfds":
            return TfdsSource(self.config, tfds_name="fashion_mnist").load(spec, split)
        tf = _tf()
        if split == "test":
            images, labels = self._selected("test")
        else:
            images, labels = self._selected("train")
            keep = self._indices(labels)[split]
            images, labels = images[keep], labels[keep]
        ds = tf.data.Dataset.from_tensor_slices({"image": images[..., None], "label": labels})
        return ds.map(lambda x: {**x, "image": set_channels(x["image"], spec.channels)})
