"""Data sources: where images come from, turned into one shape of tf.data element.

Every source has ``prepare() -> DatasetSpec`` (build or scan once, count, report
bad records) and ``load(spec, split) -> tf.data.Dataset``. Elements are dicts:

* classification: ``image`` (H, W, C) uint8, ``label`` () int64;
* detection: ``image``, ``boxes`` (N, 4) float32 xyxy pixels, ``labels`` (N,) int64;
* segmentation: ``image``, ``mask`` (H, W, 1) uint8 (0 background, k+1 class k,
  255 ignore).

Sources: ``shapes`` (embedded, all tasks), ``folder`` (class sub-folders),
``fashion_mnist`` (idx files, else TFDS when online), ``tfds`` (any catalog
name, when online or already in ``data_dir``; ``voc/2007``, ``coco/2017`` for
detection, ``oxford_iiit_pet`` for segmentation), ``digits`` (scikit-learn's 8x8
digits), ``opencv_digits`` (OpenCV's 20x20 ``digits.png``), for detection ``voc``
(a VOC-style folder of XML annotations) and ``coco`` (a COCO instances JSON), and
for segmentation ``masks`` (image and mask folders or a VOC2012 folder;
:mod:`cnn_apps.data.mask_folders`).

Box formats are converted once, here, at the edge: VOC XML is 1-based inclusive
(:func:`voc_box_to_xyxy`), COCO JSON is ``xywh`` (:func:`coco_box_to_xyxy`), TFDS
is normalized ``yxyx`` (:func:`tfds_boxes_to_xyxy`).
"""

from __future__ import annotations

import abc
import csv
import gzip
import hashlib
import json
import math
import os
import re
import socket
import struct
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from cnn_apps.config import Config
from cnn_apps.data.spec import SPLITS, DatasetSpec
from cnn_apps.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
OPENCV_DIGITS_PATH = "/usr/share/doc/opencv-doc/examples/data/digits.png"  # Debian opencv-doc
OPENCV_DIGITS_CELL = 20  # digits.png: 50 rows x 100 columns of 20x20 cells
DIGIT_CLASSES = tuple(str(i) for i in range(10))
_TFDS_HOST = ("storage.googleapis.com", 443)  # where TFDS downloads from


def is_online(timeout: float = 3.0) -> bool:
    """True when TFDS' download host answers within ``timeout`` seconds.

    ``CNN_APPS_OFFLINE=1`` answers False at once (tests and air-gapped machines).
    """
    if os.environ.get("CNN_APPS_OFFLINE", "") not in ("", "0"):
        return False
    try:
        socket.create_connection(_TFDS_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _tf():
    import tensorflow as tf

    return tf


def _quiet_tfds():
    import tensorflow_datasets as tfds

    if not os.isatty(2):
        tfds.disable_progress_bar()
    return tfds


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


def stratified_split(labels: np.ndarray, fractions: dict, seed: int) -> dict:
    """Split indices per class: ``{"validation": 0.1, ...}`` -> ``{"validation": idx, ..., "rest": idx}``.

    Each class gives ``round(n * fraction)`` examples to each named part (at most
    ``n - 1`` in all, so the rest keeps one per class); deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    parts = {name: [] for name in fractions}
    parts["rest"] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for name, frac in fractions.items():
            take = min(int(round(len(idx) * frac)), max(len(idx) - 1 - start, 0))
            parts[name].extend(idx[start:start + take])
            start += take
        parts["rest"].extend(idx[start:])
    return {k: np.sort(np.asarray(v, np.int64)) for k, v in parts.items()}


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices with the class balance of ``labels`` (for ``max_train_examples``)."""
    if n >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, {"keep": n / len(labels)}, seed)["keep"]


def skipped_summary(skipped: list, show: int = 3) -> str:
    """``"; 5 records skipped: a.jpg (reason); ... and 2 more"`` for an error raised when bad
    records left nothing to use (the skipped list is never logged then), else ``""``."""
    if not skipped:
        return ""
    shown = "; ".join(f"{item['file']} ({item['reason']})" for item in skipped[:show])
    more = f"; and {len(skipped) - show} more" if len(skipped) > show else ""
    return f"; {len(skipped)} records skipped: {shown}{more}"


def _class_counts(labels, class_names) -> dict:
    counts = Counter(int(v) for v in labels)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}


class Source(abc.ABC):
    """Base class; subclasses set ``name`` and implement ``prepare`` and ``load``."""

    name = ""
    tasks = ("classification",)

    def __init__(self, config: Config):
        if config.task not in self.tasks:
            raise ConfigError(
                f"data.source '{self.name}' supports task {', '.join(self.tasks)}, not '{config.task}'"
            )
        self.config = config
        self.data = config.data

    @abc.abstractmethod
    def prepare(self) -> DatasetSpec:
        """Build or scan the data once; counts, classes and skipped records."""

    @abc.abstractmethod
    def load(self, spec: DatasetSpec, split: str):
        """One split as a tf.data.Dataset of element dicts (see the module docstring)."""

    def _spec(self, **kwargs) -> DatasetSpec:
        import dataclasses

        kwargs.setdefault("name", self.name)
        return DatasetSpec(source=self.name, task=self.config.task,
                           fingerprint=self.config.data_fingerprint(),
                           data=dataclasses.asdict(self.data), **kwargs)


