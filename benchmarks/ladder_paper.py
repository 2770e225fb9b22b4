"""The detector ladder at its papers' scale: how much faster each step of the R-CNN lineage is
with VGG-16 on photographs and ~2,000 proposals, as in the course's table (R-CNN 50 s, Fast
R-CNN 2 s, Faster R-CNN 0.2 s per image: 1x / 25x / 250x).

``benchmarks/ladder.py`` times the trained ladder on 112 px shapes with a compact backbone,
where selective search is most of the time. Here each rung runs at its paper's test settings,
with random weights (speed does not depend on them) and 20 classes + background, on real
photographs (OpenCV's samples, Debian ``opencv-doc``; ``--photos`` names others), each first
resized to PASCAL VOC's size (500 px longer side):

* **R-CNN**: selective search (OpenCV, fast mode, at most 2,000 proposals) on the photo; every
  proposal warped with 16 px context to 224 x 224 and run through VGG-16; linear SVMs, class
  specific box regression, per-class NMS (:class:`~cnn_apps.detection.rcnn.RCNN`);
* **SPP-net**: the same proposals; conv5 (``block5_conv3``, stride 16) once on the photo at a
  600 px shorter side, a 4-level pyramid (6x6, 3x3, 2x2, 1x1) per proposal, SVMs, regression,
  NMS (:class:`~cnn_apps.detection.sppnet.SPPNet`);
* **Fast R-CNN**: the same proposals; VGG-16 conv5 at a 600 px shorter side, 7x7 RoI max pooling,
  fc6 / fc7 (4096), softmax and box deltas per proposal, NMS
  (:class:`~cnn_apps.detection.fast_rcnn.FastRCNN`);
* **Faster R-CNN**: the same network with the RPN (512-filter 3x3 conv, 9 anchors of 128-512 px,
  6,000 boxes before and 300 after its NMS) in place of selective search;
* **YOLO v1** at 448 and **SSD300** as in their papers (YOLO on VGG-16 as its paper's "YOLO
  VGG-16" row, FC head 4096; SSD300 on VGG-16, 8,732 default boxes).

Our detectors take square inputs: the photo at a 600 px shorter side (600 x 800 for VOC's 4:3)
is zero-padded to 800 x 800, so the two-stage rungs convolve 1.33x the pixels of the papers'
inputs (this favours R-CNN in the ratios, never the later rungs).

Each rung's multiply-adds per image are counted (``cnn_apps.backbones.flops``: convolutions and
fully connected layers, as the papers count them): R-CNN's network per warp times the proposals,
the others' networks as built, plus the SVMs and box regressors per proposal. Their ratio to
R-CNN's is the speed-up each rung would show if every network ran at the same multiply-adds per
second; the measured speed-up differs by how efficiently each runs (``network_gmacs_per_s``).

Each call is timed whole and split into proposals (selective search; Faster R-CNN's RPN is in
its network), network and post-processing (SVMs + regression + NMS for R-CNN / SPP-net; the
compiled detect minus the network-only call for the others). R-CNN's network time is linear in
the proposals (each warp is its own forward pass): it is timed on ``--rcnn-warps`` warps per
photo and scaled to the photo's proposal count (``--rcnn-warps 0``: all of them, minutes per
photo on a CPU). Calls alternate between the rungs photo by photo after one untimed pass; each
rung's figure is the median. Ratios are against R-CNN's ms per image, next to the course's
1x / 25x / 250x and each paper's own test-time figure on its GPU.

Writes ``benchmarks/results/ladder_paper.json``. It runs under TensorFlow (the default) or under
``KERAS_BACKEND=jax`` without TensorFlow, as on a GPU machine (R-CNN's and SPP-net's NMS then run
in NumPy); ``benchmarks/device_session.sh`` runs it there with every network on the GPU and
selective search on that machine's CPU cores. ``--precision bfloat16`` runs the networks under
Keras' ``mixed_bfloat16``.

    python benchmarks/ladder_paper.py [--photos a.jpg,b.jpg] [--rcnn-warps 64] [--rounds 1]
        [--rungs rcnn,sppnet,fast_rcnn,faster_rcnn,yolo,ssd300] [--precision float32|bfloat16]
        [--tiny] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OPENCV_SAMPLES = Path("/usr/share/doc/opencv-doc/examples/data")  # Debian opencv-doc
DEFAULT_PHOTOS = ("messi5.jpg", "home.jpg", "fruits.jpg", "building.jpg")
RUNGS = ("rcnn", "sppnet", "fast_rcnn", "faster_rcnn", "yolo", "ssd300")
NUM_CLASSES = 20  # PASCAL VOC
VOC_LONG_SIDE = 500  # VOC's photos are about 500 x 375
COURSE_MS = {"rcnn": 50_000.0, "fast_rcnn": 2_000.0, "faster_rcnn": 200.0}  # the course's table
# each paper's own test time per image (ms) on its GPU, VGG-16 unless said
PAPER_MS = {
    "rcnn": (47_000.0, "R-CNN VGG-16, K40, proposals excluded (Fast R-CNN paper, Table 4)"),
    "sppnet": (2_300.0, "SPPnet VGG-16, K40, proposals excluded (Fast R-CNN paper, Table 4)"),
    "fast_rcnn": (320.0, "Fast R-CNN VGG-16, K40, + ~2 s selective search on a CPU (its Table 4)"),
    "faster_rcnn": (198.0, "Faster R-CNN VGG-16, K40, RPN included: 5 fps (its Table 5)"),
    "yolo": (1000.0 / 21, "YOLO VGG-16, Titan X: 21 fps (YOLO paper, Table 1; Darknet YOLO 45 fps)"),
    "ssd300": (1000.0 / 59, "SSD300 VGG-16, Titan X: 59 fps (its paper)"),
}


def photos(names: list[str], long_side: int):
    """The photos as RGB uint8 arrays resized to ``long_side`` px on their longer side."""
    import cv2
    import numpy as np

    out = []
    for name in names:
        path = Path(name) if Path(name).is_file() else OPENCV_SAMPLES / name
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(
                f"cannot read the photo {path}: install Debian's opencv-doc or pass --photos FILE,..."
            )
        h, w = image.shape[:2]
        scale = long_side / max(h, w)
        size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        out.append(np.ascontiguousarray(image[:, :, ::-1]))
    return out


def network_input(photo, short_side: int, square: int):
    """The photo at ``short_side`` px on its shorter side (longer side at most ``square``),
    zero-padded to ``square`` x ``square``; and that scale (boxes in photo pixels times it)."""
    import cv2
    import numpy as np

    h, w = photo.shape[:2]
    scale = min(short_side / min(h, w), square / max(h, w))
    size = (min(int(round(w * scale)), square), min(int(round(h * scale)), square))
    canvas = np.zeros((square, square, 3), np.uint8)
    canvas[: size[1], : size[0]] = cv2.resize(photo, size, interpolation=cv2.INTER_LINEAR)
    return canvas, scale


def settings(tiny: bool) -> dict:
    """The papers' test settings, or (``tiny``) a smoke test's: VGG-16 at 1/16 of its widths,
    small photos, few proposals (its ratios mean nothing)."""
    if tiny:
        return dict(
            width=0.0625,
            long_side=160,
            short_side=120,
            square=160,
            warp=64,
            max_proposals=64,
            head_units=(64, 64),
            rpn_filters=16,
            anchor_sizes=(32.0, 64.0, 128.0),
            rpn_pre_nms=600,
            rpn_post_nms=30,
            yolo_size=224,
            yolo_hidden=64,
        )
    return dict(
        width=1.0,
        long_side=VOC_LONG_SIDE,
        short_side=600,
        square=800,
        warp=224,
        max_proposals=2000,
        head_units=(4096, 4096),
        rpn_filters=512,
        anchor_sizes=(128.0, 256.0, 512.0),
        rpn_pre_nms=6000,
        rpn_post_nms=300,
        yolo_size=448,
        yolo_hidden=4096,
    )


def _random_head(detector, dim: int, seed: int = 0) -> None:
    """SVMs and box regressors with random weights of the right shapes (speed only)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = detector.num_classes
    detector.head.set_state(
        {
            "scale": 1.0,
            "svm_w": (rng.standard_normal((k, dim)) / np.sqrt(dim)).astype(np.float32),
            "svm_b": np.zeros(k, np.float32),
            "reg_w": (0.01 * rng.standard_normal((k, 4, dim)) / np.sqrt(dim)).astype(np.float32),
            "reg_b": np.zeros((k, 4), np.float32),
        }
    )


