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


def _source_line(results: list) -> str:
    seen = []
    for r in results:
        p = r["provenance"]
        item = f"commit {p['commit'][:12]}, {p['date'][:10]}, {p['machine']['cpu']} x{p['machine']['cores']}"
        if item not in seen:
            seen.append(item)
    return f"\n_Measured: {'; '.join(seen)}._\n"


def markdown(header: str, rows: list, results: list, *, intro: str = "", note: str = "") -> str:
    """A generated block: ``intro``, the table, ``note`` and the line naming where ``results`` were
    measured. ``header`` names the columns, ``|``-separated; a name ending in ``:`` is a
    right-aligned (number) column. ``rows`` are lists of cells."""
    names = [h.strip() for h in header.split("|")]
    lines = [
        "| " + " | ".join(n.removesuffix(":") for n in names) + " |",
        "| " + " | ".join("---:" if n.endswith(":") else "---" for n in names) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in cells) + " |" for cells in rows]
    body = "\n".join(lines) + "\n"
    return (f"{intro}\n\n" if intro else "") + body + (f"\n{note}\n" if note else "") + _source_line(results)


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _latency(ms) -> str:
    return "n/a" if ms is None else f"{ms:.1f} ms"


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


# ---------------------------------------------------------------- zoo: benchmarks/zoo.py, one config a row
DETECTION_ZOO = ("shapes_yolo", "shapes_ssd", "shapes_faster_rcnn", "shapes_yolov8")


def _zoo(configs, header: str, metrics) -> str:
    """Rows of ``benchmarks/zoo.py --config pipelines/configs/<config>``: the config, the model,
    its size, ``metrics(result)`` cells, and the training and speed figures."""
    results = [load(f"zoo_{name}") for name in configs]
    rows = []
    for r in results:
        t, m = r["train"], r["test"]
        rows.append(
            [
                f"`{Path(r['config']).name}`",
                r["architecture"] or r["backbone"],  # a detector's backbone key is not its model
                f"{int(t['params_total']):,}",
                r["image_size"],
                *metrics(m),
                f"{t['train_seconds']:,.0f} s, {int(t['epochs_trained'])} epochs "
                f"(best {int(t['best_epoch']) + 1})",
                f"{m['test_images_per_s']:,.0f}",
                _latency(m.get("test_latency_ms")),
            ]
        )
    return markdown(
        f"config | model | params: | input: | {header} | training | img/s: | latency:", rows, results
    )


def detection_zoo() -> str:
    """``benchmarks/zoo.py`` on each shipped single-shot and two-stage detector config."""
    return _zoo(
        DETECTION_ZOO,
        "test mAP50: | VOC07: | COCO AP: | COCO AP75:",
        lambda m: [
            _number(m[k]) for k in ("test_map50", "test_map50_voc07", "test_coco_ap", "test_coco_ap75")
        ],
    )


def classifier_zoo() -> str:
    """``benchmarks/zoo.py --config pipelines/configs/shapes_classification.yaml``."""
    return _zoo(["shapes_classification"], "test accuracy:", lambda m: [_percent(m["test_accuracy"])])


def segmentation_zoo() -> str:
    """``benchmarks/zoo.py --config pipelines/configs/shapes_fcn8s.yaml``."""
    keys = ("test_miou", "test_pixel_accuracy", "test_mean_accuracy", "test_fw_iou")
    return _zoo(
        ["shapes_fcn8s"],
        "test mIoU: | pixel accuracy: | mean accuracy: | fw IoU:",
        lambda m: [_number(m[k]) for k in keys],
    )


def coco_eval() -> str:
    """``benchmarks/coco_eval.py``: the NumPy COCOeval against pycocotools."""
    r = load("coco_eval")
    c = r["config"]
    row = [
        c["images"],
        c["classes"],
        c["detections_per_image"],
        f"{r['numpy_seconds']:.2f} s",
        f"{r['pycocotools_seconds']:.2f} s",
        f"{r['speedup']:.2f}x",
        f"{r['max_abs_stat_difference']:.1e}",
    ]
    header = (
        "images: | classes: | detections per image: | NumPy: | pycocotools: | speed-up: "
        "| max stat difference:"
    )
    return markdown(header, [row], [r])


# ---------------------------------------------------------------- studies: benchmarks/study.py
def _study(kind: str, config: str) -> dict:
    return load(f"study_{kind}_{config}")


def segmenter_study() -> str:
    """``benchmarks/study.py segmentation --config pipelines/configs/shapes_segmenters.yaml``."""
    r = _study("segmentation", "shapes_segmenters")
    rows = [
        [
            _name(row["segmenter"]),
            *(
                f"{row[k]:.3f}"
                for k in ("test_miou", "test_pixel_accuracy", "test_mean_accuracy", "test_fw_iou")
            ),
            f"{row['ms_per_image']:.1f}",
            f"{row['images_per_s']:,.0f}",
            f"{int(row['params']):,}",
            f"{row['train_seconds']:,.0f} s, {int(row['epochs'])} epochs",
        ]
        for row in r["rows"]
    ]
    header = (
        "segmenter | test mIoU: | pixel accuracy: | mean accuracy: | fw IoU: | ms per image: | images/s: "
        "| parameters: | training:"
    )
    return markdown(header, rows, [r])


