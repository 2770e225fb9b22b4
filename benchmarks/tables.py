"""The docs' result tables, generated from the committed JSON under ``benchmarks/results/``.

A table lives in a Markdown file between two markers::

    <!-- results: detection_zoo -->
    ... generated, do not edit ...
    <!-- /results -->

``python benchmarks/tables.py`` rewrites every such block of README.md and of the pages under
``docs/`` from their JSON files; ``--check`` only compares and exits 1 naming the stale tables
(``tests/test_result_tables.py`` runs the same check, so a figure typed by hand, or a JSON
re-measured without regenerating the docs, fails the suite). Each table ends with a line naming
its files' commits and dates.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def docs() -> list[Path]:
    """The Markdown files that may hold result blocks: README.md and the docs site's pages."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the benchmark that writes it")
    return json.loads(path.read_text())


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _source_line(results: list) -> str:
    seen = []
    for r in results:
        p = r["provenance"]
        item = f"commit {p['commit'][:12]}, {p['date'][:10]}, {p['machine']['cpu']} x{p['machine']['cores']}"
        if item not in seen:
            seen.append(item)
    return f"\n_Measured: {'; '.join(seen)}._\n"


DETECTION_ZOO = ("shapes_yolo", "shapes_ssd", "shapes_faster_rcnn", "shapes_yolov8")


