"""The data a task reads: one split of a prepared dataset as a batched tf.data pipeline, and
the small facts about it that every task needs (input shape, a label for run names)."""

from __future__ import annotations

import dataclasses
import re

from cnn_apps.config import Config
from cnn_apps.data.spec import DatasetSpec


def dataset_label(spec: DatasetSpec) -> str:
    return spec.name or spec.source


def metric_key(text: str) -> str:
    """A class name made safe for an MLflow metric name (``T-shirt/top`` -> ``T-shirt_top``)."""
    return re.sub(r"[^0-9A-Za-z_\-.]+", "_", text).strip("_")


def source_config(config: Config) -> Config:
    """The config a data source sees: a pretext task reads its images as classification data."""
    if config.task == "pretext":
        return dataclasses.replace(config, task="classification")
    return config


def resolution_note(resolution: str) -> str:
    """The line a report opens with: at which resolution (``evaluate.resolution``) it was scored."""
    where = {
        "source": "the source resolution (each original image's pixels)",
        "model": "the model's input resolution (images resized to the model's input)",
    }
    return f"Scored at {where[resolution]}."


def input_shape(spec: DatasetSpec, config: Config) -> tuple:
    return (config.data.image_size, config.data.image_size, spec.channels)


def at_model_size(config: Config, model) -> Config:
    """A copy of ``config`` whose ``data.image_size`` is the trained model's input side."""
    from cnn_apps.serving import image_input_shape

    size = int(image_input_shape(model)[0])
    return dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=size))


def spec_source(spec: DatasetSpec, config: Config):
    """The data source that holds a prepared dataset: the spec's, not the config's."""
    from cnn_apps.data.sources import get_source

    return get_source(Config(task=spec.task, data=dataclasses.replace(config.data, source=spec.source)))


def split_dataset(
    spec: DatasetSpec,
    config: Config,
    split: str,
    *,
    training: bool,
    batch_size: int | None = None,
    limit: int | None = None,
    proposals=None,
    epochs: tuple[int, int] | None = None,
    keep_source: bool = False,
):
    """A batched tf.data pipeline for one split of a prepared dataset (the first ``limit``
    examples only, when given). ``proposals``: a
    :class:`~cnn_apps.data.proposal_cache.ProposalSettings` (detection, Fast R-CNN): each
    image also carries its cached selective-search proposals and the inputs become
    ``{"images", "proposals"}``. ``epochs``: ``(first, end)``, one stream of those training
    epochs whose data depends on the epoch number alone (see ``make_pipeline``).
    ``keep_source`` (detection, segmentation evaluation): the targets also carry the ignore
    regions and the source-resolution truth (see :mod:`cnn_apps.data.pipeline`)."""
    from cnn_apps.data.pipeline import make_pipeline

    ds = spec_source(spec, config).load(spec, split)
    count = spec.counts.get(split)
    boxes = None
    if proposals is not None:
        from cnn_apps.data.proposal_cache import split_proposals

        boxes = split_proposals(spec, config, split, proposals)
    if limit is not None and count is not None and limit < count:
        ds, count = ds.take(limit), limit
        boxes = None if boxes is None else boxes[:limit]
    task, augment = spec.task, config.augment
    if config.task == "pretext":  # rotation labels instead of the source's: 4 examples per image
        from cnn_apps.data.pipeline import resize_example
        from cnn_apps.data.pretext import rotation_examples

        size = config.data.image_size
        ds = rotation_examples(ds.map(lambda ex: resize_example(ex, size)))
        count = None if count is None else 4 * count
        # a flipped rotation looks like another rotation: flipping would make labels ambiguous
        task, augment = "classification", dataclasses.replace(augment, flip=False)
    return make_pipeline(
        ds,
        task=task,
        image_size=config.data.image_size,
        batch_size=batch_size or config.training.batch_size,
        training=training,
        augment=augment,
        seed=config.training.seed,
        num_examples=count,
        channels=spec.channels,
        cache=config.training.cache,
        proposals=boxes,
        epochs=epochs,
        keep_source=keep_source,
    )
