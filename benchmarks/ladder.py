"""How much faster did each step of the R-CNN lineage make detection?

Times the whole test-time path of each trained detector of a detector ladder
(``cnn-apps study detectors``: R-CNN, SPP-net, Fast R-CNN, Faster R-CNN, YOLO v1, SSD on the
same images and backbone) at batch 1, proposals included, on the same test images:

* R-CNN / SPP-net: ``predict`` (selective search, features of each proposal, SVMs, box
  regression, NMS; the split into proposal / feature / classify ms is kept);
* Fast R-CNN: selective search on the image (timed here, every call) plus the compiled
  ``detect`` fed ``{"images", "proposals"}``;
* Faster R-CNN, YOLO v1, SSD: the compiled ``detect`` (network, decoding, NMS).

Calls alternate between the detectors image by image (``--rounds`` passes over ``--images``
test images after one untimed warm-up pass), so a busy machine slows all of them alike; each
detector's figure is the median of its calls. Speed-ups are against R-CNN and are printed next
to the course's table (R-CNN 50 s, Fast R-CNN 2 s, Faster R-CNN 0.2 s per image: 1x / 25x /
250x) as ``measured / course`` ratios.

Peer: when torchvision is importable, its Faster R-CNN
(``fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)``, our number of
classes, our image size as ``min_size``/``max_size``, our score / IoU thresholds and
proposal count) is timed in the same rotation and ``ours / torchvision`` ms per image is
reported for our Faster R-CNN; otherwise the JSON says ``"peer": null``.

The models come from a finished ladder study (``--study RUN_ID``: the parent run the study
printed), or the study is run first on the ladder config (``--config``, default
``pipelines/configs/shapes_detector_ladder.yaml``, with ``--set KEY=VALUE`` overrides as for
``cnn-apps``, e.g. ``--set data.train_size=300`` to shorten it).
Writes ``benchmarks/results/ladder.json``. TensorFlow only (R-CNN and SPP-net use OpenCV's
selective search and scikit-learn's SVMs outside any graph).

    python benchmarks/ladder.py [--study RUN_ID] [--config C] [--set KEY=VALUE ...]
        [--images 20] [--rounds 3] [--no-peer] [--out benchmarks/results/ladder.json]
"""

from __future__ import annotations

import argparse
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

DEFAULT_CONFIG = "pipelines/configs/shapes_detector_ladder.yaml"


def ladder_rows(args) -> tuple[str, list[dict]]:
    """(study run id, one row per detector: detector, test_map50, train_run, ...) of a
    finished ladder study, or of one run now."""
    from cnn_apps import tracking
    from cnn_apps.config import load_config

    config = load_config(args.config, args.set)
    tracking.setup(config)
    if args.study:
        return args.study, study_rows(args.study)
    from cnn_apps.stages.ladder import ladder_study

    result = ladder_study(config)
    return result.run_id, result.extra["rows"]


def study_rows(study_run: str) -> list[dict]:
    """The rows of a finished ladder study, from its child runs (in the order they ran)."""
    import mlflow

    from cnn_apps import tracking
    from cnn_apps.errors import ConfigError

    parent = tracking.get_run(study_run)
    if parent.data.tags.get("study") != "detectors":
        raise ConfigError(f"run {study_run} is not a detector ladder study (tag study=detectors)")
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        output_format="list",
        filter_string=f"tags.study_run = '{study_run}'",
        order_by=["attributes.start_time"],
    )
    evaluated = {
        c.data.tags.get("source_run"): c
        for c in mlflow.search_runs(
            experiment_ids=[parent.info.experiment_id],
            output_format="list",
            filter_string=f"tags.mlflow.parentRunId = '{study_run}' and tags.stage = 'evaluate'",
        )
    }
    rows = []
    for run in children:
        if run.data.tags.get("stage") != "train":
            continue
        ev = evaluated.get(run.info.run_id)
        rows.append(
            {
                "detector": run.data.tags["setting"],
                "train_run": run.info.run_id,
                "test_map50": ev.data.metrics.get("test_map50") if ev else None,
            }
        )
    if not rows:
        raise ConfigError(f"run {study_run} has no train runs of detectors (tag study_run)")
    return rows


