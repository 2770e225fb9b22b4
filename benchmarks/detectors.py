"""How fast do our single-shot detectors detect, NMS included?

Times ``model.detect`` (network, box decoding and per-class NMS: what a user or an exported
model runs) for YOLO v1 and SSD as the shapes configs build them
(``pipelines/configs/shapes_yolo.yaml``, ``shapes_ssd.yaml``: 4 classes) and for the paper's
``ssd300_vgg16`` (300 px, 20 VOC classes; slow on CPU: ``--skip-ssd300``). For each model:

* latency: batch 1, ms per call (median of ``--repeats`` after ``--warmup`` untimed calls);
* throughput: batch ``--batch`` (16), images/s from the median call;
* NMS alone: the same, for ``batched_nms`` on the model's own decoded boxes and scores,
  and its share of ``detect``.

Each NMS implementation the backend has is timed (TensorFlow: ``tf``, the combined-NMS op,
and ``portable``, the ``keras.ops`` one; JAX: ``portable``), and ``portable / tf`` time
ratios are printed for NMS alone and for the whole ``detect``. When torchvision is
importable its ``ssd300_vgg16(weights=None, weights_backbone=None)`` (eval mode, CUDA if
there is one, same classes, thresholds and batch sizes; its own resize/normalise transform
included) is timed in the same run, calls alternating with ours, and
``ours / torchvision`` images/s is printed; otherwise the JSON says ``"peer": null``.

Compilation: on either backend ``detect`` is compiled once per NMS implementation (one
trace per batch shape), with the weights as inputs, not constants folded into the graph;
each timed call takes a NumPy batch and returns NumPy detections (host to device and back
included, as for the torchvision peer, whose outputs are copied to the CPU).
* TensorFlow: ``tf.function(lambda x: model.detect(x, nms=...))`` without XLA (as Keras'
  predict function runs on a CPU-only machine).
* JAX: ``jax.jit`` of a stateless ``detect`` (variables swapped in by a
  ``keras.StatelessScope``, as ``Model.stateless_call`` does). ``predict_on_batch`` cannot be
  used: the JAX trainer calls ``predict_step(state, data)`` and ``Detector.predict_step``
  takes ``(data)`` only.

Weights are random, so scores sit near 1 / (C + 1) and most default boxes pass the 0.05
score threshold: a heavy NMS load (the portable NMS costs the same whatever the scores;
TF's op gets cheaper with fewer candidates, as with a trained model). Under
``KERAS_BACKEND=jax`` nothing here imports TensorFlow, so it runs where only JAX (and
PyTorch) are installed. Writes ``benchmarks/results/detectors.json``.

    KERAS_BACKEND=jax python benchmarks/detectors.py [--models yolo_v1,ssd,ssd300_vgg16]
        [--skip-ssd300] [--batch 16] [--repeats 10] [--warmup 2] [--nms tf,portable] [--no-peer]
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

SHAPES_CLASSES = 4  # circle, square, triangle, star (cnn_apps.data.shapes; not imported: cv2)
MODELS = {  # name -> shapes config (None: the registered paper model)
    "yolo_v1": "pipelines/configs/shapes_yolo.yaml",
    "ssd": "pipelines/configs/shapes_ssd.yaml",
    "ssd300_vgg16": None,
}


def _to_numpy(tree):
    import keras

    return keras.tree.map_structure(keras.ops.convert_to_numpy, tree)


def compile_fn(fn, model=None):
    """``fn(*arrays) -> tree`` compiled for the backend, taking and returning NumPy.
    With ``model``, ``fn`` uses the model's variables and gets them as jit arguments (JAX)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(fn, jit_compile=False)
        return lambda *xs: _to_numpy(compiled(*xs))
    if backend == "jax":
        import jax

        if model is None:
            compiled = jax.jit(fn)
            return lambda *xs: _to_numpy(compiled(*xs))

        variables = list(model.trainable_variables) + list(model.non_trainable_variables)

        def stateless(values, *xs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*xs)

        compiled = jax.jit(stateless)
        values = [v.value for v in variables]
        return lambda *xs: _to_numpy(compiled(values, *xs))
    return lambda *xs: _to_numpy(fn(*xs))  # other backends: eager


def time_calls(calls: dict, warmup: int, repeats: int) -> dict:
    """Median seconds per call of each zero-argument callable, after ``warmup`` untimed
    calls each (the first compiles); timed calls alternate between callables, first mover
    alternating, so a busy neighbour slows all alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    order = list(calls)
    for i in range(repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def build_model(name: str, ssd300_classes: int):
    """(model, config path or None, num_classes)."""
    import random

    import numpy as np

    from cnn_apps.config import load_config
    from cnn_apps.detection.factory import detector_from_config
    from cnn_apps.detection.ssd import ssd300_vgg16

    # Unseeded initializers draw their seeds from Python's random; keras.utils.set_random_seed
    # would also import TensorFlow (to seed it) whenever it is installed, even under JAX.
    random.seed(0)
    np.random.seed(0)
    if MODELS[name] is None:
        return ssd300_vgg16(ssd300_classes), None, ssd300_classes
    config = load_config(ROOT / MODELS[name])
    if config.model.architecture != name:
        raise ValueError(f"{MODELS[name]} builds {config.model.architecture!r}, not {name!r}")
    return detector_from_config(config, SHAPES_CLASSES), MODELS[name], SHAPES_CLASSES


def load_peer():
    """torchvision's SSD300 builder and torch, or None when torchvision is not installed."""
    try:
        import torch
        import torchvision
        from torchvision.models.detection import ssd300_vgg16
    except ImportError:
        return None
    return torch, torchvision, ssd300_vgg16