# ---------------------------------------------------------------------- shapes
class ShapesSource(Source):
    """The embedded synthetic dataset, built as a TFDS dataset in ``data_dir``."""

    name = "shapes"
    tasks = ("classification", "detection", "segmentation")

    def _builder(self, fingerprint: str):
        from cnn_apps.data.shapes_tfds import shapes_builder

        _quiet_tfds()
        d = self.data
        return shapes_builder(self.config.task, d.data_dir, fingerprint, image_size=d.image_size,
                              train_size=d.train_size, val_size=d.val_size,
                              test_size=d.test_size, max_objects=d.max_objects, seed=d.seed)

    def prepare(self) -> DatasetSpec:
        from cnn_apps.data.shapes import CLASS_NAMES
        from cnn_apps.data.shapes_tfds import prepare_builder

        if self.data.image_size < 16:
            raise ConfigError(f"data.image_size: shapes needs at least 16 px, got {self.data.image_size}")
        fingerprint = self.config.data_fingerprint()
        builder = self._builder(fingerprint)
        built = prepare_builder(builder)
        counts = {s: int(builder.info.splits[s].num_examples) for s in SPLITS
                  if s in builder.info.splits}
        self._empty = {}  # detection: split -> images without objects, filled by _count
        class_counts = {s: self._count(builder, s, CLASS_NAMES) for s in counts}
        extra = {"tfds_config": builder.builder_config.name, "built_now": built}
        if self.config.task == "detection":
            extra["images_without_objects"] = dict(self._empty)
        s = self.data.image_size
        channels = self.data.channels or 3
        return self._spec(class_names=list(CLASS_NAMES), image_shape=[s, s, channels],
                          counts=counts, class_counts=class_counts,
                          location=os.path.abspath(builder.data_dir), extra=extra)

    def _count(self, builder, split, class_names) -> dict:
        tfds = _quiet_tfds()
        task = self.config.task
        decoders = {"image": tfds.decode.SkipDecoding()}
        if task == "segmentation":
            decoders = None
        ds = builder.as_dataset(split=split, decoders=decoders)
        if task == "classification":
            labels = [int(x["label"]) for x in ds.as_numpy_iterator()]
            return _class_counts(labels, class_names)
        if task == "detection":  # boxes per class, and images with none
            per_image = [x["labels"] for x in ds.as_numpy_iterator()]
            self._empty[split] = sum(len(v) == 0 for v in per_image)
            return _class_counts([int(v) for labels in per_image for v in labels], class_names)
        pixels = np.zeros(len(class_names) + 1, np.int64)  # segmentation: pixels per class
        for x in ds.as_numpy_iterator():
            pixels += np.bincount(x["mask"].ravel(), minlength=len(pixels))[:len(pixels)]
        names = ["background", *class_names]
        return {n: int(p) for n, p in zip(names, pixels)}

    def load(self, spec: DatasetSpec, split: str):
        builder = self._builder(spec.fingerprint)
        if not builder.is_prepared():
            # The data dir was cleaned or this is another machine: the data is
            # deterministic, so rebuilding gives the same bytes.
            from cnn_apps.data.shapes_tfds import prepare_builder

            prepare_builder(builder)
        ds = builder.as_dataset(split=split, shuffle_files=False)
        channels = spec.channels
        return ds.map(lambda x: {**x, "image": set_channels(x["image"], channels)})


# ---------------------------------------------------------------------- folder
def _scan_class_dirs(root: Path) -> dict:
    """``{class name: [files]}`` for the sub-folders of ``root`` (sorted, hidden ones skipped)."""
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
    return out


_SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}


class FolderSource(Source):
    """A folder of class sub-folders (``root/<class>/*.jpg``), or one already split
    into ``train/``, ``val/`` (or ``validation/``) and ``test/``, each holding class
    sub-folders. Missing splits are made by a stratified split of train.
    Files that cannot be decoded are skipped and reported by name."""

    name = "folder"

    def _root(self) -> Path:
        if not self.data.path:
            raise ConfigError("data.path: set it to the folder of class sub-folders (data.source=folder)")
        root = Path(self.data.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path {root} is not a folder")
        return root

    def _manifest_path(self, fingerprint: str) -> Path:
        return Path(self.data.data_dir) / "folder" / fingerprint / "manifest.csv"

    @staticmethod
    def _check(path: Path):
        """None when ``path`` is an image TensorFlow can decode, else the reason."""
        return _image_size(path)[1]

    def prepare(self) -> DatasetSpec:
        root = self._root()
        split_dirs = {}
        for split, names in _SPLIT_DIRS.items():
            for n in names:
                if (root / n).is_dir():
                    split_dirs[split] = root / n
                    break
        if split_dirs and "train" not in split_dirs:
            raise DataError(f"{root} has {', '.join(p.name for p in split_dirs.values())}/ but no train/")
        files = {s: _scan_class_dirs(p) for s, p in split_dirs.items()} or {"train": _scan_class_dirs(root)}
        class_names = sorted({c for per_class in files.values() for c in per_class})
        if len(class_names) < 2:
            raise DataError(f"{root}: need at least two class sub-folders, found {class_names or 'none'}")
        index = {c: i for i, c in enumerate(class_names)}
        skipped, rows = [], {s: [] for s in files}
        for split, per_class in files.items():
            for cls, paths in per_class.items():
                for p in paths:
                    reason = self._check(p)
                    if reason:
                        skipped.append({"file": str(p), "reason": reason})
                    else:
                        rows[split].append((str(p.resolve()), index[cls]))
        if not rows["train"]:
            raise DataError(f"{root}: no readable images in the training folders{skipped_summary(skipped)}")
        rows = self._complete_splits(rows)
        manifest = self._manifest_path(self.config.data_fingerprint())
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["split", "path", "label"])
            for split in SPLITS:
                for path, label in rows.get(split, []):
                    w.writerow([split, path, label])
        counts = {s: len(rows[s]) for s in SPLITS if rows.get(s)}
        class_counts = {s: _class_counts([lab for _, lab in rows[s]], class_names) for s in counts}
        channels = self.data.channels or 3
        return self._spec(class_names=class_names, image_shape=[None, None, channels],
                          counts=counts, class_counts=class_counts, location=str(manifest.resolve()),
                          skipped=skipped, name=root.name)

    def _complete_splits(self, rows: dict) -> dict:
        fractions = {}
        if "test" not in rows:
            fractions["test"] = self.data.test_fraction
        if "validation" not in rows:
            fractions["validation"] = self.data.val_fraction
        train = rows["train"]
        labels = np.array([lab for _, lab in train])
        if fractions:
            parts = stratified_split(labels, fractions, self.data.seed)
            for name in fractions:
                rows[name] = [train[i] for i in parts[name]]
            train = [train[i] for i in parts["rest"]]
            labels = labels[parts["rest"]]
        if self.data.max_train_examples:
            keep = stratified_subset(labels, self.data.max_train_examples, self.data.seed)
            train = [train[i] for i in keep]
        rows["train"] = train
        return rows

    def load(self, spec: DatasetSpec, split: str):
        tf = _tf()
        paths, labels = [], []
        try:
            with open(spec.location, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    if row["split"] == split:
                        paths.append(row["path"])
                        labels.append(int(row["label"]))
        except FileNotFoundError as exc:
            raise DataError(f"manifest {spec.location} is gone: run `cnn-apps prepare` again") from exc
        channels = spec.channels

        def decode(path, label):
            return {"image": decode_image_file(path, channels), "label": label}

        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int64)))
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ---------------------------------------------------------------------- Fashion-MNIST
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