def inference_call(row: dict):
    """(call(image uint8 (S, S, 3)) -> None, the model's image size, parts(): the split of the
    last call's time in ms, the model) for the detector a ladder row trained."""
    import numpy as np

    from cnn_apps import tracking
    from cnn_apps.data.proposal_cache import ProposalSettings, propose
    from cnn_apps.serving import image_input_shape
    from cnn_apps.tasks.region_detection import is_region_detector, load_region_detector

    if is_region_detector(row["detector"]):
        model = load_region_detector(row["train_run"])
        return (
            (lambda image: model.predict(image[None])),
            model.image_size,
            (lambda: dict(model.last_timings)),
            model,
        )
    model = tracking.load_keras_model(row["train_run"])
    size = image_input_shape(model)[0]
    settings = ProposalSettings.of(model)
    if settings is None:
        return (lambda image: model.predict_on_batch(image[None].astype(np.float32))), size, dict, model
    last = {}

    def call(image):
        start = time.perf_counter()
        proposals, _ = propose([image], settings)
        last["proposal_ms"] = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        model.predict_on_batch({"images": image[None].astype(np.float32), "proposals": proposals})
        last["network_ms"] = 1000 * (time.perf_counter() - start)

    return call, size, (lambda: dict(last)), model


def test_images(train_run: str, size: int, count: int):
    """The first ``count`` test images of a ladder train run's dataset at ``size`` px, uint8
    RGB (the data section the study ran with)."""
    import dataclasses

    import numpy as np

    from cnn_apps import tracking
    from cnn_apps.config import from_dict
    from cnn_apps.tasks.inputs import split_dataset

    spec = tracking.load_dataset_spec(train_run)
    config = from_dict(tracking.load_run_config(train_run))
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=size))
    images = [
        np.clip(np.rint(np.asarray(x)), 0, 255).astype(np.uint8)
        for x, _ in split_dataset(spec, config, "test", training=False, limit=count)
    ]
    images = np.concatenate(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def load_peer(num_classes: int, size: int, settings: dict):
    """torchvision's Faster R-CNN at our size and settings: (call(image), info), or None."""
    try:
        import torch
        import torchvision
        from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
    except ImportError:
        return None
    torch.manual_seed(0)
    kwargs = {
        "min_size": size,
        "max_size": size,
        "box_score_thresh": settings["score_threshold"],
        "box_nms_thresh": settings["iou_threshold"],
        "box_detections_per_img": settings["max_detections"],
        "rpn_post_nms_top_n_test": settings["proposals"],
        "rpn_pre_nms_top_n_test": settings["pre_nms"],
    }
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs
    ).eval()

    def call(image):
        with torch.inference_mode():
            model([torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)])

    info = {
        "name": "torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn",
        "device": "cpu",
        "torchvision": torchvision.__version__,
        "params": int(sum(p.numel() for p in model.parameters())),
        "settings": kwargs,
    }
    return call, info


def faster_rcnn_settings(model) -> dict:
    """Our Faster R-CNN's post-processing and proposal counts (for the peer)."""
    pp, config = model.postprocess, model.get_config()
    return {
        "score_threshold": pp["score_threshold"],
        "iou_threshold": pp["iou_threshold"],
        "max_detections": pp["max_detections"],
        "proposals": int(config["rpn_post_nms_top_k"]),
        "pre_nms": int(config["rpn_pre_nms_top_k"]),
    }


