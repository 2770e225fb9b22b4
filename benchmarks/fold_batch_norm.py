"""What folding batch norm into the convolutions does to inference, in float32 and bfloat16.

A TensorFlow profile of our ResNet-50's inference found its graph optimizer folding each batch
norm (and the ReLU after it) into the convolution before it in float32, but not under Keras'
``mixed_bfloat16`` policy, where the separate batch norms, ReLUs, residual adds and weight
casts took about twice the convolutions' own time. This times ``predict_on_batch`` of the same
``resnet50_v1_5`` (as ``cpu.py`` builds it, 224 px) with its batch norms as they are and folded
(:func:`cnn_apps.backbones.fold_batch_norm.fold_batch_norm`), calls alternating, medians, and
checks that both give the same logits. Ratios are ``unfolded / folded`` in time (> 1: folding
is faster). Writes ``benchmarks/results/fold_batch_norm.json``.

    python benchmarks/fold_batch_norm.py [--batch 8] [--steps 10] [--size 224]
        [--precision float32|bfloat16|both] [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed calls per side")
    parser.add_argument("--size", type=int, default=224, help="input side (tests: smaller)")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from alternate import alternating_medians
    from provenance import write_result

    import cnn_apps.backbones  # noqa: F401  (registers the backbones)
    from cnn_apps import registry
    from cnn_apps.backbones.fold_batch_norm import FoldedBatchNorm, fold_batch_norm

    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    rows = []
    for precision in precisions:
        keras.utils.set_random_seed(0)
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
        try:
            model = registry.get("backbone", "resnet50_v1_5")(
                input_shape=(args.size, args.size, 3),
                include_top=True,
                num_classes=1000,
                classifier_activation=None,
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")
        # statistics away from the initial 0 / 1, as a trained network has them
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.moving_mean.shape[0]
                layer.moving_mean.assign(rng.normal(0.0, 0.1, c))
                layer.moving_variance.assign(rng.uniform(0.5, 1.5, c))
        folded = fold_batch_norm(model)
        predict = {"unfolded": model.predict_on_batch, "folded": folded.predict_on_batch}
        outputs = {name: np.asarray(fn(images), np.float32) for name, fn in predict.items()}
        sides = {name: functools.partial(fn, images) for name, fn in predict.items()}
        ms = alternating_medians(sides, args.steps, warmup=1)
        scale = float(np.abs(outputs["unfolded"]).max())
        row = {
            "model": "resnet50_v1_5",
            "precision": precision,
            "image_size": args.size,
            "batch": args.batch,
            "batch_norms_folded": sum(isinstance(layer, FoldedBatchNorm) for layer in folded.layers),
            "unfolded_ms": round(ms["unfolded"], 2),
            "folded_ms": round(ms["folded"], 2),
            "unfolded_over_folded": round(ms["unfolded"] / ms["folded"], 3),
            "max_logit_difference": float(np.abs(outputs["folded"] - outputs["unfolded"]).max()),
            "max_logit": scale,
        }
        rows.append(row)
        print(
            f"{precision:8s} unfolded {row['unfolded_ms']:8.1f} ms  folded {row['folded_ms']:8.1f} ms  "
            f"x{row['unfolded_over_folded']:.2f}  (max logit difference {row['max_logit_difference']:.3g} "
            f"of {scale:.3g})"
        )
    payload = {"benchmark": "fold_batch_norm", "steps": args.steps, "rows": rows}
    path = write_result("fold_batch_norm", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
