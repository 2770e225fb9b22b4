"""Result tables of the models: the zoo runs (``benchmarks/zoo.py``), the COCO evaluation
check, the backbones at paper size and the model sizes."""

from __future__ import annotations

from pathlib import Path

from table_blocks import _latency, _number, _percent, load, markdown

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


def yolo_heads() -> str:
    """YOLO v1's two heads from scratch on the shapes data: the shipped config's convolutional
    head (``zoo_shapes_yolo.json``) and the paper's fully connected one (``benchmarks/zoo.py
    --config pipelines/configs/shapes_yolo.yaml --set "model.architecture_args={..., head: fc,
    dropout: 0.1}" --out benchmarks/results/zoo_shapes_yolo_fc.json``)."""
    results = [load("zoo_shapes_yolo"), load("zoo_shapes_yolo_fc")]
    rows = []
    for r in results:
        t, m = r["train"], r["test"]
        head = "fc (the paper's)" if any("head: fc" in o for o in r["overrides"]) else "conv (shipped)"
        rows.append(
            [
                head,
                f"{int(t['params_total']):,}",
                *(_number(m[k]) for k in ("test_map50", "test_coco_ap", "test_coco_ap75")),
                f"{t['train_seconds']:,.0f} s, {int(t['epochs_trained'])} epochs "
                f"(best {int(t['best_epoch']) + 1})",
            ]
        )
    return markdown("head | params: | test mAP50: | COCO AP: | COCO AP75: | training", rows, results)


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
