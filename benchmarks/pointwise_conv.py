"""Where ResNet-50's bfloat16 CPU training time went after batch norm: 1x1 kernel gradients.

A TensorFlow profile of our ResNet-50's ``mixed_bfloat16`` training step (after batch norm ran
fused, ``batch_norm.py``) had oneDNN's backward-weights convolution as its largest op: about a
third of the step, only 1.2x faster than in float32 where the forward convolutions were 3.5x,
and slowest on the 1x1 kernels. This times one training step (forward, and the gradients of
the input and the kernel) of each of ResNet-50's 1x1 stride-1 convolutions in bfloat16, three
ways on the same CPU, alternating calls:

* ``keras``: ``keras.layers.Conv2D`` under ``mixed_bfloat16`` in a ``tf.function``;
* ``cnn_apps``: :class:`cnn_apps.backbones.pointwise_conv.MatmulGradConv2D`, the layer our
  ResNets use: the same forward and input gradient, the kernel gradient as a matrix product;
* ``torch``: ``torch.nn.Conv2d`` under ``torch.autocast("cpu", bfloat16)`` on channels-last
  tensors (when torch is importable; loaded before TensorFlow, see ``cpu.py``).

The shapes and their counts are read from the ``resnet50_v1_5`` backbone that ``cpu.py``
compares with torchvision's (224 px). Ratios are ``keras / other`` in time (> 1: the other is
faster). Then the whole network: that ResNet-50's bfloat16 training step with our layer and with
Keras' convolution in its place, steps alternating (``--network-steps``). Writes
``benchmarks/results/pointwise_conv.json``.

    python benchmarks/pointwise_conv.py [--batch 8] [--steps 20] [--shapes N] [--network-steps 6]
        [--out PATH]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def resnet50_pointwise_shapes() -> list[tuple[int, int, int, int]]:
    """(H, in channels, filters, count) of resnet50_v1_5's 1x1 stride-1 convolutions at 224 px,
    largest activation first."""
    import cnn_apps.backbones  # noqa: F401  (registers the backbones)
    from cnn_apps import registry
    from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D

    model = registry.get("backbone", "resnet50_v1_5")(input_shape=(224, 224, 3), include_top=False)
    counts = collections.Counter(
        (int(layer.input.shape[1]), int(layer.input.shape[-1]), int(layer.filters))
        for layer in model.layers
        if isinstance(layer, MatmulGradConv2D)
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
    )
    return [(*shape, n) for shape, n in sorted(counts.items(), key=lambda kv: (-kv[0][0], kv[0][1:]))]


def resnet50_steps(batch: int, steps: int, size: int = 224) -> dict:
    """The whole network: resnet50_v1_5's bfloat16 training step (SGD, as ``cpu.py``) with its 1x1
    kernel gradients as matrix products (``cnn_apps``) and with every MatmulGradConv2D told to
    run Keras' convolution (``keras``), built alike, steps alternating; medians in ms."""
    import keras
    import numpy as np

    import cnn_apps.backbones  # noqa: F401
    from cnn_apps import registry
    from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D

    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 1000, batch)
    step = {}
    for side in ("keras", "cnn_apps"):
        keras.utils.set_random_seed(0)
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            model = registry.get("backbone", "resnet50_v1_5")(
                input_shape=(size, size, 3), include_top=True, num_classes=1000, classifier_activation=None
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")
        if side == "keras":
            for layer in model.layers:
                if isinstance(layer, MatmulGradConv2D):
                    layer._matmul_grad = lambda inputs, kernel: False  # Keras' convolution_op
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
        step[side] = lambda model=model: model.train_on_batch(images, labels)
    from alternate import alternating_medians

    ms = {side: round(v, 1) for side, v in alternating_medians(step, steps).items()}
    out = {"model": "resnet50_v1_5", "image_size": size, "batch": batch, "steps": steps}
    out |= {f"{side}_step_ms": v for side, v in ms.items()}
    out["keras_over_cnn_apps"] = round(ms["keras"] / ms["cnn_apps"], 3)
    print(f"resnet50_v1_5 bf16 training step: keras {ms['keras']} ms, cnn_apps {ms['cnn_apps']} ms")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed calls per side and shape")
    parser.add_argument("--shapes", type=int, default=None, help="the first N shapes (tests)")
    parser.add_argument(
        "--network-steps", type=int, default=6, help="timed ResNet-50 training steps per side (0: none)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from alternate import alternating_medians, torch_first

    torch = torch_first()  # before TensorFlow
    import keras
    import numpy as np
    import tensorflow as tf
    from provenance import write_result

    from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D

    shapes = resnet50_pointwise_shapes()[: args.shapes]
    rows = []
    for h, channels, filters, count in shapes:
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal((args.batch, h, h, channels)), tf.float32)
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            layers = {
                "keras": keras.layers.Conv2D(filters, 1, use_bias=False),
                "cnn_apps": MatmulGradConv2D(filters, 1, use_bias=False),
            }
            for layer in layers.values():
                layer.build(x.shape)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        layers["cnn_apps"].set_weights(layers["keras"].get_weights())

        def layer_step(layer, x=x):
            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(tf.cast(layer(x), tf.float32))
                return tape.gradient(loss, [x, layer.kernel])

            return step

        steps = {name: layer_step(layer) for name, layer in layers.items()}
        sides = {name: lambda f=f: [t.numpy() for t in f()] for name, f in steps.items()}
        if torch is not None:
            tx = torch.from_numpy(x.numpy()).permute(0, 3, 1, 2)
            tx = tx.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            conv = torch.nn.Conv2d(channels, filters, 1, bias=False).to(memory_format=torch.channels_last)

            def torch_step(tx=tx, conv=conv):
                tx.grad = None
                conv.weight.grad = None
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = conv(tx)
                y.float().sum().backward()

            sides["torch"] = torch_step
        ms = alternating_medians(sides, args.steps)
        graph = steps["cnn_apps"].get_concrete_function().graph
        types = {op.type for op in graph.get_operations()}
        for function in graph._functions.values():  # the custom gradient is a function of the graph
            types |= {op.type for op in function.graph.get_operations()}
        row = {"height": h, "channels": channels, "filters": filters, "count_in_resnet50": count}
        row["cnn_apps_matmul_grad"] = "MatMul" in types and "Conv2DBackpropFilter" not in types
        row |= {f"{name}_ms": round(v, 3) for name, v in ms.items()}
        row |= {f"keras_over_{name}": round(ms["keras"] / v, 2) for name, v in ms.items() if name != "keras"}
        rows.append(row)
        print(
            f"{h:>3}x{h:<3} {channels:>4} -> {filters:<4} x{count} "
            + "  ".join(f"{name} {v:7.2f} ms" for name, v in ms.items())
        )
    totals = {
        f"{side}_ms_per_resnet50_step": round(sum(r[f"{side}_ms"] * r["count_in_resnet50"] for r in rows), 1)
        for side in ("keras", "cnn_apps", "torch")
        if all(f"{side}_ms" in r for r in rows)
    }
    network = resnet50_steps(args.batch, args.network_steps) if args.network_steps else None
    payload = {
        "benchmark": "pointwise_conv",
        "precision": "bfloat16",
        "batch": args.batch,
        "steps": args.steps,
        "rows": rows,
        "totals": totals,
        "network": network,
    }
    for key, value in totals.items():
        print(f"{key}: {value} ms")
    path = write_result("pointwise_conv", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
