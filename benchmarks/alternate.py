"""Shared by the op-level benchmarks (batch_norm.py, pointwise_conv.py, fold_batch_norm.py): torch
loaded before TensorFlow, and sides timed by alternating calls."""

from __future__ import annotations

import os
import statistics
import time


def torch_first():
    """torch with this machine's threads, or None without it. Import it before TensorFlow:
    Triton in PyPI's CUDA torch crashes when loaded after it (see cpu.py)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count())
    return torch


def alternating_medians(sides: dict, steps: int, warmup: int = 2) -> dict[str, float]:
    """``warmup`` untimed calls of each side (tracing), then ``steps`` rounds calling each side
    in turn (a busy machine slows all alike); the median ms per side."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in sides}
    for _ in range(steps):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in times.items()}
