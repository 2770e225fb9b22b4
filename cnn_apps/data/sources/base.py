"""The base of every data source, and the table that finds one by ``data.source``.

A source has ``prepare() -> DatasetSpec`` (build or scan once, count, report bad records)
and ``load(spec, split) -> tf.data.Dataset``. Elements are dicts:

* classification: ``image`` (H, W, C) uint8, ``label`` () int64;
* detection: ``image``, ``boxes`` (N, 4) float32 xyxy pixels, ``labels`` (N,) int64 and
  ``ignore`` (N,) bool: an object that is an ignore region (VOC difficult, COCO crowd), left
  out of the training targets and ignored by the evaluation as the VOC devkit and COCOeval do;
* segmentation: ``image``, ``mask`` (H, W, 1) uint8 (0 background, k+1 class k,
  255 ignore).

A source module registers its class with ``@register_source("name")``;
:func:`get_source` builds the one a config names. Importing
:mod:`cnn_apps.data.sources` imports every source module, so all are registered.
"""

from __future__ import annotations

import abc
import os

from cnn_apps.config import Config
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.errors import ConfigError


# TensorFlow and TFDS are imported when first needed, so importing the sources stays cheap.
def _tf():
    import tensorflow as tf

    return tf


def _quiet_tfds():
    import tensorflow_datasets as tfds

    if not os.isatty(2):
        tfds.disable_progress_bar()
    return tfds


class Source(abc.ABC):
    """Base class; subclasses set ``name`` and implement ``prepare`` and ``load``."""

    name = ""
    tasks = ("classification",)
    selects_classes = False  # True: prepare and load honour data.classes

    def __init__(self, config: Config):
        if config.task not in self.tasks:
            raise ConfigError(
                f"data.source '{self.name}' supports task {', '.join(self.tasks)}, not '{config.task}'"
            )
        if config.data.classes is not None and not self.selects_classes:
            which = sorted(n for n, cls in SOURCES.items() if cls.selects_classes)
            raise ConfigError(
                f"data.classes: data.source '{self.name}' cannot keep a subset of its classes; the sources "
                f"that can: {', '.join(which)}"
            )
        self.config = config
        self.data = config.data

    @abc.abstractmethod
    def prepare(self) -> DatasetSpec:
        """Build or scan the data once; counts, classes and skipped records."""

    @abc.abstractmethod
    def load(self, spec: DatasetSpec, split: str):
        """One split as a tf.data.Dataset of element dicts (see the module docstring)."""

    def coco_ground_truth(self, spec: DatasetSpec, split: str) -> dict | None:
        """For a source read from a COCO annotation file: ``{"annotation_file", "image_ids",
        "category_ids"}`` of ``split``, so that detections at the source resolution are scored
        by pycocotools against that file itself. None (the default): the evaluation writes its
        own ground-truth JSON from the split."""
        return None

    def _spec(self, **kwargs) -> DatasetSpec:
        import dataclasses

        kwargs.setdefault("name", self.name)
        return DatasetSpec(
            source=self.name,
            task=self.config.task,
            fingerprint=self.config.data_fingerprint(),
            data=dataclasses.asdict(self.data),
            **kwargs,
        )


SOURCES: dict[str, type[Source]] = {}  # data.source name -> Source class, filled by @register_source


def register_source(name: str):
    """Class decorator: ``@register_source("folder")`` makes ``data.source: folder`` build
    that class (whose ``name`` is the same)."""

    def wrap(cls: type[Source]) -> type[Source]:
        if cls.name != name:
            raise ValueError(f"source class {cls.__name__} has name '{cls.name}', registered as '{name}'")
        if name in SOURCES and SOURCES[name] is not cls:
            raise ValueError(f"source '{name}' is registered twice")
        SOURCES[name] = cls
        return cls

    return wrap


def get_source(config: Config) -> Source:
    try:
        cls = SOURCES[config.data.source]
    except KeyError:  # guarded by the config's choices; kept for direct callers
        raise ConfigError(f"data.source '{config.data.source}' is not one of {', '.join(SOURCES)}") from None
    return cls(config)