class FashionMnistSource(Source):
    """Fashion-MNIST from its idx files (default: Debian's ``dataset-fashion-mnist``
    location), else TFDS ``fashion_mnist`` when online. Validation is a stratified
    ``val_fraction`` of the 60,000 training images; test is the 10,000 t10k images."""

    name = "fashion_mnist"
    _STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

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
                raise DataError(f"{files[part][0]} has {len(images)} images but {files[part][1]} "
                                f"has {len(labels)} labels")
            _IDX_CACHE.clear()  # keep one part in memory at a time
            _IDX_CACHE[key] = (images, labels.astype(np.int64))
        return _IDX_CACHE[key]

    def _indices(self, labels: np.ndarray) -> dict:
        parts = stratified_split(labels, {"validation": self.data.val_fraction}, self.data.seed)
        train = parts["rest"]
        if self.data.max_train_examples:
            train = train[stratified_subset(labels[train], self.data.max_train_examples, self.data.seed)]
        return {"train": train, "validation": parts["validation"]}

    def _tfds_fallback(self) -> "TfdsSource":
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
        _, train_labels = self._arrays("train")
        idx = self._indices(train_labels)
        splits = {s: train_labels[i] for s, i in idx.items()}
        test_images, test_labels = self._arrays("test")
        splits["test"] = test_labels
        names = list(FASHION_MNIST_CLASSES)
        channels = self.data.channels or 1
        h, w = test_images.shape[1:3]
        return self._spec(class_names=names, image_shape=[int(h), int(w), channels],
                          counts={s: int(len(v)) for s, v in splits.items()},
                          class_counts={s: _class_counts(v, names) for s, v in splits.items()},
                          location=str(self._folder().resolve()), extra={"via": "idx"})

    def load(self, spec: DatasetSpec, split: str):
        if spec.extra.get("via") == "tfds":
            return TfdsSource(self.config, tfds_name="fashion_mnist").load(spec, split)
        tf = _tf()
        if split == "test":
            images, labels = self._arrays("test")
        else:
            images, labels = self._arrays("train")
            keep = self._indices(labels)[split]
            images, labels = images[keep], labels[keep]
        ds = tf.data.Dataset.from_tensor_slices({"image": images[..., None], "label": labels})
        return ds.map(lambda x: {**x, "image": set_channels(x["image"], spec.channels)})


# ---------------------------------------------------------------------- TFDS catalog
def tfds_boxes_to_xyxy(bbox, height, width, one_based: bool = False):
    """TFDS ``BBoxFeature`` boxes (N, 4), normalized ``ymin, xmin, ymax, xmax``, to
    xyxy pixels (N, 4) float32 for an image of ``height`` x ``width``.

    ``one_based``: the boxes were made from VOC XML as ``xmin / width`` (TFDS'
    ``voc`` builder does so), so ``x1, y1`` are 1-based; subtracting 1 gives the
    same boxes as :func:`voc_box_to_xyxy` on the XML. Works on numpy and tensors.
    """
    tf = _tf()
    bbox = tf.reshape(tf.cast(bbox, tf.float32), (-1, 4))
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(bbox, num=4, axis=1)
    shift = 1.0 if one_based else 0.0
    return tf.stack([tf.maximum(xmin * w - shift, 0.0), tf.maximum(ymin * h - shift, 0.0), xmax * w, ymax * h], 1)


# TFDS detection datasets whose test split carries no annotations (images only)
_TFDS_UNLABELED_TEST = ("coco", "voc/2012")


def pet_trimap_to_mask(trimap):
    """oxford_iiit_pet's ``segmentation_mask`` trimap (H, W, 1) (1 pet, 2 background,
    3 border) to our mask (H, W, 1) uint8: 0 background, 1 pet, 255 border (ignored:
    the outline is ambiguous). Works on numpy and tensors."""
    tf = _tf()
    lookup = tf.constant([255, 1, 0, 255], tf.uint8)  # indexed by the trimap value; 0 never occurs
    return tf.gather(lookup, tf.minimum(tf.cast(trimap, tf.int32), 3))


# TFDS segmentation datasets: name -> (class names, mask feature, conversion to our mask)
_TFDS_SEGMENTATION = {"oxford_iiit_pet": (("pet",), "segmentation_mask", pet_trimap_to_mask)}