def region_rung(kind: str, s: dict):
    """R-CNN or SPP-net with a random VGG-16 and random SVMs / regressors."""
    from cnn_apps.detection.rcnn import RCNN
    from cnn_apps.detection.sppnet import SPPNet

    names = [f"class{i}" for i in range(NUM_CLASSES)]
    common = dict(
        backbone="vgg16",
        width=s["width"],
        warp_size=s["warp"],
        max_proposals=s["max_proposals"],
        feature_batch_size=32,
    )
    if kind == "rcnn":
        detector = RCNN(NUM_CLASSES, names, image_size=s["long_side"], **common)
    else:
        detector = SPPNet(
            NUM_CLASSES,
            names,
            image_size=s["square"],
            spp_levels=(6, 3, 2, 1),
            feature_level="block5_conv3",
            **common,
        )
    detector.classifier = detector.build_classifier()
    detector._after_finetune()
    dim = (
        detector._feature_model.output.shape[-1] if kind == "rcnn" else detector._pool_model.output.shape[-1]
    )
    _random_head(detector, int(dim))
    return detector


def keras_rung(kind: str, s: dict):
    """Fast / Faster R-CNN, YOLO v1 or SSD300 with random weights, and its network-only model."""
    import keras

    keras.utils.set_random_seed(0)
    narrow = {"width": s["width"]} if s["width"] != 1.0 else {}
    common = dict(backbone="vgg16", backbone_args=narrow, preprocessing="caffe")
    two_stage = dict(
        image_size=s["square"], feature_level="block5_conv3", roi_pool_size=7, head_units=s["head_units"]
    )
    if kind == "fast_rcnn":
        from cnn_apps.detection.fast_rcnn import FastRCNN

        model = FastRCNN(NUM_CLASSES, max_proposals=s["max_proposals"], **common, **two_stage)
    elif kind == "faster_rcnn":
        from cnn_apps.detection.faster_rcnn import FasterRCNN

        model = FasterRCNN(
            NUM_CLASSES,
            anchor_sizes=s["anchor_sizes"],
            aspect_ratios=(0.5, 1.0, 2.0),
            rpn_filters=s["rpn_filters"],
            rpn_pre_nms_top_k=s["rpn_pre_nms"],
            rpn_post_nms_top_k=s["rpn_post_nms"],
            **common,
            **two_stage,
        )
    elif kind == "yolo":
        from cnn_apps.detection.yolo import YOLOv1

        model = YOLOv1(NUM_CLASSES, image_size=s["yolo_size"], hidden_units=s["yolo_hidden"], **common)
    else:
        from cnn_apps.detection.ssd import ssd300_vgg16

        extra = {"backbone_args": {**narrow, "ceil_pooling": True}} if narrow else {}
        model = ssd300_vgg16(NUM_CLASSES, **extra)
    network = keras.Model(model.inputs, model.outputs, name=f"{model.name}_network")
    return model, network