def rotate(calls: dict, images, rounds: int) -> dict:
    """{name: [ms of each timed call]} with the detectors alternating image by image after one
    untimed pass (tracing, OpenCV and TF start-up); also each detector's mean split of its time."""
    for image in images:
        for call, _ in calls.values():
            call(image)
    times = {name: [] for name in calls}
    parts = {name: {} for name in calls}
    for _ in range(rounds):
        for image in images:
            for name, (call, last_parts) in calls.items():
                start = time.perf_counter()
                call(image)
                times[name].append(1000 * (time.perf_counter() - start))
                for key, value in last_parts().items():
                    parts[name].setdefault(key, []).append(value)
    return times, {name: {k: statistics.median(v) for k, v in p.items()} for name, p in parts.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--study", help="run id of a finished `cnn-apps study detectors` (else one is run now)"
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="the ladder config (tracking, and the study to run when --study is not given)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, as for cnn-apps (e.g. data.train_size=300, tracking.uri=...)",
    )
    parser.add_argument("--images", type=int, default=20, help="test images timed")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--no-peer", action="store_true", help="do not time torchvision even if installed")
    parser.add_argument("--out", "--output", dest="out", default=str(ROOT / "benchmarks/results/ladder.json"))
    args = parser.parse_args(argv)
    os.chdir(ROOT)

    import keras
    import numpy as np

    from cnn_apps.stages.ladder import COURSE

    study_run, rows = ladder_rows(args)
    calls, sizes, models = {}, {}, {}
    for row in rows:
        call, size, parts, models[row["detector"]] = inference_call(row)
        calls[row["detector"]], sizes[row["detector"]] = (call, parts), size
    if len(set(sizes.values())) != 1:
        raise SystemExit(
            f"the ladder's detectors take different image sizes {sizes}: not the same test images"
        )
    size = next(iter(sizes.values()))
    images = test_images(rows[0]["train_run"], size, args.images)
    peer = None
    if not args.no_peer and "faster_rcnn" in calls:
        peer = load_peer(
            len(models["faster_rcnn"].class_names), size, faster_rcnn_settings(models["faster_rcnn"])
        )
        if peer is not None:
            calls["torchvision_faster_rcnn"] = (peer[0], dict)
    print(
        f"timing {', '.join(calls)} on {len(images)} test images of {size} px, {args.rounds} rounds",
        flush=True,
    )
    times, parts = rotate(calls, images, args.rounds)

    base = statistics.median(times[rows[0]["detector"]])
    table = []
    for row in rows:
        name = row["detector"]
        ms = statistics.median(times[name])
        entry = {
            "detector": name,
            "ms_per_image": round(ms, 2),
            "p90_ms": round(float(np.percentile(times[name], 90)), 2),
            "parts_ms": {k: round(v, 2) for k, v in parts[name].items()},
            "speedup_vs_first": round(base / ms, 2),
            "test_map50": row.get("test_map50"),
            "train_run": row["train_run"],
        }
        if name in COURSE:
            seconds, speedup = COURSE[name]
            entry["course"] = {
                "seconds_per_image": seconds,
                "speedup": speedup,
                "ratio_measured_over_course_speedup": round(base / ms / speedup, 3),
            }
        table.append(entry)
        print(
            f"{name:>14}: {ms:9.2f} ms/image (p90 {entry['p90_ms']:.2f}), {entry['speedup_vs_first']:6.1f}x "
            f"vs {rows[0]['detector']}"
            + (f" (course {entry['course']['speedup']}x)" if name in COURSE else "")
            + "; "
            + ", ".join(f"{k} {v:.1f}" for k, v in entry["parts_ms"].items()),
            flush=True,
        )
    peer_info = None
    if peer is not None:
        peer_ms = statistics.median(times["torchvision_faster_rcnn"])
        ours = statistics.median(times["faster_rcnn"])
        peer_info = {
            **peer[1],
            "ms_per_image": round(peer_ms, 2),
            "ratio_ms_ours_over_peer": round(ours / peer_ms, 3),
        }
        print(
            f"torchvision Faster R-CNN (mobilenet_v3 FPN, random weights): {peer_ms:.2f} ms/image; "
            f"ours / torchvision time {ours / peer_ms:.2f}x",
            flush=True,
        )

    import tensorflow as tf

    result = {
        "benchmark": "ladder",
        "study_run": study_run,
        "image_size": size,
        "images": len(images),
        "rounds": args.rounds,
        "batch": 1,
        "device": f"cpu: {platform.processor() or platform.machine()}",
        "cpu_count": os.cpu_count(),
        "versions": {
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
        },
        "detectors": table,
        "peer": peer_info,
    }
    from provenance import write_result  # benchmarks/ is on sys.path when run as a script

    out = write_result("ladder", result, Path(args.out))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