class TfdsSource(Source):
    """Any TFDS catalog dataset with (image, label) supervised keys, e.g. ``cifar10``;
    for detection, one with ``objects/bbox`` and ``objects/label`` (``voc/2007``,
    ``coco/2017``). Downloads into ``data_dir`` when online; fails at once, with the
    fix, when offline.

    Detection: boxes become xyxy pixels in the map (:func:`tfds_boxes_to_xyxy`);
    objects marked ``is_difficult`` (VOC; unless ``data.keep_difficult``) or
    ``is_crowd`` (COCO) and boxes without area are left out of the targets, and
    prepare counts them per split in ``extra`` (``left_out_boxes``).

    Segmentation: ``oxford_iiit_pet`` (class "pet"; its trimap becomes 0 background,
    1 pet, 255 border, :func:`pet_trimap_to_mask`); class counts are pixels."""

    name = "tfds"
    tasks = ("classification", "detection", "segmentation")

    def __init__(self, config: Config, tfds_name: str | None = None):
        super().__init__(config)
        self.tfds_name = tfds_name or config.data.tfds_name
        if not self.tfds_name:
            example = "voc/2007" if config.task == "detection" else "cifar10"
            raise ConfigError(f"data.tfds_name: name a TFDS catalog dataset, e.g. {example} (data.source=tfds)")
        if config.task == "segmentation" and self.tfds_name.split(":")[0] not in _TFDS_SEGMENTATION:
            raise ConfigError(f"data.tfds_name: '{self.tfds_name}' is not a TFDS segmentation dataset this source "
                              f"knows ({', '.join(_TFDS_SEGMENTATION)}); for your own masks use data.source=masks")

    def _segmentation(self):
        """(class names, mask feature, conversion) of a TFDS segmentation dataset."""
        return _TFDS_SEGMENTATION[self.tfds_name.split(":")[0]]

    def _builder(self):
        tfds = _quiet_tfds()
        try:
            return tfds.builder(self.tfds_name, data_dir=self.data.data_dir)
        except Exception as exc:  # DatasetNotFoundError and friends
            raise DataError(f"TFDS has no dataset '{self.tfds_name}': {exc}".splitlines()[0]) from exc

    def _split_names(self, builder) -> dict:
        have = set(builder.info.splits.keys())
        if self.config.task == "detection" and self.tfds_name.startswith(_TFDS_UNLABELED_TEST):
            have.discard("test")  # no annotations there: carve test out of train instead
        val_pct = int(round(self.data.val_fraction * 100))
        test_pct = int(round(self.data.test_fraction * 100))
        out = {"train": "train"}
        if "test" not in have:
            out["test"] = f"train[:{test_pct}%]"
            out["train"] = f"train[{test_pct}%:]"
        else:
            out["test"] = "test"
        if "validation" in have:
            out["validation"] = "validation"
        else:
            lo = test_pct if "test" not in have else 0
            out["validation"] = f"train[{lo}%:{lo + val_pct}%]"
            out["train"] = f"train[{lo + val_pct}%:]"
        return out

    def _keys(self, builder):
        keys = builder.info.supervised_keys
        if not keys or len(keys) != 2:
            raise DataError(f"TFDS '{self.tfds_name}' has no (image, label) supervised keys")
        return keys

    def _objects(self, builder):
        """The detection features' ``objects`` dict; a DataError when there is none."""
        features = builder.info.features
        if "objects" not in features or not {"bbox", "label"} <= set(features["objects"].keys()):
            raise DataError(f"TFDS '{self.tfds_name}' has no objects/bbox and objects/label features: "
                            "it is not a detection dataset (try voc/2007 or coco/2017)")
        return features["objects"]

    def _keep(self, objects):
        """Boolean (N,) of the objects that become targets (see the class docstring)."""
        tf = _tf()
        bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4))
        keep = (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])
        if "is_difficult" in objects and not self.data.keep_difficult:
            keep &= tf.logical_not(tf.cast(objects["is_difficult"], tf.bool))
        if "is_crowd" in objects:
            keep &= tf.logical_not(tf.cast(objects["is_crowd"], tf.bool))
        return keep

    def _ensure_prepared(self, builder):
        if not builder.is_prepared():
            if not is_online():
                raise DataError(
                    f"TFDS '{self.tfds_name}' is not in {self.data.data_dir} and this machine is "
                    "offline. Fix: prepare it on a machine with internet and copy the data dir, "
                    "or use data.source=folder with local files."
                )
            builder.download_and_prepare()

    def prepare(self) -> DatasetSpec:
        builder = self._builder()
        self._ensure_prepared(builder)
        if self.config.task == "detection":
            return self._prepare_detection(builder)
        if self.config.task == "segmentation":
            return self._prepare_segmentation(builder)
        tfds = _quiet_tfds()
        image_key, label_key = self._keys(builder)
        names = list(builder.info.features[label_key].names)
        shape = list(builder.info.features[image_key].shape)
        if self.data.channels:
            shape[-1] = self.data.channels
        counts, class_counts = {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders={image_key: tfds.decode.SkipDecoding()})
            labels = [int(x[label_key]) for x in ds.as_numpy_iterator()]
            counts[split] = len(labels)
            class_counts[split] = _class_counts(labels, names)
        return self._spec(class_names=names, image_shape=shape, counts=counts,
                          class_counts=class_counts, location=os.path.abspath(self.data.data_dir),
                          extra={"tfds_name": self.tfds_name}, name=self.tfds_name)

    def _prepare_detection(self, builder) -> DatasetSpec:
        tfds = _quiet_tfds()
        names = list(self._objects(builder)["label"].names)
        counts, class_counts, empty, left_out = {}, {}, {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders={"image": tfds.decode.SkipDecoding()})
            ds = ds.map(lambda x: {"labels": x["objects"]["label"], "keep": self._keep(x["objects"])})
            labels, n, dropped = [], 0, 0
            for x in ds.as_numpy_iterator():
                kept = x["labels"][x["keep"]]
                labels.extend(int(v) for v in kept)
                empty[split] = empty.get(split, 0) + int(len(kept) == 0)
                dropped += int(len(x["keep"]) - len(kept))
                n += 1
            counts[split], left_out[split] = n, dropped
            class_counts[split] = _class_counts(labels, names)
        channels = self.data.channels or 3
        return self._spec(class_names=names, image_shape=[None, None, channels], counts=counts,
                          class_counts=class_counts, location=os.path.abspath(self.data.data_dir),
                          extra={"tfds_name": self.tfds_name, "images_without_objects": empty,
                                 "left_out_boxes": left_out},
                          name=self.tfds_name.replace("/", "-"))

    def _prepare_segmentation(self, builder) -> DatasetSpec:
        tfds, tf = _quiet_tfds(), _tf()
        names, key, convert = self._segmentation()
        counts, class_counts, ignored = {}, {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders={"image": tfds.decode.SkipDecoding()})
            ds = ds.map(lambda x: tf.math.bincount(tf.cast(convert(x[key]), tf.int32), minlength=256,
                                                   maxlength=256, dtype=tf.int64))
            pixels, n = np.zeros(256, np.int64), 0
            for hist in ds.as_numpy_iterator():
                pixels, n = pixels + hist, n + 1
            counts[split], ignored[split] = n, int(pixels[255])
            class_counts[split] = {c: int(p) for c, p in zip(["background", *names], pixels)}
        channels = self.data.channels or 3
        return self._spec(class_names=list(names), image_shape=[None, None, channels], counts=counts,
                          class_counts=class_counts, location=os.path.abspath(self.data.data_dir),
                          extra={"tfds_name": self.tfds_name, "ignored_pixels": ignored}, name=self.tfds_name)

    def load(self, spec: DatasetSpec, split: str):
        builder = self._builder()
        tf = _tf()
        ds = builder.as_dataset(split=self._split_names(builder)[split], shuffle_files=False)
        channels = spec.channels
        if spec.task == "segmentation":
            _, key, convert = self._segmentation()
            return ds.map(lambda x: {"image": set_channels(x["image"], channels), "mask": convert(x[key])})
        if spec.task == "detection":
            self._objects(builder)
            one_based = self.tfds_name.startswith("voc")

            def convert(x):
                image = x["image"]
                keep = self._keep(x["objects"])
                boxes = tfds_boxes_to_xyxy(x["objects"]["bbox"], tf.shape(image)[0], tf.shape(image)[1],
                                           one_based=one_based)
                return {"image": set_channels(image, channels), "boxes": tf.boolean_mask(boxes, keep),
                        "labels": tf.boolean_mask(tf.cast(x["objects"]["label"], tf.int64), keep)}

            return ds.map(convert)
        image_key, label_key = self._keys(builder)
        return ds.map(lambda x: {"image": set_channels(x[image_key], channels),
                                 "label": _tf().cast(x[label_key], "int64")})