def detector_ladder() -> str:
    """``benchmarks/study.py detectors --config pipelines/configs/shapes_detector_ladder.yaml``."""
    r = _study("detectors", "shapes_detector_ladder")
    rows = []
    for row in r["rows"]:
        proposals = row["proposal_ms"]
        rows.append(
            [
                _name(row["detector"]),
                f"{row['test_map50']:.3f}",
                f"{row['test_coco_ap']:.3f}",
                f"{row['ms_per_image']:.1f}",
                f"{proposals:.0f}"
                if isinstance(proposals, float) and proposals == proposals and proposals
                else "-",
                f"{row['speedup']:.1f}x",
                f"{row['train_seconds']:,.0f} s",
            ]
        )
    header = (
        "detector | test mAP50: | COCO AP: | ms per image (study): | of it proposals: | speed-up: | training:"
    )
    return markdown(header, rows, [r])


def ladder_timing() -> str:
    """``benchmarks/ladder.py --study <the ladder study>``: the trained ladder timed side by side."""
    r = load("ladder")
    rows = []
    for row in r["detectors"]:
        course = row.get("course") or {}
        rows.append(
            [
                _name(row["detector"]),
                f"{row['ms_per_image']:.1f}",
                f"{row['p90_ms']:.1f}",
                ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in row["parts_ms"].items()) or "-",
                f"{row['speedup_vs_first']:.1f}x",
                f"{course['seconds_per_image']:g} s, {course['speedup']}x" if course else "",
                f"{course['ratio_measured_over_course_speedup']:.3f}" if course else "",
            ]
        )
    peer = r.get("peer")
    note = (
        f"Peer: torchvision's Faster R-CNN {peer['ms_per_image']:.1f} ms per image; ours / torchvision "
        f"{peer['ratio_ms_ours_over_peer']:.2f}x."
        if peer
        else 'Peer: torchvision was not installed for this run (`"peer": null`).'
    )
    header = (
        "detector | ms per image: | p90: | parts (ms) | speed-up: | course: | measured / course speed-up:"
    )
    return markdown(header, rows, [r], note=note)


def _diagnosis_table(kind: str, config: str, first: str) -> str:
    r = _study(kind, config)
    rows = []
    for row in r["rows"]:
        child = r["children"][row["run_id"]]["metrics"]
        best = int(child["best_epoch"]) + 1 if "best_epoch" in child else "n/a"
        rows.append(
            [
                row["setting"],
                _percent(row["train_error"]),
                _percent(row["val_error"]),
                f"{100 * row['variance']:.1f}",
                str(row["verdict"]).replace("_", " "),
                f"{row['epochs']} ({best})",
            ]
        )
    header = f"{first} | training error: | validation error: | variance: | verdict | epochs (best):"
    return markdown(header, rows, [r])


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
    rows = []
    for row in r["rows"]:
        child = r["children"][row["run_id"]]["metrics"]
        last = 1.0 - child["train_accuracy"] if "train_accuracy" in child else None
        rows.append(
            [
                row["setting"],
                f"{int(child['params_total']):,}",
                _percent(row["train_error"]),
                _percent(row["val_error"]),
                _percent(last),
                row["epochs"],
            ]
        )
    header = (
        "model | parameters: | training error: | validation error: | training error, last epoch: | epochs:"
    )
    return markdown(header, rows, [r])


# ---------------------------------------------------------------- models and speed
REFERENCES = {
    "alexnet": "the paper's layer sizes",
    "vgg16": "keras.applications.VGG16",
    "vgg19": "keras.applications.VGG19; 19.6 G in the ResNet paper",
    "resnet18": "torchvision; 1.8 G in the paper",
    "resnet34": "torchvision; 3.6 G in the paper",
    "resnet50": "keras.applications.ResNet50 (v1: stride in the first 1x1); 3.8 G in the paper",
    "resnet50_v1_5": "torchvision's resnet50 (v1.5: stride in the 3x3; 4.09 G)",
    "plain18": "the ResNet paper's plain nets",
    "plain34": "the ResNet paper's plain nets (3.6 G)",
}


def backbones() -> str:
    """``benchmarks/backbones.py``: the zoo at paper size (1,000 classes)."""
    r = load("backbones")
    rows = [
        [
            f"`{row['name']}`",
            row["input_size"],
            f"{row['params']:,}",
            f"{row['macs'] / 1e9:.2f}",
            REFERENCES.get(row["name"], "-"),
        ]
        for row in r["zoo_paper_size"]
    ]
    return markdown("backbone | input: | parameters (all weights): | GMACs: | checked against", rows, [r])