def rung_call(kind: str, s: dict, num_threads: int | None):
    """(call(photo) -> {proposal_ms, network_ms, post_ms, proposals}, description) of a rung."""
    import numpy as np

    from cnn_apps.detection.proposals import pad_proposals, selective_search

    def propose(photo):
        start = time.perf_counter()
        boxes = selective_search(
            photo, mode="fast", max_proposals=s["max_proposals"], num_threads=num_threads
        )
        return boxes, 1000 * (time.perf_counter() - start)

    from cnn_apps.backbones.flops import count_macs

    if kind in ("rcnn", "sppnet"):
        detector = region_rung(kind, s)
        # multiply-adds: R-CNN's network per warp, SPP-net's conv map per photo; then per proposal
        # the SVMs and the class-specific box regressors (K x (1 + 4) dot products of the features)
        net_macs = count_macs(detector._feature_model if kind == "rcnn" else detector._conv_model)
        dim = int((detector._feature_model if kind == "rcnn" else detector._pool_model).output.shape[-1])
        head_macs = detector.num_classes * 5 * dim

        def call(photo):
            boxes, proposal_ms = propose(photo)
            if kind == "rcnn":
                warps = len(boxes) if not s["rcnn_warps"] else min(s["rcnn_warps"], len(boxes))
                detector.predict(photo[None], proposals=[boxes[:warps]])
                network_ms = detector.last_timings["feature_ms"] * len(boxes) / max(warps, 1)
                dim = detector._feature_model.output.shape[-1]
                features = np.random.default_rng(0).standard_normal((len(boxes), dim)).astype(np.float32)
                start = time.perf_counter()
                detector.head.detect(features, boxes, max(photo.shape[:2]))
                post_ms = 1000 * (time.perf_counter() - start)
            else:
                image, scale = network_input(photo, s["short_side"], s["square"])
                detector.predict(image[None], proposals=[boxes * scale])
                network_ms = detector.last_timings["feature_ms"]
                post_ms = detector.last_timings["classify_ms"]
            macs = net_macs * (len(boxes) if kind == "rcnn" else 1) + head_macs * len(boxes)
            return {
                "proposal_ms": proposal_ms,
                "network_ms": network_ms,
                "post_ms": post_ms,
                "proposals": len(boxes),
                "gmacs": macs / 1e9,
            }

        return call

    model, network = keras_rung(kind, s)
    size = int(model.inputs[0].shape[1])
    # the whole network as built; the RoI head runs on every box it is given: Fast R-CNN's on all
    # max_proposals (padded) boxes, Faster R-CNN's on the RPN's post-NMS top k
    rois = {"fast_rcnn": s["max_proposals"], "faster_rcnn": s["rpn_post_nms"]}.get(kind)
    gmacs = count_macs(network, unknown_rows=rois) / 1e9

    def call(photo):
        proposal_ms, count = 0.0, 0
        if kind in ("yolo", "ssd300"):
            import cv2

            inputs = cv2.resize(photo, (size, size), interpolation=cv2.INTER_LINEAR)[None].astype(np.float32)
        else:
            image, scale = network_input(photo, s["short_side"], s["square"])
            inputs = image[None].astype(np.float32)
            if kind == "fast_rcnn":
                boxes, proposal_ms = propose(photo)
                count = len(boxes)
                padded, _ = pad_proposals([boxes * scale], s["max_proposals"])
                inputs = {"images": inputs, "proposals": padded}
            else:
                count = s["rpn_post_nms"]
        start = time.perf_counter()
        network.predict_on_batch(inputs)
        network_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        model.predict_on_batch(inputs)
        whole_ms = 1000 * (time.perf_counter() - start)
        return {
            "proposal_ms": proposal_ms,
            "network_ms": network_ms,
            "post_ms": max(whole_ms - network_ms, 0.0),
            "proposals": count,
            "gmacs": gmacs,
        }

    return call