# ---------------------------------------------------------------------- small digit sets
_DIGITS_CACHE: dict = {}


class _InMemoryDigitsSource(Source):
    """Shared by the two digit sets: all images as one (N, H, W) uint8 array, split
    stratified into test (``test_fraction``), validation (``val_fraction``) and train
    (the rest, optionally a stratified ``max_train_examples`` subset), deterministic
    for ``data.seed``. The images are small (8x8, 20x20); the pipeline resizes them to
    ``data.image_size``, i.e. upsizes them."""

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

    @staticmethod
    def _indices(labels: np.ndarray, data: dict) -> dict:
        """``{"train": idx, "validation": idx, "test": idx}`` from a data config (as a dict)."""
        parts = stratified_split(labels, {"test": data["test_fraction"],
                                          "validation": data["val_fraction"]}, data["seed"])
        train = parts["rest"]
        if data.get("max_train_examples"):
            train = train[stratified_subset(labels[train], data["max_train_examples"], data["seed"])]
        return {"train": train, "validation": parts["validation"], "test": parts["test"]}

    def prepare(self) -> DatasetSpec:
        import dataclasses

        location = self._location()
        images, labels = self._arrays(location)
        idx = self._indices(labels, dataclasses.asdict(self.data))
        names = list(DIGIT_CLASSES)
        channels = self.data.channels or 1
        h, w = images.shape[1:3]
        return self._spec(class_names=names, image_shape=[int(h), int(w), channels],
                          counts={s: int(len(i)) for s, i in idx.items()},
                          class_counts={s: _class_counts(labels[i], names) for s, i in idx.items()},
                          location=location, extra={"total": int(len(labels))})

    def load(self, spec: DatasetSpec, split: str):
        import dataclasses

        tf = _tf()
        # The spec's own data settings made the split: reuse them, so a later stage
        # with other fractions or seed still reads the examples that were counted.
        data = {**dataclasses.asdict(self.data), **(spec.data or {})}
        images, labels = self._arrays(spec.location)
        keep = self._indices(labels, data)[split]
        ds = tf.data.Dataset.from_tensor_slices({"image": images[keep][..., None], "label": labels[keep]})
        return ds.map(lambda x: {**x, "image": set_channels(x["image"], spec.channels)})


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
            raise DataError(f"{location}: expected a {100 * c}x{50 * c} image of 20x20 digit cells, "
                            f"got {sheet.shape[1]}x{sheet.shape[0]}")
        # (rows*20, cols*20) -> (rows, cols, 20, 20) -> row-major cells; 500 per class
        cells = sheet.reshape(50, c, 100, c).transpose(0, 2, 1, 3).reshape(-1, c, c)
        labels = np.repeat(np.arange(10, dtype=np.int64), len(cells) // 10)
        return np.ascontiguousarray(cells), labels


# ---------------------------------------------------------------------- detection: VOC XML, COCO JSON
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
_VOC_SETS = {"train": "train", "val": "validation", "test": "test"}  # ImageSets/Main/<name>.txt -> split


def voc_box_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> list:
    """VOC XML ``bndbox`` (1-based, inclusive: a box covering pixels 1..3 has
    ``xmin=1, xmax=3``) to our xyxy pixels (0-based edges: ``x1 = xmin - 1``,
    ``x2 = xmax``), so that ``x2 - x1`` is the width in pixels."""
    return [float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax)]


def coco_box_to_xyxy(x: float, y: float, w: float, h: float) -> list:
    """COCO ``bbox`` ``[x, y, width, height]`` (0-based pixel edges) to xyxy pixels."""
    return [float(x), float(y), float(x) + float(w), float(y) + float(h)]


