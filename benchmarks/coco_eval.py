"""Is the NumPy COCOeval worth keeping next to pycocotools?

``cnn-apps evaluate`` reports pycocotools' own COCO numbers (on the logged ``detections.json``);
the package's NumPy re-implementation (:mod:`cnn_apps.detection.evaluation`) still scores every
validation pass and study. This benchmark checks both claims that justify it, on the same
synthetic split in one run: it agrees with pycocotools (max |difference| of the 12 stats) and it
is faster (``speedup`` = pycocotools' seconds / NumPy's, > 1: NumPy faster; medians of
``--repeats`` alternating runs, pycocotools timed from in-memory dicts: index, loadRes,
evaluate, accumulate, summarize). Writes ``benchmarks/results/coco_eval.json``.

    python benchmarks/coco_eval.py [--images 500] [--classes 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def synthetic_split(images: int, classes: int, seed: int = 0):
    """Per-image truth (1-6 objects, some crowd) and detections (noisy copies of the truth plus
    clutter, 30 per image), xyxy pixels on 640x480 images."""
    rng = np.random.default_rng(seed)
    truth, dets = [], []
    for _ in range(images):
        n = int(rng.integers(1, 7))
        xy = rng.uniform(0, 500, (n, 2))
        wh = rng.uniform(8, 200, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [640, 480])], 1)
        labels = rng.integers(0, classes, n)
        truth.append({"boxes": boxes, "labels": labels, "iscrowd": rng.random(n) < 0.05, "size": (480, 640)})
        found = boxes + rng.normal(0, 6, boxes.shape)
        clutter_xy = rng.uniform(0, 560, (30 - n, 2))
        clutter = np.concatenate([clutter_xy, clutter_xy + rng.uniform(10, 80, (30 - n, 2))], 1)
        dets.append(
            {
                "boxes": np.concatenate([found, clutter]),
                "scores": np.round(rng.random(30), 6),
                "labels": np.concatenate([labels, rng.integers(0, classes, 30 - n)]),
            }
        )
    return truth, dets


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/coco_eval.json)")
    args = parser.parse_args(argv)

    from provenance import write_result

    from cnn_apps.detection.evaluation import evaluate_detections
    from cnn_apps.detection.pycocotools_eval import cocoeval, ground_truth_json, results_json

    names = [f"c{k}" for k in range(args.classes)]
    truth, dets = synthetic_split(args.images, args.classes)
    ground = ground_truth_json(truth, names)
    image_ids = [im["id"] for im in ground["images"]]
    results = results_json(dets, image_ids)
    # what the NumPy side scores: the detections exactly as written to detections.json
    written = [{"boxes": [], "scores": [], "labels": []} for _ in image_ids]
    for r in results:
        x, y, w, h = r["bbox"]
        item = written[image_ids.index(r["image_id"])]
        item["boxes"].append([x, y, x + w, y + h])
        item["scores"].append(r["score"])
        item["labels"].append(r["category_id"] - 1)

    timings = {"numpy": [], "pycocotools": []}
    for _ in range(args.repeats):  # alternating, so drift hits both sides alike
        start = time.perf_counter()
        ours = evaluate_detections(truth, written, args.classes, names)
        timings["numpy"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            reference = cocoeval(ground, results, image_ids)
        timings["pycocotools"].append(time.perf_counter() - start)
    stats = np.nan_to_num(ours.coco_stats, nan=-1.0)
    numpy_s, coco_s = statistics.median(timings["numpy"]), statistics.median(timings["pycocotools"])
    payload = {
        "config": {
            "images": args.images,
            "classes": args.classes,
            "repeats": args.repeats,
            "detections_per_image": 30,
        },
        "numpy_seconds": numpy_s,
        "pycocotools_seconds": coco_s,
        "speedup": coco_s / numpy_s,
        "max_abs_stat_difference": float(np.max(np.abs(stats - reference["stats"]))),
        "note": "numpy_seconds includes the VOC all-point and 11-point mAP (pycocotools has neither)",
    }
    path = write_result("coco_eval", payload, args.out)
    print(
        f"NumPy {numpy_s:.2f} s, pycocotools {coco_s:.2f} s: {payload['speedup']:.2f}x; "
        f"max |stat difference| {payload['max_abs_stat_difference']:.2e} -> {path}"
    )
    return payload


if __name__ == "__main__":
    main()
