"""Do our zoo backbones run as fast as keras.applications' own?

Builds our ``vgg16`` and ``resnet50`` and keras.applications' VGG16 / ResNet50 (weights=None)
as the same architecture (VGG: no FC dropout, which keras' lacks; ResNet-50:
``conv_bias=True``), same input size, batch and 1000 classes, in one process, and times

* inference: ``predict_on_batch`` (compiled forward pass), images/s;
* training: ``train_on_batch`` (SGD, sparse cross-entropy), images/s;

after one untimed warm-up call each. Steps alternate ours / keras.applications one by one
(``steps * rounds`` of each) and the median step counts, so a busy neighbour hurts both
alike. Prints ``ours / keras`` ratios (1.0 = same speed) and the zoo's parameter/multiply-add
table at paper size, and writes ``benchmarks/results/backbones.json``. Fed with NumPy arrays,
so it runs under any Keras backend (``KERAS_BACKEND=jax`` without TensorFlow installed).

    python benchmarks/backbones.py [--image-size 64] [--batch 8] [--steps 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PAIRS = {  # ours (registry name, extra args) vs keras.applications constructor
    "vgg16": ({"dropout": 0.0}, "VGG16"),
    "resnet50": ({"conv_bias": True}, "ResNet50"),
}


def timed_steps(models: dict, x, y, steps: int, rounds: int) -> dict:
    """Per-step wall times of inference and training for each model, one step of each model
    in turn (first mover alternating), after one untimed call of each compiled function.
    Returns {who: {"infer": [s, ...], "train": [s, ...]}}."""
    kinds = {"infer": lambda m: m.predict_on_batch(x), "train": lambda m: m.train_on_batch(x, y)}
    for model in models.values():
        for run in kinds.values():
            run(model)  # trace/compile
    times = {who: {kind: [] for kind in kinds} for who in models}
    order = list(models)
    for kind, run in kinds.items():
        for i in range(steps * rounds):
            for who in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                run(models[who])
                times[who][kind].append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and kind, per round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="repeats of --steps (more samples for the median)"
    )
    parser.add_argument(
        "--models", default=",".join(PAIRS), help="comma-separated subset of " + ",".join(PAIRS)
    )
    parser.add_argument("--no-table", action="store_true", help="skip the paper-size params/MACs table")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/backbones.json"))
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from cnn_apps import registry
    from cnn_apps.backbones.flops import count_macs
    from cnn_apps.backbones.zoo import zoo_table

    size, batch = args.image_size, args.batch
    rng = np.random.default_rng(0)
    x = rng.uniform(-120, 130, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 1000, (batch,)).astype("int32")

    rows = []
    for name in args.models.split(","):
        ours_args, constructor = PAIRS[name]
        keras.utils.set_random_seed(0)
        ours = registry.get("backbone", name)(
            input_shape=(size, size, 3), include_top=True, num_classes=1000, **ours_args
        )
        theirs = getattr(keras.applications, constructor)(
            weights=None, input_shape=(size, size, 3), classes=1000
        )
        for model in (ours, theirs):
            model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        times = timed_steps({"ours": ours, "keras": theirs}, x, y, args.steps, args.rounds)
        # images/s from the median step: robust to a busy neighbour on a shared machine
        best = {
            who: {kind: batch / statistics.median(t) for kind, t in kinds.items()}
            for who, kinds in times.items()
        }
        row = {
            "model": name,
            "keras_applications": constructor,
            "ours_args": ours_args,
            "params_ours": int(ours.count_params()),
            "params_keras": int(theirs.count_params()),
            "gmacs_per_image": round(count_macs(ours) / 1e9, 3),
            "ours_infer_images_per_s": round(best["ours"]["infer"], 1),
            "keras_infer_images_per_s": round(best["keras"]["infer"], 1),
            "infer_ratio": round(best["ours"]["infer"] / best["keras"]["infer"], 3),
            "ours_train_images_per_s": round(best["ours"]["train"], 1),
            "keras_train_images_per_s": round(best["keras"]["train"], 1),
            "train_ratio": round(best["ours"]["train"] / best["keras"]["train"], 3),
        }
        rows.append(row)
        print(
            f"{name}: inference {row['ours_infer_images_per_s']} vs {row['keras_infer_images_per_s']} img/s "
            f"(ours/keras {row['infer_ratio']:.2f}x), training {row['ours_train_images_per_s']} vs "
            f"{row['keras_train_images_per_s']} img/s ({row['train_ratio']:.2f}x)",
            flush=True,
        )
        del ours, theirs
        gc.collect()

    table = [] if args.no_table else zoo_table()
    if table:
        print(f"\n{'backbone':<12} {'input':>5} {'params':>13} {'GMACs':>7}")
        for r in table:
            print(f"{r['name']:<12} {r['input_size']:>5} {r['params']:>13,} {r['macs'] / 1e9:>7.2f}")

    result = {
        "benchmark": "backbones",
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "backend_version": importlib.import_module(keras.backend.backend()).__version__,
        "image_size": size,
        "batch_size": batch,
        "steps_timed": args.steps,
        "rounds": args.rounds,
        "results": rows,
        "zoo_paper_size": table,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    from provenance import write_result  # benchmarks/ is on sys.path when run as a script

    out = write_result("backbones", result, Path(args.output))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
