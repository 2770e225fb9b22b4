"""``shapes``: the embedded synthetic dataset (all tasks), built as a TFDS dataset in
``data_dir`` by :mod:`cnn_apps.data.shapes_tfds`."""

from __future__ import annotations

import os

import numpy as np

from cnn_apps.data.sources.base import Source, _quiet_tfds, register_source
from cnn_apps.data.sources.images import set_channels
from cnn_apps.data.sources.records import _class_counts
from cnn_apps.data.spec import SPLITS, DatasetSpec
from cnn_apps.errors import ConfigError


@register_source("shapes")
class ShapesSource(Source):
    """The embedded synthetic dataset, built as a TFDS dataset in ``data_dir``."""

    name = "shapes"
    tasks = ("classification", "detection", "segmentation")

    def _builder(self, fingerprint: str):
        from cnn_apps.data.shapes_tfds import shapes_builder

        _quiet_tfds()
        d = self.data
        return shapes_builder(
            self.config.task,
            d.data_dir,
            fingerprint,
            image_size=d.image_size,
            train_size=d.train_size,
            val_size=d.val_size,
            test_size=d.test_size,
            max_objects=d.max_objects,
            seed=d.seed,
        )

    def prepare(self) -> DatasetSpec:
        from cnn_apps.data.shapes import CLASS_NAMES
        from cnn_apps.data.shapes_tfds import prepare_builder

        if self.data.image_size < 16:
            raise ConfigError(f"data.image_size: shapes needs at least 16 px, got {self.data.image_size}")
        fingerprint = self.config.data_fingerprint()
        builder = self._builder(fingerprint)
        built = prepare_builder(builder)
        counts = {s: int(builder.info.splits[s].num_examples) for s in SPLITS if s in builder.info.splits}
        self._empty = {}  # detection: split -> images without objects, filled by _count
        class_counts = {s: self._count(builder, s, CLASS_NAMES) for s in counts}
        extra = {"tfds_config": builder.builder_config.name, "built_now": built}
        if self.config.task == "detection":
            extra["images_without_objects"] = dict(self._empty)
        s = self.data.image_size
        channels = self.data.channels or 3
        return self._spec(
            class_names=list(CLASS_NAMES),
            image_shape=[s, s, channels],
            counts=counts,
            class_counts=class_counts,
            location=os.path.abspath(builder.data_dir),
            extra=extra,
        )

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
            pixels += np.bincount(x["mask"].ravel(), minlength=len(pixels))[: len(pixels)]
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
