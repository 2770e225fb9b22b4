"""The speed of a model's compiled ``predict_on_batch`` (a detector's: network, decoding and
NMS), measured the same way for every task: throughput at the evaluation batch size and
latency at batch 1, on batches already loaded (the input pipeline is not timed)."""

from __future__ import annotations

import time

import numpy as np


def batch_images(x) -> np.ndarray:
    """The images of a batch of inputs (a tensor, or ``{"images", "proposals"}``)."""
    return np.asarray(x["images"] if isinstance(x, dict) else x)


def first_examples(x, n: int, numpy: bool = False):
    """The first ``n`` examples of a batch of inputs (NumPy arrays when ``numpy``)."""
    take = (lambda v: np.asarray(v)[:n]) if numpy else (lambda v: v[:n])
    return {k: take(v) for k, v in x.items()} if isinstance(x, dict) else take(x)


def images_per_second(model, ds, batches: int) -> float:
    """Throughput of the compiled ``predict_on_batch`` on ``batches`` loaded batches of ``ds``,
    after one warm-up batch (tracing and allocation)."""
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
