"""What the stages share: results, data loading for a run, logging helpers."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np

from cnn_apps.config import Config
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.errors import ConfigError

log = logging.getLogger("cnn_apps")


@dataclass
class StageResult:
    """What a stage returns: its MLflow run id and the values worth printing."""

    run_id: str
    stage: str
    outputs: dict = field(default_factory=dict)  # printed by the CLI
    extra: dict = field(default_factory=dict)  # for callers (studies), not printed


def dataset_label(spec: DatasetSpec) -> str:
    return spec.name or spec.source


def check_task(config: Config, supported=("classification", "pretext")) -> None:
    if config.task not in supported:
        raise ConfigError(
            f"task '{config.task}' is not supported by this stage yet (supported: {', '.join(supported)})"
        )


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
):
    """A batched tf.data pipeline for one split of a prepared dataset (the first ``limit``
    examples only, when given). ``proposals``: a
    :class:`~cnn_apps.data.proposal_cache.ProposalSettings` (detection, Fast R-CNN): each
    image also carries its cached selective-search proposals and the inputs become
    ``{"images", "proposals"}``. ``epochs``: ``(first, end)``, one stream of those training
    epochs whose data depends on the epoch number alone (see ``make_pipeline``)."""
    from cnn_apps.data.pipeline import make_pipeline
    from cnn_apps.data.sources import get_source

    # The spec, not the config, says which source holds the data.
    source = get_source(Config(task=spec.task, data=dataclasses.replace(config.data, source=spec.source)))
    ds = source.load(spec, split)
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
    )


def source_config(config: Config) -> Config:
    """The config a data source sees: a pretext task reads its images as classification data."""
    if config.task == "pretext":
        return dataclasses.replace(config, task="classification")
    return config


def training_classes(spec: DatasetSpec, config: Config) -> tuple[list, int]:
    """(class names, training examples) of what the model learns: the spec's, or the pretext's."""
    if config.task == "pretext":
        from cnn_apps.data.pretext import ROTATION_CLASSES

        return list(ROTATION_CLASSES), 4 * spec.counts["train"]
    return list(spec.class_names), spec.counts["train"]


def input_shape(spec: DatasetSpec, config: Config) -> tuple:
    return (config.data.image_size, config.data.image_size, spec.channels)


def metric_key(text: str) -> str:
    """A class name made safe for an MLflow metric name (``T-shirt/top`` -> ``T-shirt_top``)."""
    return re.sub(r"[^0-9A-Za-z_\-.]+", "_", text).strip("_")


def at_model_size(config: Config, model) -> Config:
    """A copy of ``config`` whose ``data.image_size`` is the trained model's input side."""
    from cnn_apps.serving import image_input_shape

    size = int(image_input_shape(model)[0])
    return dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=size))


# ---------------------------------------------------------------------- speed of a model's predict
def batch_images(x) -> np.ndarray:
    """The images of a batch of inputs (a tensor, or ``{"images", "proposals"}``)."""
    return np.asarray(x["images"] if isinstance(x, dict) else x)


def first_examples(x, n: int, numpy: bool = False):
    """The first ``n`` examples of a batch of inputs (NumPy arrays when ``numpy``)."""
    take = (lambda v: np.asarray(v)[:n]) if numpy else (lambda v: v[:n])
    return {k: take(v) for k, v in x.items()} if isinstance(x, dict) else take(x)


def images_per_second(model, ds, batches: int) -> float:
    """Throughput of the compiled ``predict_on_batch`` (a detector's: network, decoding and
    NMS) on ``batches`` loaded batches of ``ds``, after one warm-up batch (tracing)."""
    xs = [x for x, _ in ds.take(batches + 1)]
    model.predict_on_batch(xs[0])
    timed = xs[1:] or xs
    start = time.perf_counter()
    for x in timed:
        model.predict_on_batch(x)
    return float(sum(len(batch_images(x)) for x in timed) / max(time.perf_counter() - start, 1e-9))


def latency_ms(model, ds, repeats: int = 10) -> float:
    """Median time (ms) of one image through the compiled ``predict_on_batch`` (batch 1)."""
    x = first_examples(next(iter(ds))[0], 1)
    model.predict_on_batch(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)
