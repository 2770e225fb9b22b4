"""Our models against torchvision's on this machine's CPU, in one run: the CPU is where every user
of this repository first runs it.

Rows (the same models and inputs as ``benchmarks/gpu.py``, both from ``benchmarks/peer_models.py``):
``resnet50`` (ours ``resnet50_v1_5``, torchvision's layout: the same graph), ``vgg16`` (the same
graph), ``ssd300`` (``ssd300_vgg16``, the same design and post-processing thresholds) and
``faster_rcnn`` (ours on one ResNet-50 C4 map with RoI max pooling, theirs
``fasterrcnn_resnet50_fpn``: not the same graph, so that ratio compares the applications). Each
side runs at its best documented CPU settings:

* ours: TensorFlow with oneDNN (its default), Keras' compiled ``predict_on_batch`` /
  ``train_on_batch`` (what ``predict`` and ``fit`` run; detectors with their decoding and NMS),
  ``jit_compile`` off (XLA was slower on this CPU in every case measured), the
  ``mixed_bfloat16`` policy for ``--precision bfloat16``, which oneDNN runs on AVX512-BF16/AMX,
  and inference on a copy with batch norm folded into the convolutions
  (``cnn_apps.backbones.fold_batch_norm``: TensorFlow's optimizer folds it itself in float32 but
  not in bfloat16) for the classifiers; the detectors run as they are, since the folded copy is
  a plain functional model without their decoding (each row records which);
* torchvision: ``weights=None``, ``torch.set_num_threads(cores)``, channels-last memory for the
  classifiers, ``eval()`` under ``torch.inference_mode()`` for inference, SGD with momentum 0.9
  for a training step, ``torch.autocast("cpu", bfloat16)`` for ``--precision bfloat16``.

Calls alternate ours / theirs step by step after the warm-up (a busy machine slows both alike),
each side's figure is the median step, and the ratio is ``theirs / ours`` in time (> 1: ours is
faster). torch and torchvision are not the package's dependencies: install them for this
benchmark only (``pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu``);
without them the peer is skipped and every row says why. ``--tiny``: narrow models, small inputs,
a smoke test whose ratios mean nothing. Writes ``benchmarks/results/cpu.json``.

    python benchmarks/cpu.py [--models resnet50,vgg16,ssd300,faster_rcnn] [--precision float32|bfloat16|both]
        [--mode inference|train|both] [--steps 5] [--warmup 2] [--no-peer] [--tiny] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

os.environ["KERAS_BACKEND"] = "tensorflow"  # before peer_models' builders import Keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import peer_models  # noqa: E402  (the shared model specs, builders and inputs)

MODELS = ("resnet50", "vgg16", "ssd300", "faster_rcnn")
# CPU batch sizes (the GPU ones would take minutes a step here)
BATCH = {"resnet50": 8, "vgg16": 4, "ssd300": 4, "faster_rcnn": 2}


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def ours_steps(name: str, spec, size: int, images, targets, tiny: bool, precision: str):
    """(infer, train, info) of our model: Keras' compiled predict and train functions."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model, loss = peer_models.build_ours(name, spec, size, tiny)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(
        optimizer=keras.optimizers.SGD(peer_models.LEARNING_RATE, momentum=peer_models.MOMENTUM),
        loss=loss,
        jit_compile=False,
    )

    # inference on a copy with batch norm folded into the convolutions: TensorFlow's optimizer
    # folds it itself in float32, not in bfloat16 (cnn_apps/backbones/fold_batch_norm.py)
    from cnn_apps.backbones.fold_batch_norm import fold_batch_norm

    # (classifiers only: the copy is a plain functional model, without a detector's decoding)
    folded = spec.task == "classification"
    inference_model = fold_batch_norm(model) if folded else model

    def infer():
        return inference_model.predict_on_batch(images)

    def train():
        return model.train_on_batch(images, targets)

    info = {"name": model.name, "params": int(model.count_params()), "inference_batch_norm_folded": folded}
    return infer, train, info


def peer_steps(torch, torchvision, name: str, spec, size: int, images, targets, tiny: bool, precision: str):
    model = peer_models.build_peer(torch, torchvision, name, spec, size, tiny)
    options = SimpleNamespace(channels_last=True, torch_compile=False, precision=precision)
    infer, train = peer_models.peer_functions(torch, model, spec, images, targets, options, "cpu")
    return infer, train, {"name": spec.peer, "params": int(sum(p.numel() for p in model.parameters()))}


