"""Is the tf.data pipeline fast enough to feed training?

Measures, for one config (default: the shipped shapes classification config):
* the training pipeline's throughput in images/s, cold (first epoch: read, decode,
  resize, fill the cache) and warm (later epochs: cache, shuffle, augment, batch);
* the train step's consumption in images/s (``train_on_batch`` on batches already
  in memory, so no input cost);
and reports ``ratio = warm pipeline / train step``: well above 1 means the input
pipeline is not the bottleneck. Results go to ``benchmarks/results/data_pipeline.json``.

    python benchmarks/data_pipeline.py [--config C] [--set k=v ...] [--batches N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def images_per_second(iterator, batches: int) -> float:
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        x, _ = next(iterator)
        count += int(x.shape[0])
    return count / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "pipelines/configs/shapes_classification.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batches", type=int, default=30, help="batches timed per measurement")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/data_pipeline.json"))
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from cnn_apps import tasks
    from cnn_apps.config import load_config
    from cnn_apps.data.sources import get_source
    from cnn_apps.tasks.inputs import split_dataset
    from cnn_apps.training.fit import compile_model

    config = load_config(args.config, args.overrides)
    spec = get_source(config).prepare()
    batch = config.training.batch_size
    steps_per_epoch = -(-spec.counts["train"] // batch)
    n = min(args.batches, steps_per_epoch)

    ds = split_dataset(spec, config, "train", training=True)
    cold = images_per_second(iter(ds), steps_per_epoch)  # the first pass fills the cache
    warm = images_per_second(iter(ds.repeat()), n)

    task = tasks.for_config(config, spec)  # the model `cnn-apps train` builds for this config
    model = task.build_model()
    compile_model(model, config.training, steps_per_epoch, task.compile_args())
    held = [(tf.constant(x), tf.constant(y)) for x, y in ds.take(min(n, 8))]
    model.train_on_batch(*held[0])  # trace
    start, count = time.perf_counter(), 0
    for i in range(n):
        x, y = held[i % len(held)]
        model.train_on_batch(x, y)
        count += int(x.shape[0])
    train = count / (time.perf_counter() - start)

    result = {
        "benchmark": "data_pipeline",
        "config": os.path.relpath(args.config, ROOT) if args.config.startswith(str(ROOT)) else args.config,
        "batch_size": batch,
        "image_size": config.data.image_size,
        "batches_timed": n,
        "pipeline_cold_images_per_s": round(cold, 1),
        "pipeline_warm_images_per_s": round(warm, 1),
        "train_step_images_per_s": round(train, 1),
        "ratio_pipeline_to_train": round(warm / train, 2),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    from provenance import write_result  # benchmarks/ is on sys.path when run as a script

    write_result("data_pipeline", result, Path(args.output))
    print(json.dumps(result, indent=2))
    print(
        f"pipeline / train step = {result['ratio_pipeline_to_train']:.2f}x "
        f"({'not the bottleneck' if result['ratio_pipeline_to_train'] > 1.5 else 'INPUT-BOUND'})"
    )
    return result


if __name__ == "__main__":
    main()
