"""The shared base of the ``voc`` and ``coco`` sources: annotations scanned once into a
JSON manifest of xyxy boxes, images decoded by tf.data; boxes clipped to their image."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from cnn_apps.data.sources.base import Source, _tf
from cnn_apps.data.sources.images import decode_image_file
from cnn_apps.data.sources.records import (
    _class_counts,
    _random_split,
    read_manifest,
    skipped_summary,
    write_manifest,
)
from cnn_apps.data.spec import SPLITS, DatasetSpec
from cnn_apps.errors import DataError


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


def _ignore(record: dict) -> list:
    """A record's per-object ignore flags (VOC difficult, COCO crowd); none in an old manifest."""
    return record.get("ignore") or [False] * len(record["labels"])


def _targets(record: dict) -> list:
    """``(label, box)`` of a record's objects that are training targets (not ignore regions)."""
    return [(lab, box) for lab, box, ig in zip(record["labels"], record["boxes"], _ignore(record)) if not ig]


class _DetectionManifestSource(Source):
    """Shared by ``voc`` and ``coco``: prepare scans the annotations once, converts
    every box to xyxy pixels, and writes a manifest JSON (image paths, boxes, labels
    per split) under ``data_dir``; load reads it back and decodes the images with
    tf.data. Missing splits are made by a seeded split of train (``test_fraction``,
    ``val_fraction``); ``max_train_examples`` keeps a seeded subset of train.

    Records that cannot be used are named in ``spec.skipped`` (file and reason) and
    counted: unreadable annotations, missing or undecodable images, and boxes without
    area or wholly outside their image (the image stays, without that box). A box
    partly outside its image is clipped to it. Images without objects are kept.

    A record is ``path, width, height, boxes, labels, ignore`` (one flag per object: an
    ignore region, VOC difficult or COCO crowd) and the source's ``image_id``; elements
    carry ``ignore`` (N,) bool next to ``boxes`` and ``labels``."""

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
            keep = np.random.default_rng(self.data.seed).permutation(len(train))[
                : self.data.max_train_examples
            ]
            train = [train[i] for i in sorted(keep)]
        records["train"] = train
        return records

    def _finish(
        self,
        root: Path,
        records: dict,
        class_names: list,
        skipped: list,
        extra: dict,
        name: str,
        tally: dict | None = None,
    ) -> DatasetSpec:
        """Write the manifest and make the spec from ``{split: [record]}``; a record is a dict
        ``path, width, height, boxes (list of xyxy), labels`` (and what else the source keeps).
        ``tally``: ``{extra key: record -> int}``, summed per split into ``extra``."""
        if not records.get("train"):
            raise DataError(f"{root}: no usable training images{skipped_summary(skipped)}")
        records = self._complete_splits(records)
        manifest = self._manifest_path(root)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        splits = {s: records[s] for s in SPLITS if records.get(s)}
        write_manifest(manifest, self.name, root, class_names, splits)
        counts = {s: len(r) for s, r in splits.items()}
        class_counts = {
            s: _class_counts([lab for rec in r for lab, _ in _targets(rec)], class_names)
            for s, r in splits.items()
        }
        tally = {"images_without_objects": lambda rec: int(not _targets(rec)), **(tally or {})}
        extra = {
            **extra,
            **{
                key: {s: sum(count(rec) for rec in r) for s, r in splits.items()}
                for key, count in tally.items()
            },
        }
        channels = self.data.channels or 3
        return self._spec(
            class_names=list(class_names),
            image_shape=[None, None, channels],
            counts=counts,
            class_counts=class_counts,
            location=str(manifest.resolve()),
            skipped=skipped,
            extra=extra,
            name=name,
        )

    def records(self, spec: DatasetSpec, split: str) -> list:
        """The manifest's records of one split, in the order :meth:`load` yields them."""
        return read_manifest(spec.location)["splits"].get(split, [])

    def load(self, spec: DatasetSpec, split: str):
        tf = _tf()
        records = self.records(spec, split)
        lengths = [len(r["labels"]) for r in records]
        boxes = np.asarray([b for r in records for b in r["boxes"]], np.float32).reshape(-1, 4)
        labels = np.asarray([v for r in records for v in r["labels"]], np.int64)
        ignore = np.asarray([v for r in records for v in _ignore(r)], bool)
        channels = spec.channels
        slices = {
            "path": tf.constant([r["path"] for r in records], tf.string),  # typed even when empty
            "boxes": tf.RaggedTensor.from_row_lengths(boxes, lengths),
            "labels": tf.RaggedTensor.from_row_lengths(labels, lengths),
            "ignore": tf.RaggedTensor.from_row_lengths(ignore, lengths),
        }
        if any(r.get("orientation", 1) != 1 for r in records):  # EXIF-turned photos: turned upright
            slices["orientation"] = tf.constant([r.get("orientation", 1) for r in records], tf.int32)
        ds = tf.data.Dataset.from_tensor_slices(slices)

        def decode(x):
            return {
                "image": decode_image_file(x["path"], channels, x.get("orientation")),
                "boxes": tf.reshape(x["boxes"], (-1, 4)),
                "labels": tf.reshape(x["labels"], (-1,)),
                "ignore": tf.reshape(x["ignore"], (-1,)),
            }

        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