def alternate(ours, theirs, warmup: int, steps: int) -> dict:
    """Warm-up calls of each, then ``steps`` rounds of ours-then-theirs; medians in ms."""
    first = {}
    for label, step in (("ours", ours), ("theirs", theirs)):
        if step is None:
            continue
        start = time.perf_counter()
        step()
        first[label] = round(time.perf_counter() - start, 2)
        for _ in range(max(warmup - 1, 0)):
            step()
    times = {"ours": [], "theirs": []}
    for _ in range(steps):
        for label, step in (("ours", ours), ("theirs", theirs)):
            if step is None:
                continue
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    out = {}
    for label, values in times.items():
        if values:
            out[label] = {
                "median_step_ms": round(1000 * statistics.median(values), 2),
                "min_step_ms": round(1000 * min(values), 2),
                "first_call_s": first[label],
            }
    return out


def bench(name: str, args, peer, precision: str) -> dict:
    spec = peer_models.SPECS[name]
    size = spec.tiny_size if args.tiny else spec.image_size
    batch = spec.tiny_batch if args.tiny else BATCH[name]
    images, targets = peer_models.ours_inputs(spec, size, batch)
    row = {
        "model": name,
        "precision": precision,
        "image_size": size,
        "batch_size": batch,
        "ours_description": spec.ours,
        "peer_name": f"torchvision {spec.peer}",
        "comparison": spec.peer_note,
    }
    print(f"{name} ({size} px, batch {batch}, {precision}):", flush=True)
    try:
        infer, train, row["ours"] = ours_steps(name, spec, size, images, targets, args.tiny, precision)
    except Exception as exc:  # noqa: BLE001 - a broken row must not end the run
        traceback.print_exc()
        return {**row, "error": f"ours: {type(exc).__name__}: {exc}"}
    p_infer = p_train = None
    if peer["torch"] is not None:
        try:
            p_infer, p_train, row["theirs"] = peer_steps(
                peer["torch"], peer["torchvision"], name, spec, size, images, targets, args.tiny, precision
            )
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            row["peer_error"] = f"{type(exc).__name__}: {exc}"
    else:
        row["peer_error"] = peer["why"]
    for mode in args.modes:
        ours, theirs = (infer, p_infer) if mode == "inference" else (train, p_train)
        try:
            timed = alternate(ours, theirs, args.warmup, args.steps)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            row[mode] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            continue
        for side in timed.values():
            side["images_per_s"] = round(1000 * batch / side["median_step_ms"], 2)
        if "theirs" in timed:
            timed["ratio_theirs_time_over_ours"] = round(
                timed["theirs"]["median_step_ms"] / timed["ours"]["median_step_ms"], 3
            )
        row[mode] = timed
        ratio = timed.get("ratio_theirs_time_over_ours")
        print(
            f"  {mode:<9} ours {timed['ours']['images_per_s']:8.2f} img/s"
            + (
                f", torchvision {timed['theirs']['images_per_s']:8.2f} img/s, ratio {ratio:.2f}"
                if ratio
                else ""
            ),
            flush=True,
        )
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precision", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--mode", choices=("inference", "train", "both"), default="both")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (ours then theirs)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (the first compiles)")
    parser.add_argument("--no-peer", action="store_true", help="time ours only")
    parser.add_argument("--tiny", action="store_true", help="narrow models, small inputs: a smoke test")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cpu.json)")
    args = parser.parse_args(argv)
    names = [peer_models.ALIASES.get(n.strip(), n.strip()) for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    args.modes = ["inference", "train"] if args.mode == "both" else [args.mode]
    flags = cpu_flags()
    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]

    peer = {"torch": None, "torchvision": None, "why": "--no-peer"}
    if not args.no_peer:
        # torchvision before TensorFlow: PyPI's CUDA builds of torch ship Triton, whose native
        # library crashes the process (SIGSEGV) when it loads after TensorFlow's; loaded first,
        # both work
        if "tensorflow" in sys.modules:
            print("warning: TensorFlow is already imported; torchvision's Triton may crash", file=sys.stderr)
        torch, torchvision, why = peer_models.load_peer()
        peer = {"torch": torch, "torchvision": torchvision, "why": why}
        if torch is not None:
            torch.set_num_threads(os.cpu_count())

    import keras
    import tensorflow as tf
    from provenance import write_result

    rows = [bench(name, args, peer, precision) for precision in precisions for name in names]
    result = {
        "benchmark": "cpu",
        "tiny": args.tiny,
        "cores": os.cpu_count(),
        "bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "torch": getattr(peer["torch"], "__version__", None),
            "torchvision": getattr(peer["torchvision"], "__version__", None),
        },
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
    }
    path = write_result("cpu", result, Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