def _clip_box(box: list, width: int, height: int):
    """``(box clipped to the image, None)``, or ``(None, reason)`` for a box without
    area or lying wholly outside the ``width`` x ``height`` image."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return None, "non-finite coordinate"
    if x2 <= x1 or y2 <= y1:
        return None, "empty box (x2 <= x1 or y2 <= y1)"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return None, f"box outside the {width}x{height} image"
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))], None


# the formats tf.io.decode_image reads, as PIL names them (MPO: a camera's multi-picture JPEG)
_TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")


def _image_size(path: Path):
    """``((width, height), None)`` for an image file that the training pipeline can decode,
    else ``(None, reason)``: missing, empty, not an image, corrupt or truncated, or a format
    (or a BMP/GIF variant) TensorFlow does not read."""
    if not path.is_file():
        return None, "image file not found"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None, f"not an image file (extension {path.suffix or 'none'}; use {', '.join(IMAGE_EXTENSIONS)})"
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
    rgb_only = tf.logical_or(tf.equal(tf.strings.substr(contents, 0, 2), "BM"),
                             tf.equal(tf.strings.substr(contents, 0, 3), "GIF"))

    def grey_from_rgb():
        rgb = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(rgb, tf.float32))), tf.uint8)

    image = tf.cond(rgb_only, grey_from_rgb,
                    lambda: tf.io.decode_image(contents, channels=1, expand_animations=False))
    return tf.ensure_shape(image, [None, None, 1])


def _random_split(records: list, fractions: dict, seed: int) -> dict:
    """Seeded split of a list: ``{"test": 0.1, ...}`` -> ``{"test": [...], ..., "rest": [...]}``
    (each part keeps the records' order; ``rest`` keeps at least one record)."""
    order = np.random.default_rng(seed).permutation(len(records))
    parts, start = {}, 0
    for name, frac in fractions.items():
        take = min(int(round(len(records) * frac)), max(len(records) - 1 - start, 0))
        parts[name] = sorted(order[start:start + take])
        start += take
    parts["rest"] = sorted(order[start:])
    return {k: [records[i] for i in v] for k, v in parts.items()}


def read_manifest(location: str) -> dict:
    """The JSON manifest a folder source's prepare wrote (``spec.location``), or a DataError
    saying to prepare again."""
    try:
        return json.loads(Path(location).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"manifest {location} is gone: run `cnn-apps prepare` again") from exc
    except ValueError as exc:
        raise DataError(f"manifest {location} is not valid JSON ({exc}): run `cnn-apps prepare` again") from exc


class _DetectionManifestSource(Source):
    """Shared by ``voc`` and ``coco``: prepare scans the annotations once, converts
    every box to xyxy pixels, and writes a manifest JSON (image paths, boxes, labels
    per split) under ``data_dir``; load reads it back and decodes the images with
    tf.data. Missing splits are made by a seeded split of train (``test_fraction``,
    ``val_fraction``); ``max_train_examples`` keeps a seeded subset of train.

    Records that cannot be used are named in ``spec.skipped`` (file and reason) and
    counted: unreadable annotations, missing or undecodable images, and boxes without
    area or wholly outside their image (the image stays, without that box). A box
    partly outside its image is clipped to it. Images without objects are kept."""

    tasks = ("detection",)

    def _manifest_path(self, root: Path) -> Path:
        # the fingerprint plus the absolute root: a relative data.path read from another
        # working directory is another dataset
        key = hashlib.sha256(f"{self.config.data_fingerprint()}:{root.resolve()}".encode()).hexdigest()[:12]
        return Path(self.data.data_dir) / self.name / key / "manifest.json"

    def _complete_splits(self, records: dict) -> dict:
        fractions = {}
        if "test" not in records:
            fractions["test"] = self.data.test_fraction
        if "validation" not in records:
            fractions["validation"] = self.data.val_fraction
        train = records["train"]
        if fractions:
            parts = _random_split(train, fractions, self.data.seed)
            for name in fractions:
                records[name] = parts[name]
            train = parts["rest"]
        if self.data.max_train_examples and self.data.max_train_examples < len(train):
            keep = np.random.default_rng(self.data.seed).permutation(len(train))[:self.data.max_train_examples]
            train = [train[i] for i in sorted(keep)]
        records["train"] = train
        return records

    def _finish(self, root: Path, records: dict, class_names: list, skipped: list, extra: dict,
                name: str, tally: dict | None = None) -> DatasetSpec:
        """Write the manifest and make the spec from ``{split: [record]}``; a record is a dict
        ``path, width, height, boxes (list of xyxy), labels`` (and what else the source keeps).
        ``tally``: ``{extra key: record -> int}``, summed per split into ``extra``."""
        if not records.get("train"):
            raise DataError(f"{root}: no usable training images{skipped_summary(skipped)}")
        records = self._complete_splits(records)
        manifest = self._manifest_path(root)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        splits = {s: records[s] for s in SPLITS if records.get(s)}
        manifest.write_text(json.dumps({"source": self.name, "root": str(root.resolve()),
                                        "class_names": class_names, "splits": splits}), encoding="utf-8")
        counts = {s: len(r) for s, r in splits.items()}
        class_counts = {s: _class_counts([lab for rec in r for lab in rec["labels"]], class_names)
                        for s, r in splits.items()}
        tally = {"images_without_objects": lambda rec: int(not rec["labels"]), **(tally or {})}
        extra = {**extra, **{key: {s: sum(count(rec) for rec in r) for s, r in splits.items()}
                             for key, count in tally.items()}}
        channels = self.data.channels or 3
        return self._spec(class_names=list(class_names), image_shape=[None, None, channels], counts=counts,
                          class_counts=class_counts, location=str(manifest.resolve()), skipped=skipped,
                          extra=extra, name=name)

    def load(self, spec: DatasetSpec, split: str):
        tf = _tf()
        manifest = read_manifest(spec.location)
        records = manifest["splits"].get(split, [])
        lengths = [len(r["labels"]) for r in records]
        boxes = np.asarray([b for r in records for b in r["boxes"]], np.float32).reshape(-1, 4)
        labels = np.asarray([v for r in records for v in r["labels"]], np.int64)
        channels = spec.channels
        ds = tf.data.Dataset.from_tensor_slices({
            "path": tf.constant([r["path"] for r in records], tf.string),  # typed even when empty
            "boxes": tf.RaggedTensor.from_row_lengths(boxes, lengths),
            "labels": tf.RaggedTensor.from_row_lengths(labels, lengths)})

        def decode(x):
            return {"image": decode_image_file(x["path"], channels), "boxes": tf.reshape(x["boxes"], (-1, 4)),
                    "labels": tf.reshape(x["labels"], (-1,))}

        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class VocSource(_DetectionManifestSource):
    """A Pascal VOC-style folder: ``root/Annotations/<id>.xml``, ``root/JPEGImages/``,
    and optionally ``root/ImageSets/Main/{train,val,trainval,test}.txt``.

    * Boxes: the XML's 1-based inclusive ``xmin..xmax`` become xyxy pixels with
      ``x1 = xmin - 1, x2 = xmax`` (and so for y; :func:`voc_box_to_xyxy`).
    * Classes: the sorted ``name`` values of the objects; the 20 VOC classes (in
      their usual, alphabetical, order) when all names are VOC classes and the
      folder is named like ``VOC2007`` or all 20 occur, so labels match real VOC.
    * ``difficult`` objects are left out of the targets (VOC's evaluation ignores
      them too) unless ``data.keep_difficult``; they are counted per split in
      ``extra["difficult_boxes"]``, and the manifest keeps them per image as
      ``difficult_boxes`` / ``difficult_labels`` for an evaluation that wants them.
    * Splits: ``train.txt``, ``val.txt``, ``test.txt`` when present (``trainval.txt``
      minus ``val.txt`` is train when ``train.txt`` is missing); else a seeded split.
    """

    name = "voc"

    def _root(self) -> Path:
        if not self.data.path:
            raise ConfigError("data.path: set it to the VOC folder holding Annotations/ and JPEGImages/ "
                              "(data.source=voc)")
        root = Path(self.data.path).expanduser()
        if not (root / "Annotations").is_dir():
            raise DataError(f"data.path {root} has no Annotations/ folder: not a VOC-style folder "
                            "(Annotations/*.xml, JPEGImages/*.jpg)")
        return root

    @staticmethod
    def _read_set(path: Path) -> list:
        ids = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.append(line.split()[0])
        return ids

    def _split_ids(self, root: Path) -> dict:
        main = root / "ImageSets" / "Main"
        sets = {n: self._read_set(main / f"{n}.txt") for n in ("train", "val", "trainval", "test")
                if (main / f"{n}.txt").is_file()}
        if not sets:
            return {"train": sorted(p.stem for p in (root / "Annotations").glob("*.xml"))}
        ids = {_VOC_SETS[n]: v for n, v in sets.items() if n in _VOC_SETS}
        if "train" not in ids and "trainval" in sets:
            val = set(ids.get("validation", []))
            ids["train"] = [i for i in sets["trainval"] if i not in val]
        if "train" not in ids:
            raise DataError(f"{main} has {', '.join(f'{n}.txt' for n in sets)} but no train.txt or trainval.txt")
        return ids

    def _image_path(self, root: Path, image_id: str, filename: str | None) -> Path:
        folder = root / "JPEGImages"
        if filename and (folder / filename).is_file():
            return folder / filename
        for ext in IMAGE_EXTENSIONS:
            if (folder / f"{image_id}{ext}").is_file():
                return folder / f"{image_id}{ext}"
        return folder / (filename or f"{image_id}.jpg")  # missing: reported by the caller

    @staticmethod
    def parse_xml(path: Path) -> dict:
        """One VOC annotation: ``filename``, ``width``, ``height`` (None when absent) and
        ``objects`` [{``name``, ``difficult``, ``box`` (xyxy pixels) or ``error``}].
        Raises DataError when the file is not VOC XML."""
        try:
            if path.stat().st_size == 0:
                raise DataError("empty file (0 bytes): not VOC XML; remove it or write its <annotation>")
            tree = ET.parse(path)
        except (ET.ParseError, OSError) as exc:
            raise DataError(f"not valid XML: {exc}") from exc
        ann = tree.getroot()
        if ann.tag != "annotation":
            raise DataError(f"root element is <{ann.tag}>, not <annotation>")

        def number(node, tag):
            text = node.findtext(tag)
            if text is None or not text.strip():
                raise ValueError(f"no <{tag}>")
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"<{tag}> {text.strip()!r} is not a number") from None

        size = ann.find("size")
        try:
            width, height = (int(number(size, "width")), int(number(size, "height"))) if size is not None \
                else (None, None)
        except (ValueError, OverflowError) as exc:
            raise DataError(f"bad <size>: {exc}") from exc
        objects = []
        for k, obj in enumerate(ann.findall("object")):
            name = (obj.findtext("name") or "").strip()
            item = {"name": name, "difficult": (obj.findtext("difficult") or "0").strip() == "1", "index": k}
            box = obj.find("bndbox")
            try:
                if not name:
                    raise ValueError("no <name>")
                if box is None:
                    raise ValueError("no <bndbox>")
                raw = [number(box, t) for t in ("xmin", "ymin", "xmax", "ymax")]
                item["raw"] = raw
                item["box"] = voc_box_to_xyxy(*raw)
            except ValueError as exc:
                item["error"] = str(exc)
            objects.append(item)
        return {"filename": (ann.findtext("filename") or "").strip() or None,
                "width": width or None, "height": height or None, "objects": objects}

    def prepare(self) -> DatasetSpec:
        root = self._root()
        ids = self._split_ids(root)
        skipped, parsed = [], {}
        for split, split_ids in ids.items():
            parsed[split] = []
            for image_id in split_ids:
                xml_path = root / "Annotations" / f"{image_id}.xml"
                if not xml_path.is_file():
                    skipped.append({"file": str(xml_path), "reason": "annotation file not found (listed in "
                                    f"ImageSets/Main for {split})"})
                    continue
                try:
                    ann = self.parse_xml(xml_path)
                except DataError as exc:
                    skipped.append({"file": str(xml_path), "reason": str(exc)})
                    continue
                image_path = self._image_path(root, image_id, ann["filename"])
                size, reason = _image_size(image_path)
                if reason:
                    skipped.append({"file": str(image_path), "reason": f"{reason} (annotation {xml_path.name})"})
                    continue
                if ann["width"] and (ann["width"], ann["height"]) != size:
                    skipped.append({"file": str(xml_path), "reason": f"<size> {ann['width']}x{ann['height']} "
                                    f"differs from the image's {size[0]}x{size[1]} ({image_path.name})"})
                    continue
                parsed[split].append((xml_path, image_path, size, ann))
        found = sorted({o["name"] for v in parsed.values() for *_, ann in v for o in ann["objects"]
                        if "error" not in o})
        class_names = found
        if found and set(found) <= set(VOC_CLASSES) and \
                (len(found) == len(VOC_CLASSES) or re.fullmatch(r"VOC\d{4}", root.name)):
            class_names = list(VOC_CLASSES)
        index = {c: i for i, c in enumerate(class_names)}
        records = {}
        for split, items in parsed.items():
            records[split] = []
            for xml_path, image_path, (w, h), ann in items:
                rec = {"path": str(image_path.resolve()), "width": w, "height": h, "boxes": [], "labels": [],
                       "difficult_boxes": [], "difficult_labels": []}
                for o in ann["objects"]:
                    where = f"object {o['index']} ({o['name'] or 'no name'})"
                    if "error" in o:
                        skipped.append({"file": str(xml_path), "reason": f"{where}: {o['error']}"})
                        continue
                    box, reason = _clip_box(o["box"], w, h)
                    if reason:
                        xmin, ymin, xmax, ymax = o["raw"]
                        skipped.append({"file": str(xml_path), "reason": f"{where}: {reason} "
                                        f"(xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g})"})
                        continue
                    if o["difficult"] and not self.data.keep_difficult:
                        rec["difficult_boxes"].append(box)
                        rec["difficult_labels"].append(index[o["name"]])
                    else:
                        rec["boxes"].append(box)
                        rec["labels"].append(index[o["name"]])
                records[split].append(rec)
        if not class_names:
            raise DataError(f"{root}: no objects with a name in any annotation (see the skipped records)")
        return self._finish(root, records, class_names, skipped, {}, name=root.name or "voc",
                            tally={"difficult_boxes": lambda rec: len(rec["difficult_labels"])})


