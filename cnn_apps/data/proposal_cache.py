"""Selective-search proposals of a prepared dataset, computed once and cached on disk
(Fast R-CNN's input besides the images).

One ``.npz`` per (dataset fingerprint, split, image size, mode, count) under
``<data.data_dir>/proposals/<fingerprint>/<split>-<size>px-<mode>-<count>.npz`` holding
``proposals`` (N, P, 4) float32 xyxy pixels at the model's input size (-1 rows padding,
P = count), ``counts`` (N,) int32 and ``seconds_per_image`` (the search's measured
time). The search runs on each image after the pipeline's own resize, in the source's
order, so row block i belongs to example i of ``source.load(spec, split)``. A file is
written atomically and recomputed only when missing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_apps.detection.proposals import pad_proposals, selective_search
from cnn_apps.errors import DataError

log = logging.getLogger("cnn_apps")


@dataclass(frozen=True)
class ProposalSettings:
    """How a model's proposals are made: selective search ``mode`` (fast, quality,
    single), ``count`` (P, the fixed number of rows per image) and ``seed``."""

    mode: str = "fast"
    count: int = 200
    seed: int = 0

    @classmethod
    def of(cls, model) -> ProposalSettings | None:
        """The settings of a model that takes proposals (``model.proposal_settings``), else None."""
        settings = getattr(model, "proposal_settings", None)
        return cls(**settings) if settings else None


def propose(images, settings: ProposalSettings) -> tuple[np.ndarray, float]:
    """Selective search on images (an iterable of (H, W, C) arrays) -> ((N, P, 4) float32
    padded with -1, the mean seconds per image)."""
    found, seconds = [], 0.0
    for image in images:
        start = time.perf_counter()
        found.append(
            selective_search(
                np.asarray(image), mode=settings.mode, max_proposals=settings.count, seed=settings.seed
            )
        )
        seconds += time.perf_counter() - start
    padded, _ = pad_proposals(found, settings.count)
    return padded, seconds / max(len(found), 1)


def cache_path(
    data_dir: str | os.PathLike, fingerprint: str, split: str, image_size: int, settings: ProposalSettings
) -> Path:
    name = f"{split}-{int(image_size)}px-{settings.mode}-{int(settings.count)}"
    if settings.seed:
        name += f"-seed{settings.seed}"
    return Path(data_dir) / "proposals" / fingerprint / f"{name}.npz"


def split_proposals(spec, config, split: str, settings: ProposalSettings) -> np.ndarray:
    """(N, P, 4) proposals of one split of a prepared dataset at ``config.data.image_size``,
    from the cache, or computed (and cached) when missing."""
    path = cache_path(config.data.data_dir, spec.fingerprint, split, config.data.image_size, settings)
    if path.is_file():
        try:
            with np.load(path) as data:
                return data["proposals"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: unreadable proposal cache ({exc}); delete it to recompute") from exc
    proposals, per_image = compute_split(spec, config, split, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    counts = ((proposals[..., 2] > proposals[..., 0]) & (proposals[..., 3] > proposals[..., 1])).sum(-1)
    np.savez(
        tmp, proposals=proposals, counts=counts.astype(np.int32), seconds_per_image=np.float64(per_image)
    )
    os.replace(tmp, path)
    log.info(
        "proposals for %s/%s: %d images, %.1f per image (mean), %.1f ms per image, cached in %s",
        spec.fingerprint,
        split,
        len(proposals),
        counts.mean() if len(counts) else 0.0,
        per_image * 1000,
        path,
    )
    return proposals


def compute_split(spec, config, split: str, settings: ProposalSettings) -> tuple[np.ndarray, float]:
    """Run selective search over a split, each image resized as the pipeline resizes it."""
    import dataclasses

    from cnn_apps.config import Config
    from cnn_apps.data.pipeline import resize_example
    from cnn_apps.data.sources import get_source

    size = config.data.image_size
    source = get_source(Config(task=spec.task, data=dataclasses.replace(config.data, source=spec.source)))
    ds = source.load(spec, split).map(lambda ex: resize_example(ex, size)["image"])
    log.info(
        "selective search (%s, top %d) over %s images of split %s at %d px ...",
        settings.mode,
        settings.count,
        spec.counts.get(split, "the"),
        split,
        size,
    )
    return propose(ds.as_numpy_iterator(), settings)
