"""How fast are our models on a GPU under JAX, next to torchvision's on the same card?

Times our Keras models under ``KERAS_BACKEND=jax`` and their torchvision counterparts
(``weights=None``) in one process, same card, same input size and batch, and prints images/s
and ``ours / torchvision`` ratios (> 1: ours is faster):

==============  =========================================  =========================================
``--models``    ours                                       torchvision peer
==============  =========================================  =========================================
resnet50        ``resnet50_v1_5`` classifier, 224 px       ``resnet50`` (v1.5): the same network
vgg16           ``vgg16`` classifier (dropout 0.5)         ``vgg16``: the same network
yolo            YOLO v1, ResNet-50, 448 px, FC head 4096   none: torchvision has no YOLO
ssd300          ``ssd300_vgg16``, 20 VOC classes           ``ssd300_vgg16``, our NMS thresholds
faster_rcnn     Faster R-CNN, ResNet-50 C4, 512 px         ``fasterrcnn_resnet50_fpn`` at 512 px
fcn8s, fcn32s   FCN-8s / -32s on VGG-16, 512 px, 21 cl.    ``fcn_resnet50`` (no aux head)
==============  =========================================  =========================================

The first two pairs are the same architecture, so their ratio compares the implementations
(Keras + XLA against PyTorch + cuDNN). SSD300 is the same design with the same post-processing
thresholds. Faster R-CNN and FCN are not: torchvision's Faster R-CNN has an FPN (five levels,
RoIAlign) where ours has one C4 map and RoI max pooling, and ``fcn_resnet50`` is a dilated
ResNet-50 (output stride 8, 3x3 head) where our FCNs are the paper's VGG-16 ones; those ratios
compare the applications as each library ships them, not the same graph. YOLO v1 has no
torchvision peer; its row times ours alone. Proposal settings are matched where both sides
have them (Faster R-CNN: 1000 proposals before and after NMS, 512 sampled RoIs per image, 100
detections; torchvision's pre-NMS count is per FPN level). The rows (``SPECS``), both sides'
builders and the inputs are in ``benchmarks/peer_models.py``, which ``benchmarks/cpu.py`` shares.

What is timed (``--mode``):

* inference: ours ``jax.jit`` of the model's stateless ``predict_step`` (what ``predict``
  runs: for detectors, decoding and per-class NMS included; for the rest, the logits);
  the peer in ``eval()`` under ``torch.inference_mode()`` (detectors: its transform and
  post-processing included, as ``detect`` includes ours).
* training: ours ``jax.jit`` of the model's own ``train_step`` (what ``fit`` runs:
  forward, the model's loss, gradients, SGD with momentum 0.9, BatchNorm statistics and
  loss trackers), state donated; the peer's forward, loss, ``backward`` and
  ``torch.optim.SGD(momentum=0.9)`` step. Losses: cross-entropy on logits (classification),
  per-pixel cross-entropy with ignore label 255 (segmentation), each detector's own loss on
  synthetic targets (3 boxes per image, padded to 4 with -1 for ours; 1-based labels for
  torchvision, whose class 0 is the background).

Inputs are random NumPy arrays put on the device once (no tf.data, no host-to-device copy
in the timed steps). Each step is synchronised (``jax.block_until_ready`` /
``torch.cuda.synchronize``); after ``--warmup`` untimed steps (the first compiles: its time is
reported as ``first_call_s``) ``--steps`` are timed and the median step gives images/s.
Ours runs first, then the peer, one block each (a dedicated card; not interleaved).

Settings recorded in the JSON: TF32 on for both (JAX's default precision on NVIDIA GPUs;
``torch.backends.cuda.matmul.allow_tf32`` and cuDNN's; ``--no-tf32`` makes both full
float32), ``--precision bfloat16`` (Keras' ``mixed_bfloat16`` policy against
``torch.autocast(dtype=bfloat16)``), ``cudnn.benchmark``, channels-last memory format for the
peer's classifiers and segmenters (``--no-channels-last``), ``torch.compile`` off
(``--torch-compile``). JAX does not preallocate and may take at most half the card
(``XLA_PYTHON_CLIENT_PREALLOCATE=false``, ``XLA_PYTHON_CLIENT_MEM_FRACTION=0.5`` unless set),
so PyTorch has the other half.

Runs where only JAX, PyTorch and torchvision are installed (nothing here imports
TensorFlow, cv2 or MLflow). Without torch/torchvision the peers are skipped and every row
says why. A row that fails (out of memory, say) records the error and the run goes on. The
JSON (``benchmarks/results/gpu.json``) is rewritten after every row, so a run cut short keeps
what it measured. ``--tiny``: small inputs and narrow models (ours) for a CPU smoke test.

    KERAS_BACKEND=jax python benchmarks/gpu.py [--models resnet50,vgg16,ssd300,fcn8s,faster_rcnn,yolo]
        [--batch N] [--steps 20] [--warmup 3] [--precision float32|bfloat16]
        [--mode inference|train|both] [--torch-compile] [--no-peer] [--budget-s S] [--tiny] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the card to PyTorch too
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# after the environment above (the backend): the rows' specs, the two sides' models and inputs
from peer_models import (  # noqa: E402
    ALIASES,
    DEFAULT_MODELS,
    LEARNING_RATE,
    MOMENTUM,
    SPECS,
    build_ours,
    build_peer,
    load_peer,
    ours_inputs,
    peer_functions,
)

ENV_KEYS = (
    "KERAS_BACKEND",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "CUDA_VISIBLE_DEVICES",
)


# ---------------------------------------------------------------------------------------- ours
def ours_functions(model, loss, x, y):
    """(infer(), train()) for our model: each runs one jitted step on device-resident inputs
    and returns what to block on."""
    import jax
    import jax.numpy as jnp
    import keras

    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM), loss=loss)
    # What fit() does before its first step: build the compiled loss, metrics and optimizer.
    if hasattr(model, "_symbolic_build"):
        model._symbolic_build(data_batch=(x, y, None))
        model.optimizer.build(model.trainable_variables)
    else:  # a Keras without it: one eager-dispatched step builds the same (and compiles Keras' own)
        model.train_on_batch(x, y)

    def values(variables):
        return [jnp.array(v.value, copy=True) for v in variables]

    weights = (values(model.trainable_variables), values(model.non_trainable_variables))
    predict = jax.jit(lambda state, images: model.predict_step(state, (images,))[0])
    train_step = jax.jit(model.train_step, donate_argnums=0)
    holder = {}

    def infer():
        return predict(weights, x)

    def train():
        if "state" not in holder:  # copies: the donated buffers must not be the model's own
            holder["state"] = (
                values(model.trainable_variables),
                values(model.non_trainable_variables),
                values(model.optimizer.variables),
                values(model.metrics_variables),
            )
        logs, holder["state"] = train_step(holder["state"], (x, y))
        return logs

    return infer, train


# ---------------------------------------------------------------------------------------- timing
def time_steps(step: Callable, sync: Callable, batch: int, warmup: int, steps: int) -> dict:
    """Run ``warmup`` untimed steps (the first compiles) then ``steps`` timed ones, each
    synchronised; images/s from the median step."""
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        sync(step())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "images_per_s": round(batch / median, 2),
        "median_step_ms": round(1000 * median, 3),
        "min_step_ms": round(1000 * min(times), 3),
        "first_call_s": round(first, 2),
        "steps_timed": steps,
    }


def run_side(label: str, make: Callable, modes: list[str], sync: Callable, batch: int, args) -> dict:
    """Build (``make`` -> (infer, train, info)) and time each mode; errors are recorded, not raised."""
    side = {}
    try:
        infer, train, info = make()
        side.update(info)
    except Exception as exc:  # noqa: BLE001 - one broken row must not end a GPU session
        traceback.print_exc()
        return {"error": f"build: {type(exc).__name__}: {exc}"}
    for mode in modes:
        try:
            side[mode] = time_steps(
                infer if mode == "inference" else train, sync, batch, args.warmup, args.steps
            )
            r = side[mode]
            print(
                f"  {label:<11} {mode:<9} {r['images_per_s']:>10.1f} img/s  "
                f"({r['median_step_ms']:.1f} ms/step, first call {r['first_call_s']:.1f} s)",
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            side[mode] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            print(f"  {label:<11} {mode:<9} failed: {side[mode]['error'][:200]}", flush=True)
    return side


def bench(name: str, args, peer_mods, modes: list[str], device: str) -> dict:
    import jax
    import keras

    spec = SPECS[name]
    size = spec.tiny_size if args.tiny else spec.image_size
    batch = args.batch or (spec.tiny_batch if args.tiny else spec.batch)
    images, targets = ours_inputs(spec, size, batch)
    print(f"{name} ({spec.task}, {size} px, batch {batch}):", flush=True)
    row = {
        "model": name,
        "task": spec.task,
        "image_size": size,
        "batch_size": batch,
        "ours_description": spec.ours,
        "peer_name": f"torchvision {spec.peer}" if spec.peer else None,
        "comparison": spec.peer_note,
    }

    def make_ours():
        model, loss = build_ours(name, spec, size, args.tiny)
        x = jax.device_put(images)
        y = jax.device_put(targets)
        infer, train = ours_functions(model, loss, x, y)
        return (
            infer,
            train,
            {
                "name": model.name,
                "params": int(model.count_params()),
                "device": str(jax.devices()[0].device_kind),
            },
        )

    row["ours"] = run_side("ours", make_ours, modes, jax.block_until_ready, batch, args)
    gc.collect()
    keras.backend.clear_session()
    jax.clear_caches()

    torch, torchvision, why = peer_mods
    if spec.peer is None:
        row["peer"], row["peer_skipped"] = None, spec.peer_note
    elif args.no_peer:
        row["peer"], row["peer_skipped"] = None, "--no-peer"
    elif torch is None:
        row["peer"], row["peer_skipped"] = None, why
    else:

        def make_peer():
            torch.manual_seed(0)
            model = build_peer(torch, torchvision, name, spec, size, args.tiny)
            infer, train = peer_functions(torch, model, spec, images, targets, args, device)
            return (
                infer,
                train,
                {
                    "name": f"torchvision.models.{spec.peer}",
                    "device": device,
                    "params": int(sum(p.numel() for p in model.parameters())),
                },
            )

        sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
        row["peer"] = run_side("torchvision", make_peer, modes, sync, batch, args)
        row["peer_skipped"] = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    row["ratio_ours_over_peer"] = {}
    for mode in modes:
        ours, peer = row["ours"].get(mode, {}), (row["peer"] or {}).get(mode, {})
        if "images_per_s" in ours and "images_per_s" in peer:
            row["ratio_ours_over_peer"][mode] = round(ours["images_per_s"] / peer["images_per_s"], 3)
    if row["ratio_ours_over_peer"] and args.tiny:
        row["ratio_note"] = "--tiny: ours narrowed, the peer at full width; the ratio means nothing"
    if row["ratio_ours_over_peer"]:
        print(
            "  ours / torchvision images/s: "
            + ", ".join(f"{m} {r:.2f}x" for m, r in row["ratio_ours_over_peer"].items())
            + (" (--tiny: ours narrowed, not comparable)" if args.tiny else ""),
            flush=True,
        )
    elif row.get("peer_skipped"):
        print(f"  no peer: {row['peer_skipped']}", flush=True)
    return row


# ---------------------------------------------------------------------------------------- report
def table(rows: list[dict], modes: list[str]) -> str:
    def cell(side, mode):
        r = (side or {}).get(mode) or {}
        return f"{r['images_per_s']:>9.1f}" if "images_per_s" in r else f"{'-' if not r else 'error':>9}"

    head = f"{'model':<12} {'size':>4} {'batch':>5}"
    for mode in modes:
        head += f" | {mode + ' ours':>15} {'torchvision':>11} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for row in rows:
        line = f"{row['model']:<12} {row['image_size']:>4} {row['batch_size']:>5}"
        for mode in modes:
            ratio = row["ratio_ours_over_peer"].get(mode)
            line += (
                f" | {cell(row['ours'], mode):>15} {cell(row['peer'], mode):>11} "
                f"{(f'{ratio:.2f}x' if ratio else '-'):>6}"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated subset of " + ",".join(SPECS)
    )
    parser.add_argument("--batch", type=int, help="batch size of every row (default: per model, see SPECS)")
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per model and mode (median counts)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one compiles)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--mode", choices=("inference", "train", "both"), default="both")
    parser.add_argument(
        "--no-tf32", dest="tf32", action="store_false", help="full float32 matmuls/convs on both"
    )
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="torchvision classifiers/segmenters in NCHW (default: channels-last)",
    )
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile the torchvision models")
    parser.add_argument("--no-peer", action="store_true", help="do not time torchvision even if installed")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="start no new row after this many seconds (the JSON lists the rows left out)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="small inputs and narrow models: a CPU smoke test"
    )
    parser.add_argument("--out", "--output", dest="out", default=str(ROOT / "benchmarks/results/gpu.json"))
    args = parser.parse_args(argv)

    names = [ALIASES.get(m.strip(), m.strip()) for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(SPECS)}")
    loaded = sys.modules.get("keras")
    backend = loaded.backend.backend() if loaded is not None else os.environ.get("KERAS_BACKEND")
    if backend != "jax":
        parser.error(
            f"this benchmark runs Keras on JAX next to PyTorch; KERAS_BACKEND is {backend!r}. "
            "Run it with KERAS_BACKEND=jax (in a fresh process)"
        )

    import jax
    import keras
    import numpy as np

    if not args.tf32:
        jax.config.update("jax_default_matmul_precision", "highest")
    if args.precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    modes = ["inference", "train"] if args.mode == "both" else [args.mode]
    # JAX's GPU backend first: its CUDA libraries (cuDNN...) load before PyTorch's do
    jax_device = jax.devices()[0]
    peer_mods = (None, None, "--no-peer") if args.no_peer else load_peer()
    torch, torchvision, why = peer_mods
    device = "cpu"
    if torch is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    devices = {
        "jax": f"{jax_device.platform}: {jax_device.device_kind}",
        "torch": (torch.cuda.get_device_name(0) if device == "cuda" else "cpu")
        if torch is not None
        else None,
    }
    print(
        f"Keras {keras.__version__} on JAX {jax.__version__} ({devices['jax']}); peer: "
        + (
            f"torch {torch.__version__}, torchvision {torchvision.__version__} ({devices['torch']})"
            if torch is not None
            else f"none ({why})"
        ),
        flush=True,
    )
    if jax_device.platform != "gpu" and not args.tiny:
        print(
            "warning: JAX sees no GPU; full-size rows on a CPU take very long (use --tiny for a smoke test)",
            flush=True,
        )

    def versions():
        v = {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "jax": jax.__version__,
            "numpy": np.__version__,
        }
        try:
            v["jaxlib"] = importlib.import_module("jaxlib").__version__
        except Exception:  # noqa: BLE001
            v["jaxlib"] = None
        if torch is not None:
            v.update(
                torch=torch.__version__,
                torchvision=torchvision.__version__,
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if device == "cuda" else None,
            )
        return v

    result = {
        "benchmark": "gpu",
        "backend": "jax",
        "devices": devices,
        "versions": versions(),
        "settings": {
            "precision": args.precision,
            "keras_dtype_policy": keras.config.dtype_policy().name,
            "torch_autocast": "bfloat16" if args.precision == "bfloat16" else None,
            "tf32": args.tf32,
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
            "cudnn_benchmark": torch is not None,
            "torch_channels_last": args.channels_last,
            "torch_compile": args.torch_compile,
            "optimizer": f"SGD lr {LEARNING_RATE}, momentum {MOMENTUM}",
            "modes": modes,
            "warmup": args.warmup,
            "steps": args.steps,
            "tiny": args.tiny,
            "timing": "per-step synchronised, median; inputs resident on the device",
            "ours_compilation": "jax.jit(model.predict_step) / jax.jit(model.train_step, donated state)",
        },
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
        "peer_available": torch is not None,
        "peer_unavailable_reason": None if torch is not None else why,
        "results": [],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in names:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            result.setdefault("not_run", []).append(name)
            print(f"{name}: not run (--budget-s {args.budget_s:g} spent)", flush=True)
            continue
        result["results"].append(bench(name, args, peer_mods, modes, device))
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a cut-short run keeps its rows
        gc.collect()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print("\n" + table(result["results"], modes))
    print(
        f"(images/s, median step; ratio = ours / torchvision, > 1: ours faster; {args.precision}, "
        f"TF32 {'on' if args.tf32 else 'off'}"
        + ("; --tiny: ours narrowed, ratios not comparable)" if args.tiny else ")")
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