def detection_zoo() -> str:
    """One row per detector config: ``benchmarks/zoo.py --config pipelines/configs/<config>``."""
    rows = [load(f"zoo_{name}") for name in DETECTION_ZOO]
    lines = [
        "| config | model | params | input | test mAP50 | VOC07 | COCO AP | COCO AP75 | epochs (best) "
        "| training | img/s | latency |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        t, m = r["train"], r["test"]
        epochs = f"{int(t['epochs_trained'])} ({int(t['best_epoch']) + 1})"
        model = r["architecture"]  # the backbone key means nothing to keras-cv's YOLOv8: not shown
        lines.append(
            f"| `{Path(r['config']).name}` | {model} | {int(t['params_total']):,} | {r['image_size']} "
            f"| {_number(m['test_map50'])} | {_number(m['test_map50_voc07'])} "
            f"| {_number(m['test_coco_ap'])} | {_number(m['test_coco_ap75'])} | {epochs} "
            f"| {t['train_seconds']:,.0f} s | {m['test_images_per_s']:,.0f} | {m['test_latency_ms']:.1f} ms |"
        )
    return "\n".join(lines) + "\n" + _source_line(rows)


def coco_eval() -> str:
    """``benchmarks/coco_eval.py``: the NumPy COCOeval against pycocotools."""
    r = load("coco_eval")
    c = r["config"]
    lines = [
        "| images | classes | detections per image | NumPy | pycocotools | speed-up | max stat difference |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {c['images']} | {c['classes']} | {c['detections_per_image']} | {r['numpy_seconds']:.2f} s "
        f"| {r['pycocotools_seconds']:.2f} s | {r['speedup']:.2f}x | {r['max_abs_stat_difference']:.1e} |",
    ]
    return "\n".join(lines) + "\n" + _source_line([r])


NAMES = {
    "rcnn": "R-CNN",
    "sppnet": "SPP-net",
    "fast_rcnn": "Fast R-CNN",
    "faster_rcnn": "Faster R-CNN",
    "yolo_v1": "YOLO v1",
    "ssd": "SSD",
    "fcn32s": "FCN-32s",
    "fcn16s": "FCN-16s",
    "fcn8s": "FCN-8s",
    "segnet": "SegNet",
    "unet": "U-Net",
}


def _name(key) -> str:
    return NAMES.get(str(key), str(key))


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _zoo_rows(configs, columns) -> str:
    """A zoo table: ``columns`` is a list of (header, alignment, function of the result)."""
    rows = [load(f"zoo_{name}") for name in configs]
    lines = [
        "| " + " | ".join(h for h, _, _ in columns) + " |",
        "| " + " | ".join(a for _, a, _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(f(r) for _, _, f in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n" + _source_line(rows)


def _latency(ms) -> str:
    return "n/a" if ms is None else f"{ms:.1f} ms"


def _train(r) -> str:
    t = r["train"]
    return f"{t['train_seconds']:,.0f} s, {int(t['epochs_trained'])} epochs (best {int(t['best_epoch']) + 1})"


_ZOO_HEAD = [
    ("config", "---", lambda r: f"`{Path(r['config']).name}`"),
    ("model", "---", lambda r: r["architecture"] or r["backbone"]),
    ("params", "---:", lambda r: f"{int(r['train']['params_total']):,}"),
    ("input", "---:", lambda r: str(r["image_size"])),
]
_ZOO_TAIL = [
    ("training", "---", _train),
    ("img/s", "---:", lambda r: f"{r['test']['test_images_per_s']:,.0f}"),
    ("latency", "---:", lambda r: _latency(r["test"].get("test_latency_ms"))),
]


def classifier_zoo() -> str:
    """``benchmarks/zoo.py --config pipelines/configs/shapes_classification.yaml``."""
    return _zoo_rows(
        ["shapes_classification"],
        _ZOO_HEAD + [("test accuracy", "---:", lambda r: _percent(r["test"]["test_accuracy"]))] + _ZOO_TAIL,
    )


def segmentation_zoo() -> str:
    """``benchmarks/zoo.py --config pipelines/configs/shapes_fcn8s.yaml``."""
    m = lambda key: lambda r: _number(r["test"][key])  # noqa: E731
    return _zoo_rows(
        ["shapes_fcn8s"],
        _ZOO_HEAD
        + [
            ("test mIoU", "---:", m("test_miou")),
            ("pixel accuracy", "---:", m("test_pixel_accuracy")),
            ("mean accuracy", "---:", m("test_mean_accuracy")),
            ("fw IoU", "---:", m("test_fw_iou")),
        ]
        + _ZOO_TAIL,
    )


def _study(kind: str, config: str) -> dict:
    return load(f"study_{kind}_{config}")


def segmenter_study() -> str:
    """``benchmarks/study.py segmentation --config pipelines/configs/shapes_segmenters.yaml``."""
    r = _study("segmentation", "shapes_segmenters")
    lines = [
        "| segmenter | test mIoU | pixel accuracy | mean accuracy | fw IoU | ms per image | images/s "
        "| parameters | training |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {_name(row['segmenter'])} | {row['test_miou']:.3f} | {row['test_pixel_accuracy']:.3f} "
            f"| {row['test_mean_accuracy']:.3f} | {row['test_fw_iou']:.3f} | {row['ms_per_image']:.1f} "
            f"| {row['images_per_s']:,.0f} | {int(row['params']):,} "
            f"| {row['train_seconds']:,.0f} s, {int(row['epochs'])} epochs |"
        )
    return "\n".join(lines) + "\n" + _source_line([r])


def detector_ladder() -> str:
    """``benchmarks/study.py detectors --config pipelines/configs/shapes_detector_ladder.yaml``."""
    r = _study("detectors", "shapes_detector_ladder")
    lines = [
        "| detector | test mAP50 | COCO AP | ms per image (study) | of it proposals | speed-up | training |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        proposals = row["proposal_ms"]
        proposals = (
            "-" if proposals in ("", None) or proposals != proposals or not proposals else f"{proposals:.0f}"
        )
        lines.append(
            f"| {_name(row['detector'])} | {row['test_map50']:.3f} | {row['test_coco_ap']:.3f} "
            f"| {row['ms_per_image']:.1f} | {proposals} | {row['speedup']:.1f}x "
            f"| {row['train_seconds']:,.0f} s |"
        )
    return "\n".join(lines) + "\n" + _source_line([r])


def ladder_timing() -> str:
    """``benchmarks/ladder.py --study <the ladder study>``: the trained ladder timed side by side."""
    r = load("ladder")
    lines = [
        "| detector | ms per image | p90 | parts (ms) | speed-up | course | measured / course speed-up |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in r["detectors"]:
        parts = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in row["parts_ms"].items()) or "-"
        course = row.get("course")
        lines.append(
            f"| {_name(row['detector'])} | {row['ms_per_image']:.1f} | {row['p90_ms']:.1f} | {parts} "
            f"| {row['speedup_vs_first']:.1f}x | "
            + (
                f"{course['seconds_per_image']:g} s, {course['speedup']}x | "
                f"{course['ratio_measured_over_course_speedup']:.3f} |"
                if course
                else "| |"
            )
        )
    peer = r.get("peer")
    tail = (
        f"\nPeer: torchvision's Faster R-CNN {peer['ms_per_image']:.1f} ms per image; ours / torchvision "
        f"{peer['ratio_ms_ours_over_peer']:.2f}x.\n"
        if peer
        else '\nPeer: torchvision was not installed for this run (`"peer": null`).\n'
    )
    return "\n".join(lines) + "\n" + tail + _source_line([r])


def _diagnosis_table(kind: str, config: str, first: str) -> str:
    r = _study(kind, config)
    lines = [
        f"| {first} | training error | validation error | variance | verdict | epochs (best) |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in r["rows"]:
        child = r["children"][row["run_id"]]["metrics"]
        best = int(child["best_epoch"]) + 1 if "best_epoch" in child else "n/a"
        lines.append(
            f"| {row['setting']} | {_percent(row['train_error'])} | {_percent(row['val_error'])} "
            f"| {100 * row['variance']:.1f} | {str(row['verdict']).replace('_', ' ')} "
            f"| {row['epochs']} ({best}) |"
        )
    return "\n".join(lines) + "\n" + _source_line([r])


def regularization_study() -> str:
    """``benchmarks/study.py regularization --config pipelines/configs/fashion_mnist_regularization.yaml``."""
    return _diagnosis_table("regularization", "fashion_mnist_regularization", "setting")


def learning_curve() -> str:
    """``benchmarks/study.py learning-curve --config pipelines/configs/fashion_mnist_regularization.yaml``."""
    return _diagnosis_table("learning_curve", "fashion_mnist_regularization", "training images")


def depth_study() -> str:
    """``benchmarks/study.py depth --config pipelines/configs/fashion_mnist_depth.yaml``: errors of
    the kept (best-validation) epoch, and the running training error of the last epoch."""
    r = _study("depth", "fashion_mnist_depth")
    lines = [
        "| model | parameters | training error | validation error | training error, last epoch | epochs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        child = r["children"][row["run_id"]]["metrics"]
        last = 1.0 - child["train_accuracy"] if "train_accuracy" in child else None
        lines.append(
            f"| {row['setting']} | {int(child['params_total']):,} | {_percent(row['train_error'])} "
            f"| {_percent(row['val_error'])} | {_percent(last)} | {row['epochs']} |"
        )
    return "\n".join(lines) + "\n" + _source_line([r])


REFERENCES = {
    "alexnet": "the paper's layer sizes",
    "vgg16": "keras.applications.VGG16",
    "vgg19": "keras.applications.VGG19; 19.6 G in the ResNet paper",
    "resnet18": "torchvision; 1.8 G in the paper",
    "resnet34": "torchvision; 3.6 G in the paper",
    "resnet50": "keras.applications.ResNet50 (v1: stride in the first 1x1); 3.8 G in the paper",
    "plain18": "the ResNet paper's plain nets",
    "plain34": "the ResNet paper's plain nets (3.6 G)",
}


def backbones() -> str:
    """``benchmarks/backbones.py``: the zoo at paper size (1,000 classes), and our VGG-16 and
    ResNet-50 against keras.applications' in one process."""
    r = load("backbones")
    lines = [
        "| backbone | input | parameters (all weights) | GMACs | checked against |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in r["zoo_paper_size"]:
        lines.append(
            f"| `{row['name']}` | {row['input_size']} | {row['params']:,} | {row['macs'] / 1e9:.2f} "
            f"| {REFERENCES.get(row['name'], '-')} |"
        )
    return "\n".join(lines) + "\n" + _source_line([r])


def backbone_speed() -> str:
    """``benchmarks/backbones.py``: our VGG-16 and ResNet-50 against keras.applications'."""
    r = load("backbones")
    lines = [
        f"{r['backend']}, {r['image_size']} px, batch {r['batch_size']}, medians of {r['rounds']} rounds; "
        "ratio = ours / theirs in images/s:",
        "",
        "| model | parameters (ours = theirs) | inference img/s | ratio | training img/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["results"]:
        same = "yes" if row["params_ours"] == row["params_keras"] else "NO"
        lines.append(
            f"| `{row['model']}` | {row['params_ours']:,} ({same}) | {row['ours_infer_images_per_s']:.1f} "
            f"| {row['infer_ratio']:.2f}x | {row['ours_train_images_per_s']:.1f} "
            f"| {row['train_ratio']:.2f}x |"
        )
    return "\n".join(lines) + "\n" + _source_line([r])


def detector_speed() -> str:
    """``benchmarks/detectors.py``: detect (network, decoding, NMS) with TF's NMS and the portable one."""
    r = load("detectors")
    lines = [
        "| model | params | boxes before NMS | NMS | latency (batch 1) | img/s (batch 16) "
        "| NMS share of latency |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in r["results"]:
        for impl, m in row["implementations"].items():
            lines.append(
                f"| {_name(row['model'])} | {row['params']:,} | {row['boxes_before_nms']} | {impl} "
                f"| {m['latency_ms']:.1f} ms | {m['images_per_s']:,.0f} "
                f"| {100 * m['nms_share_latency']:.0f}% |"
            )
    return "\n".join(lines) + "\n" + _source_line([r])


def data_pipeline() -> str:
    """``benchmarks/data_pipeline.py`` (``make bench``): input throughput against the train step's."""
    r = load("data_pipeline")
    lines = [
        "| config | first epoch (read, decode, cache) | warm pipeline | train step | pipeline / train step |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| `{Path(r['config']).name}` | {r['pipeline_cold_images_per_s']:,.0f} img/s "
        f"| {r['pipeline_warm_images_per_s']:,.0f} img/s | {r['train_step_images_per_s']:,.0f} img/s "
        f"| {r['ratio_pipeline_to_train']:.1f}x |",
    ]
    return "\n".join(lines) + "\n" + _source_line([r])


PAPERS = {
    "fcn32s": "1.8 M of them the fixed x32 bilinear filter",
    "segnet": "29.5 M in the SegNet paper",
    "unet": "31 M in the U-Net paper",
    "ssd300_vgg16": "torchvision's ssd300_vgg16 has 35,641,826 with 90 classes; ours too (a test)",
}


def model_sizes() -> str:
    """``benchmarks/model_sizes.py``: the registered detectors (20 classes) and segmenters (21
    classes at 224 px) at their default size."""
    r = load("model_sizes")
    lines = [
        "| model | kind | input | parameters | note |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in r["detectors"]:
        lines.append(
            f"| `{row['name']}` | detector ({row['backbone']}) | {row['input_size']} | {row['params']:,} "
            f"| {PAPERS.get(row['name'], '')} |"
        )
    for row in r["segmenters"]:
        lines.append(
            f"| `{row['name']}` | segmenter | 224 | {row['params']:,} | {PAPERS.get(row['name'], '')} |"
        )
    return "\n".join(lines) + "\n" + _source_line([r])


TABLES = {
    "model_sizes": model_sizes,
    "detection_zoo": detection_zoo,
    "coco_eval": coco_eval,
    "classifier_zoo": classifier_zoo,
    "backbones": backbones,
    "backbone_speed": backbone_speed,
    "detector_speed": detector_speed,
    "data_pipeline": data_pipeline,
}


def render(text: str) -> tuple[str, list]:
    """``text`` with every results block regenerated, and the names of the blocks that changed."""
    changed = []

    def replace(match):
        name = match.group("name")
        if name not in TABLES:
            raise SystemExit(f"unknown results table {name!r}; known: {', '.join(TABLES)}")
        body = TABLES[name]()
        if body != match.group("body"):
            changed.append(name)
        return f"{match.group(1)}{body}{match.group(4)}"

    return BLOCK.sub(replace, text), changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    stale = []
    for doc in docs():
        text = doc.read_text(encoding="utf-8")
        new, changed = render(text)
        stale += [f"{doc.relative_to(ROOT)}: {name}" for name in changed]
        if changed and not args.check:
            doc.write_text(new, encoding="utf-8")
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