def build_peer(peer, num_classes: int, postprocess: dict):
    """torchvision SSD300 with our thresholds (its num_classes counts the background):
    (detect(NumPy batch), description)."""
    torch, _, builder = peer
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = {
        "score_thresh": postprocess["score_threshold"],
        "nms_thresh": postprocess["iou_threshold"],
        "detections_per_img": postprocess["max_detections"],
        "topk_candidates": postprocess["pre_nms_top_k"],
    }
    model = (
        builder(weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs).eval().to(device)
    )

    def detect(x):  # NumPy (B, H, W, 3) 0..255 -> list of CPU dicts, as torchvision wants its input
        with torch.inference_mode():
            images = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            return [{k: v.cpu() for k, v in out.items()} for out in model(list(images))]

    info = {
        "name": "torchvision.models.detection.ssd300_vgg16",
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "params": int(sum(p.numel() for p in model.parameters())),
        "postprocess": kwargs,
    }
    return detect, info


def device_description() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}: {d.device_kind}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"gpu: {gpus[0].name}" if gpus else f"cpu: {platform.processor() or platform.machine()}"
    return backend


def bench_model(name: str, args, peer, impls: list[str]) -> dict:
    import numpy as np

    from cnn_apps.detection.nms import batched_nms

    model, config, num_classes = build_model(name, args.ssd300_classes)
    size, pp = model.image_size, dict(model.postprocess)
    nms_args = {k: pp[k] for k in ("max_detections", "iou_threshold", "score_threshold", "pre_nms_top_k")}
    detect = {impl: compile_fn(lambda x, impl=impl: model.detect(x, nms=impl), model) for impl in impls}
    nms = {
        impl: compile_fn(lambda b, s, impl=impl: batched_nms(b, s, implementation=impl, **nms_args))
        for impl in impls
    }
    peer_detect = peer_info = None
    if peer is not None and name == "ssd300_vgg16":
        peer_detect, peer_info = build_peer(peer, num_classes, pp)

    rng = np.random.default_rng(0)
    medians, detections, num_boxes = {}, {}, None
    for batch in (1, args.batch):
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        boxes, scores = _to_numpy(model.decode(model(x, training=False)))
        num_boxes = int(boxes.shape[1])
        calls = {}
        for impl in impls:
            calls[("detect", impl)] = lambda impl=impl, x=x: detect[impl](x)
            calls[("nms", impl)] = lambda impl=impl, b=boxes, s=scores: nms[impl](b, s)
        if peer_detect is not None:
            calls[("detect", "torchvision")] = lambda x=x: peer_detect(x)
        medians[batch] = time_calls(calls, args.warmup, args.repeats)
        if batch == args.batch:
            for impl in impls:
                detections[impl] = float(np.mean(detect[impl](x)["num_detections"]))
            if peer_detect is not None:
                detections["torchvision"] = float(np.mean([len(o["scores"]) for o in peer_detect(x)]))

    def figures(part, impl):
        t1, tb = medians[1][(part, impl)], medians[args.batch][(part, impl)]
        return round(t1 * 1000, 3), round(args.batch / tb, 2)

    per_impl = {}
    for impl in impls:
        latency, throughput = figures("detect", impl)
        nms_latency, nms_throughput = figures("nms", impl)
        per_impl[impl] = {
            "latency_ms": latency,
            "images_per_s": throughput,
            "nms_latency_ms": nms_latency,
            "nms_images_per_s": nms_throughput,
            "nms_share_latency": round(nms_latency / latency, 3),
            "nms_share_throughput": round(throughput / nms_throughput, 3),
            "mean_detections": detections[impl],
        }
    default = "tf" if "tf" in impls else impls[0]
    row = {
        "model": name,
        "config": config,
        "num_classes": num_classes,
        "image_size": size,
        "params": int(model.count_params()),
        "boxes_before_nms": num_boxes,
        "postprocess": pp,
        "nms": default,
        "latency_ms": per_impl[default]["latency_ms"],
        "images_per_s": per_impl[default]["images_per_s"],
        "implementations": per_impl,
    }
    print(f"{name} ({row['params']:,} params, {size} px, {num_boxes} boxes before NMS):")
    for impl, r in per_impl.items():
        print(
            f"  nms={impl:<8} detect {r['latency_ms']:8.2f} ms/image (batch 1), "
            f"{r['images_per_s']:7.2f} img/s (batch {args.batch}); "
            f"NMS alone {r['nms_latency_ms']:7.2f} ms, {r['nms_images_per_s']:7.2f} img/s "
            f"({100 * r['nms_share_latency']:.0f}% / {100 * r['nms_share_throughput']:.0f}% of detect); "
            f"{r['mean_detections']:.1f} detections/image",
            flush=True,
        )
    if "tf" in impls and "portable" in impls:
        ratio = {
            f"{part}_batch{b}": round(medians[b][(part, "portable")] / medians[b][(part, "tf")], 3)
            for part in ("nms", "detect")
            for b in (1, args.batch)
        }
        row["time_ratio_portable_over_tf"] = ratio
        print(
            f"  portable / tf time: NMS alone {ratio['nms_batch1']:.2f}x (batch 1), "
            f"{ratio[f'nms_batch{args.batch}']:.2f}x (batch {args.batch}); whole detect "
            f"{ratio['detect_batch1']:.2f}x, {ratio[f'detect_batch{args.batch}']:.2f}x",
            flush=True,
        )
    row["peer"] = None
    if peer_info is not None:
        latency, throughput = figures("detect", "torchvision")
        peer_info.update(
            latency_ms=latency,
            images_per_s=throughput,
            mean_detections=detections["torchvision"],
            ratio_images_per_s_ours_over_peer=round(row["images_per_s"] / throughput, 3),
            ratio_latency_ours_over_peer=round(row["latency_ms"] / latency, 3),
        )
        row["peer"] = peer_info
        print(
            f"  torchvision ssd300_vgg16 ({peer_info['device']}, {peer_info['params']:,} params): "
            f"{latency:.2f} ms/image, {throughput:.2f} img/s; ours (nms={default}) / torchvision images/s "
            f"{peer_info['ratio_images_per_s_ours_over_peer']:.2f}x, latency "
            f"{peer_info['ratio_latency_ours_over_peer']:.2f}x",
            flush=True,
        )
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        help="Keras backend; must match KERAS_BACKEND if Keras is already imported "
        "(default: KERAS_BACKEND, else Keras' default)",
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS)
    )
    parser.add_argument("--skip-ssd300", action="store_true", help="leave out ssd300_vgg16 (slow on CPU)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the throughput measurement")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median counts)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (the first one compiles)")
    parser.add_argument(
        "--nms",
        help="comma-separated NMS implementations (default: tf,portable under "
        "TensorFlow, portable elsewhere)",
    )
    parser.add_argument(
        "--ssd300-classes", type=int, default=20, help="object classes of the SSD300s (VOC: 20)"
    )
    parser.add_argument("--no-peer", action="store_true", help="do not time torchvision even if installed")
    parser.add_argument(
        "--out", "--output", dest="out", default=str(ROOT / "benchmarks/results/detectors.json")
    )
    args = parser.parse_args(argv)

    if args.backend:
        loaded = sys.modules.get("keras")
        if loaded is not None and loaded.backend.backend() != args.backend:
            parser.error(
                f"--backend {args.backend}: Keras is already imported with {loaded.backend.backend()}; "
                "set KERAS_BACKEND before importing"
            )
        os.environ["KERAS_BACKEND"] = args.backend

    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Each compiled function traces once per batch shape (checked); TF's retracing warning
        # counts traces per code object, so compile_fn's lambdas look like one retracing function.
        tf.get_logger().addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())
    impls = (
        args.nms.split(",") if args.nms else (["tf", "portable"] if backend == "tensorflow" else ["portable"])
    )
    if "tf" in impls and backend != "tensorflow":
        parser.error("--nms tf needs KERAS_BACKEND=tensorflow")
    models = [m for m in args.models.split(",") if m and not (args.skip_ssd300 and m == "ssd300_vgg16")]
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    peer = None if args.no_peer else load_peer()
    device = device_description()
    print(
        f"backend {backend} on {device}; NMS {', '.join(impls)}; peer "
        f"{'torchvision ' + peer[1].__version__ if peer else 'none (torchvision not importable)'}",
        flush=True,
    )

    rows = []
    for name in models:
        rows.append(bench_model(name, args, peer, impls))
        gc.collect()  # the previous model's graphs and weights

    result = {
        "benchmark": "detectors",
        "backend": backend,
        "device": device,
        "versions": {
            "keras": keras.__version__,
            backend: importlib.import_module(backend).__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "torch": peer[0].__version__ if peer else None,
            "torchvision": peer[1].__version__ if peer else None,
        },
        "compilation": {
            "tensorflow": "tf.function(detect), no XLA",
            "jax": "jax.jit(stateless detect), weights as arguments",
        }.get(backend, "eager"),
        "batch_size": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "nms_implementations": impls,
        "results": rows,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    from provenance import write_result  # benchmarks/ is on sys.path when run as a script

    out = write_result("detectors", result, Path(args.out))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