def rotate(calls: dict, images, rounds: int) -> dict:
    """{rung: {part: median ms}} with the rungs alternating photo by photo after one untimed
    pass; a call's time is its proposals + network + post-processing."""
    for image in images:
        for call in calls.values():
            call(image)
    parts = {name: {} for name in calls}
    for _ in range(rounds):
        for image in images:
            for name, call in calls.items():
                for key, value in call(image).items():
                    parts[name].setdefault(key, []).append(value)
    out = {}
    for name, p in parts.items():
        totals = [a + b + c for a, b, c in zip(p["proposal_ms"], p["network_ms"], p["post_ms"])]
        out[name] = {k: statistics.median(v) for k, v in p.items()} | {
            "ms_per_image": statistics.median(totals),
            "calls": len(totals),
        }
    return out


def accelerator() -> str:
    """Where the networks ran: the JAX device's kind under JAX (``cpu`` or a GPU's name), else
    ``cpu`` (TensorFlow here runs on the CPU)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return "cpu" if device.platform == "cpu" else str(device.device_kind)
    return "cpu"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--photos", default=",".join(DEFAULT_PHOTOS), help="files, or names in OpenCV's samples"
    )
    parser.add_argument("--rungs", default=",".join(RUNGS))
    parser.add_argument("--rcnn-warps", type=int, default=64, help="warps timed per photo (0: all)")
    parser.add_argument("--rounds", type=int, default=1, help="timed passes over the photos")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--tiny", action="store_true", help="narrow VGG, small photos: a smoke test")
    parser.add_argument("--out", default=None, help="JSON path (default results/ladder_paper.json)")
    args = parser.parse_args(argv)
    rungs = [r.strip() for r in args.rungs.split(",") if r.strip()]
    unknown = sorted(set(rungs) - set(RUNGS))
    if unknown:
        parser.error(f"unknown rungs {unknown}; choose from {', '.join(RUNGS)}")

    import keras
    from provenance import write_result

    s = {**settings(args.tiny), "rcnn_warps": args.rcnn_warps}
    images = photos([p.strip() for p in args.photos.split(",") if p.strip()], s["long_side"])
    threads = os.cpu_count()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if args.precision == "bfloat16" else "float32")
    try:
        calls = {name: rung_call(name, s, threads) for name in rungs}
    finally:
        keras.mixed_precision.set_global_policy("float32")
    measured = rotate(calls, images, args.rounds)
    base = measured.get("rcnn", {}).get("ms_per_image")
    base_macs = measured.get("rcnn", {}).get("gmacs")
    rows = []
    for name in rungs:
        m = measured[name]
        paper_ms, paper_note = PAPER_MS[name]
        row = {"rung": name, **{k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}}
        row["gmacs"] = round(m["gmacs"], 4)
        row["speedup_vs_rcnn"] = round(base / m["ms_per_image"], 2) if base else None
        # the arithmetic ratio: how much faster the rung would be if both ran at the same multiply-adds
        # per second (network + head; selective search is not counted)
        row["macs_ratio_vs_rcnn"] = round(base_macs / m["gmacs"], 2) if base_macs else None
        row["network_gmacs_per_s"] = round(m["gmacs"] / (m["network_ms"] + m["post_ms"]) * 1000, 1)
        row["course_ms"] = COURSE_MS.get(name)
        row["course_speedup"] = round(COURSE_MS["rcnn"] / COURSE_MS[name], 1) if name in COURSE_MS else None
        row["paper_ms"] = round(paper_ms, 1)
        row["paper_note"] = paper_note
        row["paper_speedup_vs_rcnn"] = round(PAPER_MS["rcnn"][0] / paper_ms, 1)
        rows.append(row)
        speed = f"{row['speedup_vs_rcnn']:7.1f}x" if row["speedup_vs_rcnn"] else "      -"
        print(
            f"{name:12s} {m['ms_per_image']:10.0f} ms/image (proposals {m['proposal_ms']:7.0f}, network "
            f"{m['network_ms']:9.0f}, post {m['post_ms']:6.0f}; {m['proposals']:.0f} boxes) {speed}"
            f"  {m['gmacs']:9.1f} GMAC, {row['network_gmacs_per_s']:6.1f} GMAC/s"
        )
    payload = {
        "benchmark": "ladder_paper",
        "backend": keras.backend.backend(),
        "accelerator": accelerator(),
        "tiny": args.tiny,
        "precision": args.precision,
        "photos": [p.strip() for p in args.photos.split(",") if p.strip()],
        "photo_sizes": [list(im.shape[:2]) for im in images],
        "rounds": args.rounds,
        "rcnn_warps_timed": args.rcnn_warps,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "goals": {"fast_rcnn": 25.0, "faster_rcnn": 100.0},
        "rows": rows,
    }
    path = write_result("ladder_paper", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