def backbone_speed() -> str:
    """``benchmarks/backbones.py``: our VGG-16 and ResNet-50 against keras.applications'."""
    r = load("backbones")
    rows = [
        [
            f"`{row['model']}`",
            f"{row['params_ours']:,} ({'yes' if row['params_ours'] == row['params_keras'] else 'NO'})",
            f"{row['ours_infer_images_per_s']:.1f}",
            f"{row['infer_ratio']:.2f}x",
            f"{row['ours_train_images_per_s']:.1f}",
            f"{row['train_ratio']:.2f}x",
        ]
        for row in r["results"]
    ]
    intro = (
        f"{r['backend']}, {r['image_size']} px, batch {r['batch_size']}, medians of {r['rounds']} rounds; "
        "ratio = ours / theirs in images/s:"
    )
    header = "model | parameters (ours = theirs): | inference img/s: | ratio: | training img/s: | ratio:"
    return markdown(header, rows, [r], intro=intro)


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
    rows = [
        [
            f"`{m['name']}`",
            f"detector ({m['backbone']})",
            m["input_size"],
            f"{m['params']:,}",
            PAPERS.get(m["name"], ""),
        ]
        for m in r["detectors"]
    ]
    rows += [
        [f"`{m['name']}`", "segmenter", 224, f"{m['params']:,}", PAPERS.get(m["name"], "")]
        for m in r["segmenters"]
    ]
    return markdown("model | kind | input: | parameters: | note", rows, [r])


def detector_speed() -> str:
    """``benchmarks/detectors.py``: detect (network, decoding, NMS) with TF's NMS and the portable one."""
    r = load("detectors")
    rows = [
        [
            _name(row["model"]),
            f"{row['params']:,}",
            row["boxes_before_nms"],
            impl,
            f"{m['latency_ms']:.1f} ms",
            f"{m['images_per_s']:,.0f}",
            f"{100 * m['nms_share_latency']:.0f}%",
        ]
        for row in r["results"]
        for impl, m in row["implementations"].items()
    ]
    header = (
        "model | params: | boxes before NMS: | NMS | latency (batch 1): | img/s (batch 16): "
        "| NMS share of latency:"
    )
    return markdown(header, rows, [r])


def data_pipeline() -> str:
    """``benchmarks/data_pipeline.py`` (``make bench``): input throughput against the train step's."""
    r = load("data_pipeline")
    row = [
        f"`{Path(r['config']).name}`",
        f"{r['pipeline_cold_images_per_s']:,.0f} img/s",
        f"{r['pipeline_warm_images_per_s']:,.0f} img/s",
        f"{r['train_step_images_per_s']:,.0f} img/s",
        f"{r['ratio_pipeline_to_train']:.1f}x",
    ]
    header = (
        "config | first epoch (read, decode, cache): | warm pipeline: | train step: | pipeline / train step:"
    )
    return markdown(header, [row], [r])


def cpu_peers() -> str:
    """``benchmarks/cpu.py``: ours against torchvision on this CPU; ratio = their time / ours
    (> 1: ours is faster)."""
    r = load("cpu")

    def side(row, mode, who):
        cell = row.get(mode, {}).get(who)
        return "n/a" if not cell else f"{cell['images_per_s']:,.1f}"

    def ratio(row, mode):
        value = row.get(mode, {}).get("ratio_theirs_time_over_ours")
        return "n/a" if value is None else f"**{value:.2f}x**"

    rows = [
        [
            row["model"],
            row["precision"],
            f"{row['image_size']} px, {row['batch_size']}",
            *(
                f(row, mode)
                for mode in ("inference", "train")
                for f in (lambda x, m: side(x, m, "ours"), lambda x, m: side(x, m, "theirs"), ratio)
            ),
        ]
        for row in r["rows"]
    ]
    v = r["versions"]
    note = (
        f"TensorFlow {v['tensorflow']} (oneDNN), Keras {v['keras']}; torch {v['torch']}, torchvision "
        f"{v['torchvision']}; {r['cores']} cores, bfloat16 instructions: "
        f"{', '.join(r['bf16_instructions']) or 'none'}; {r['steps']} alternating timed steps a side."
    )
    header = (
        "model | precision | input, batch | inference img/s: ours: | torchvision: | ratio: "
        "| training img/s: ours: | torchvision: | ratio:"
    )
    return markdown(header, rows, [r], note=note)


TABLES = {
    "model_sizes": model_sizes,
    "detection_zoo": detection_zoo,
    "coco_eval": coco_eval,
    "classifier_zoo": classifier_zoo,
    "backbones": backbones,
    "backbone_speed": backbone_speed,
    "detector_speed": detector_speed,
    "data_pipeline": data_pipeline,
    "segmenter_study": segmenter_study,
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
