"""The ``shapes`` dataset as a TFDS builder (``tfds.core.GeneratorBasedBuilder``).

Three named configs, ``classification``, ``detection`` and ``segmentation``, use
the default sizes; :func:`shapes_builder` makes a config for any image size, split
sizes and seed, named ``<task>_<fingerprint>`` so that differently sized datasets
live side by side in the data dir and a matching one is reused, not rebuilt.

Features per task (H = W = ``image_size``):

* classification: ``image`` (H, W, 3) uint8, ``label`` int64 (ClassLabel);
* detection: ``image``, ``boxes`` (N, 4) float32 xyxy pixels, ``labels`` (N,) int64;
* segmentation: ``image``, ``mask`` (H, W, 1) uint8 (0 background, k+1 class k).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from cnn_apps.data.shapes import CLASS_NAMES, make_scene

_SPLITS = {"train": "train_size", "validation": "val_size", "test": "test_size"}


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    task: str = "classification"
    image_size: int = 64
    train_size: int = 4000
    val_size: int = 500
    test_size: int = 500
    max_objects: int = 4
    seed: int = 0


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes on textured noise, generated deterministically (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: circle, square, triangle, star."}
    BUILDER_CONFIGS = [
        ShapesConfig(name=task, task=task, description=f"shapes for {task}")
        for task in ("classification", "detection", "segmentation")
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: ShapesConfig = self.builder_config
        s = cfg.image_size
        features = {"image": tfds.features.Image(shape=(s, s, 3))}
        if cfg.task == "classification":
            features["label"] = tfds.features.ClassLabel(names=CLASS_NAMES)
            keys = ("image", "label")
        elif cfg.task == "detection":
            features["boxes"] = tfds.features.Tensor(shape=(None, 4), dtype=np.float32)
            features["labels"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
            keys = None
        else:
            features["mask"] = tfds.features.Image(shape=(s, s, 1))
            keys = ("image", "mask")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=keys,
            description=__doc__,
            metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg: ShapesConfig = self.builder_config
        return {
            split: self._generate_examples(split, getattr(cfg, attr))
            for split, attr in _SPLITS.items()
            if getattr(cfg, attr) > 0
        }

    def _generate_examples(self, split: str, count: int):
        cfg: ShapesConfig = self.builder_config
        for i in range(count):
            scene = make_scene(cfg.seed, split, i, cfg.image_size, cfg.task, cfg.max_objects)
            example = {"image": scene.image}
            if cfg.task == "classification":
                example["label"] = int(scene.labels[0])
            elif cfg.task == "detection":
                example["boxes"] = scene.boxes
                example["labels"] = scene.labels
            else:
                example["mask"] = scene.mask[..., None]
            yield i, example


def shapes_builder(
    task: str,
    data_dir: str | os.PathLike,
    fingerprint: str,
    *,
    image_size: int,
    train_size: int,
    val_size: int,
    test_size: int,
    max_objects: int,
    seed: int,
) -> Shapes:
    """A builder for these settings; ``download_and_prepare`` is a no-op when it exists."""
    config = ShapesConfig(
        name=f"{task}_{fingerprint}",
        task=task,
        image_size=image_size,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        max_objects=max_objects,
        seed=seed,
        description=f"shapes for {task}, {image_size}px, seed {seed}",
    )
    return Shapes(config=config, data_dir=os.fspath(data_dir))


def prepare_builder(builder: tfds.core.DatasetBuilder) -> bool:
    """Generate the dataset if it is not on disk yet; returns True when it was built now.

    GCS look-ups are switched off: the data is made here, never downloaded.
    """
    if builder.is_prepared():
        return False
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return True
