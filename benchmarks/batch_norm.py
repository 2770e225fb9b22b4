"""Where ResNet-50's CPU training time goes against torchvision: batch normalization.

``benchmarks/cpu.py`` found our ResNet-50 behind torchvision's in training (and in bfloat16
inference) while VGG-16, which has no batch norm, was level or ahead. This times one training
step (forward and backward) of batch norm alone, at ResNet-50's activation shapes, four ways
on the same CPU, alternating calls:

* ``keras``: ``keras.layers.BatchNormalization`` in training mode inside a ``tf.function``
  (Keras 3 computes the moments and the normalization as separate ops);
* ``cnn_apps``: :class:`cnn_apps.backbones.batch_norm.FusedBatchNormalization`, the layer our
  backbones use since this benchmark found the cost: Keras' layer calling the fused kernel;
* ``tf_fused``: TensorFlow's fused kernel itself (``tf.compat.v1.nn.fused_batch_norm``, what
  tf.keras 2 used), in the same ``tf.function``;
* ``torch``: ``torch.nn.BatchNorm2d`` in training mode on channels-last tensors (when torch is
  importable; it is loaded before TensorFlow, see ``cpu.py``).

Each row is one (shape, precision); ``--precision bfloat16`` feeds bfloat16 activations (Keras
under ``mixed_bfloat16`` keeps batch norm's arithmetic in float32, with casts around it; the
fused kernel takes bfloat16 with float32 statistics; torch under autocast). Ratios are
``keras / other`` in time (> 1: the other is faster). Writes ``benchmarks/results/batch_norm.json``.

    python benchmarks/batch_norm.py [--batch 8] [--steps 20] [--precision float32|bfloat16|both] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# ResNet-50's (keras.applications'); also the fused kernel's floor, below which our layer falls back
EPSILON = 1.001e-5
# (H, W, C) of ResNet-50's batch norms at 224 px, with how many of each the network has
SHAPES = ((112, 112, 64, 1), (56, 56, 64, 6), (56, 56, 256, 4), (28, 28, 128, 8), (28, 28, 512, 5),
          (14, 14, 256, 12), (14, 14, 1024, 7), (7, 7, 512, 6), (7, 7, 2048, 4))  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed calls per side and shape")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes (tests)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from alternate import alternating_medians, torch_first

    torch = torch_first()  # before TensorFlow
    import keras
    import numpy as np
    import tensorflow as tf
    from provenance import write_result

    from cnn_apps.backbones.batch_norm import FusedBatchNormalization

    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    rows = []
    for precision in precisions:
        for h, w, c, count in SHAPES[: args.shapes]:
            dtype = tf.bfloat16 if precision == "bfloat16" else tf.float32
            x = tf.constant(np.random.default_rng(0).standard_normal((args.batch, h, w, c)), dtype)
            keras.mixed_precision.set_global_policy(
                "mixed_bfloat16" if precision == "bfloat16" else "float32"
            )
            layers = {
                "keras": keras.layers.BatchNormalization(momentum=0.9, epsilon=EPSILON),
                "cnn_apps": FusedBatchNormalization(momentum=0.9, epsilon=EPSILON),
            }
            for layer in layers.values():
                layer.build(x.shape)
            keras.mixed_precision.set_global_policy("float32")
            gamma, beta = tf.Variable(tf.ones(c)), tf.Variable(tf.zeros(c))

            def layer_step(layer, x=x):
                @tf.function
                def step():
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = layer(x, training=True)
                        loss = tf.reduce_sum(tf.cast(y, tf.float32))
                    return tape.gradient(loss, [x, *layer.trainable_variables])

                return step

            @tf.function
            def fused_step(x=x, gamma=gamma, beta=beta):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                        x, gamma, beta, epsilon=EPSILON, is_training=True
                    )
                    loss = tf.reduce_sum(tf.cast(y, tf.float32))
                return tape.gradient(loss, [x, gamma, beta])

            steps = {name: layer_step(layer) for name, layer in layers.items()} | {"tf_fused": fused_step}
            sides = {name: lambda f=f: [t.numpy() for t in f()][0] for name, f in steps.items()}
            if torch is not None:
                tx = torch.from_numpy(x.numpy().astype(np.float32)).permute(0, 3, 1, 2)
                tx = tx.contiguous(memory_format=torch.channels_last).requires_grad_(True)
                bn = torch.nn.BatchNorm2d(c).to(memory_format=torch.channels_last)

                def torch_step(tx=tx, bn=bn, bf16=precision == "bfloat16"):
                    tx.grad = None
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        y = bn(tx)
                    y.float().sum().backward()

                sides["torch"] = torch_step
            ms = alternating_medians(sides, args.steps)
            row = {"shape": [h, w, c], "count_in_resnet50": count, "precision": precision}
            graph = steps["cnn_apps"].get_concrete_function().graph
            row["cnn_apps_fused"] = any(op.type == "FusedBatchNormV3" for op in graph.get_operations())
            row |= {f"{name}_ms": round(v, 3) for name, v in ms.items()}
            row |= {
                f"keras_over_{name}": round(ms["keras"] / v, 2) for name, v in ms.items() if name != "keras"
            }
            rows.append(row)
            print(
                f"{precision:8s} {h:>3}x{w:<3}x{c:<5} "
                + "  ".join(f"{name} {v:8.2f} ms" for name, v in ms.items())
                + "".join(
                    f"  keras/{k.removeprefix('keras_over_')} {v:.2f}"
                    for k, v in row.items()
                    if k.startswith("keras_over")
                )
            )
    totals = {}
    for precision in precisions:
        chosen = [r for r in rows if r["precision"] == precision]
        for side in ("keras", "cnn_apps", "tf_fused", "torch"):
            if all(f"{side}_ms" in r for r in chosen):
                totals[f"{precision}_{side}_ms_per_resnet50_step"] = round(
                    sum(r[f"{side}_ms"] * r["count_in_resnet50"] for r in chosen), 1
                )
    payload = {
        "benchmark": "batch_norm",
        "batch": args.batch,
        "steps": args.steps,
        "rows": rows,
        "totals": totals,
    }
    for key, value in totals.items():
        print(f"{key}: {value} ms")
    path = write_result("batch_norm", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