class CocoSource(_DetectionManifestSource):
    """A COCO instances JSON (``data.path``) with images under ``data.image_dir``
    (default: the JSON's folder), joined with each image's ``file_name``.

    * Boxes: COCO ``[x, y, width, height]`` become xyxy pixels (:func:`coco_box_to_xyxy`).
    * Labels: category ids, sorted, mapped to 0..K-1; class names are the
      categories' names in that order (``extra["category_ids"]`` keeps the ids).
    * ``iscrowd`` annotations are left out of the targets and counted per split in
      ``extra["crowd_annotations"]``; images without annotations are kept (valid
      empty samples).
    * Splits: one JSON is split by seed into train / validation (``val_fraction``) /
      test (``test_fraction``) images.
    """

    name = "coco"

    def _json_path(self) -> Path:
        if not self.data.path:
            raise ConfigError("data.path: set it to a COCO instances JSON, e.g. "
                              "annotations/instances_val2017.json (data.source=coco)")
        path = Path(self.data.path).expanduser()
        if not path.is_file():
            raise DataError(f"data.path {path} is not a file: give the COCO annotation JSON")
        return path

    def prepare(self) -> DatasetSpec:
        path = self._json_path()
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes): give a COCO instances JSON")
        try:
            coco = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(coco, dict):
            raise DataError(f"{path}: not a COCO instances file (the top level is a {type(coco).__name__}, not an "
                            "object with images, annotations and categories lists)")
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)]
        if missing:
            raise DataError(f"{path}: not a COCO instances file (no {', '.join(missing)} list)")
        image_dir = Path(self.data.image_dir).expanduser() if self.data.image_dir else path.parent
        categories = self._categories(path, coco["categories"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        class_names = [str(c["name"]) for c in categories]
        skipped, images, known_images = [], {}, set()
        for k, im in enumerate(coco["images"]):
            im_id = im.get("id") if isinstance(im, dict) else None
            where = f"images[{k}]" + (f" (id {im_id})" if _is_id(im_id) else "")
            problem = None
            if not isinstance(im, dict):
                problem = f"is a {type(im).__name__}, not an object with id and file_name"
            elif not _is_id(im_id):
                problem = f"id {im_id!r} is not an integer or string"
            elif im_id in known_images:
                problem = f"id {im_id} appears again (the first one is kept)"
            elif not isinstance(im.get("file_name"), str) or not im["file_name"].strip():
                problem = f"file_name {im.get('file_name')!r} is not a file name"
            if problem:
                skipped.append({"file": str(path), "reason": f"{where}: {problem}"})
                continue
            known_images.add(im_id)
            file = image_dir / im["file_name"]
            size, reason = _image_size(file)
            if reason:
                skipped.append({"file": str(file), "reason": f"{reason} (image id {im_id})"})
                continue
            declared = (im.get("width"), im.get("height"))
            if all(v is not None for v in declared):
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in declared):
                    skipped.append({"file": str(path), "reason": f"{where}: width {declared[0]!r} and height "
                                    f"{declared[1]!r} are not numbers"})
                    continue
                if tuple(int(v) for v in declared) != size:
                    skipped.append({"file": str(file), "reason": f"{path.name} says {declared[0]}x{declared[1]}, "
                                    f"the image is {size[0]}x{size[1]} (image id {im_id})"})
                    continue
            images[im_id] = {"path": str(file.resolve()), "width": size[0], "height": size[1],
                             "boxes": [], "labels": [], "crowd": 0}
        for k, ann in enumerate(coco["annotations"]):
            if not isinstance(ann, dict):
                skipped.append({"file": str(path), "reason": f"annotations[{k}] is a {type(ann).__name__}, not an "
                                "object with image_id, category_id and bbox"})
                continue
            where = f"annotation {ann.get('id')}" if _is_id(ann.get("id")) else f"annotations[{k}]"
            image_id = ann.get("image_id")
            rec = images.get(image_id) if _is_id(image_id) else None
            if rec is None:
                if not _is_id(image_id) or image_id not in known_images:
                    skipped.append({"file": str(path), "reason": f"{where}: image_id {image_id!r} "
                                    "is not in images"})
                continue  # its image was skipped already, and named
            if ann.get("iscrowd"):
                rec["crowd"] += 1
                continue
            category = ann.get("category_id")
            if not _is_id(category) or category not in index:
                skipped.append({"file": str(path), "reason": f"{where}: category_id {category!r} "
                                f"is not in categories (ids {', '.join(str(c) for c in index)})"})
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
                skipped.append({"file": str(path), "reason": f"{where}: bbox {bbox!r} is not [x, y, w, h] numbers"})
                continue
            box, reason = _clip_box(coco_box_to_xyxy(*bbox), rec["width"], rec["height"])
            if reason:
                skipped.append({"file": rec["path"], "reason": f"{where}: {reason} (bbox {bbox})"})
                continue
            rec["boxes"].append(box)
            rec["labels"].append(index[category])
        records = {"train": list(images.values())}  # in the JSON's order
        return self._finish(path, records, class_names, skipped, {"category_ids": [c["id"] for c in categories]},
                            name=path.stem, tally={"crowd_annotations": lambda rec: rec["crowd"]})

    @staticmethod
    def _categories(path: Path, categories: list) -> list:
        """The categories sorted by id; a DataError naming the first bad entry (they are the
        class list, so one bad entry is not skipped)."""
        if not categories:
            raise DataError(f"{path}: the categories list is empty")
        seen = set()
        for k, c in enumerate(categories):
            if not isinstance(c, dict):
                raise DataError(f"{path}: categories[{k}] is a {type(c).__name__}, not an object with id and name")
            if not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
                raise DataError(f"{path}: categories[{k}] has id {c.get('id')!r}: category ids are integers")
            if c["id"] in seen:
                raise DataError(f"{path}: categories[{k}]: id {c['id']} appears twice")
            if not isinstance(c.get("name"), str) or not c["name"].strip():
                raise DataError(f"{path}: categories[{k}] (id {c['id']}) has no name")
            seen.add(c["id"])
        return sorted(categories, key=lambda c: c["id"])


def _is_id(value) -> bool:
    """A COCO id: an integer (or a string, as some exporters write them), never a bool or list."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)

SOURCES = {s.name: s for s in (ShapesSource, FolderSource, FashionMnistSource, TfdsSource,
                                 DigitsSource, OpenCvDigitsSource, VocSource, CocoSource)}
# ``masks`` (segmentation folders) subclasses Source in its own module and adds itself to SOURCES;
# a plain import at the end works whichever of the two modules is imported first.
import cnn_apps.data.mask_folders  # noqa: E402,F401


def get_source(config: Config) -> Source:
    try:
        cls = SOURCES[config.data.source]
    except KeyError:  # guarded by the config's choices; kept for direct callers
        raise ConfigError(f"data.source '{config.data.source}' is not one of {', '.join(SOURCES)}") from None
    return cls(config)
