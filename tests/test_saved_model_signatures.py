"""What ``saved_model_cli show --all`` reports for each exportable kind of model (the tables in
docs/serving.md): signature names, input and output names, dtypes, and a dynamic batch.
YOLO and SSD are checked in test_detection_export.py."""

import json

import keras
import pytest
from conftest import saved_model_cli_signatures

from cnn_apps.classification import ImageClassifier
from cnn_apps.detection.fast_rcnn import FastRCNN
from cnn_apps.detection.faster_rcnn import FasterRCNN
from cnn_apps.segmentation.unet import UNet
from cnn_apps.serving import SIGNATURES, export_classifier, export_detector, export_segmenter
from cnn_apps.serving.saved_model import METADATA_FILE

PIXELS = {
    "serving_default": ("DT_FLOAT", "(-1, -1, -1, 3)"),
    "serve_uint8": ("DT_UINT8", "(-1, -1, -1, 3)"),
    "serve_bytes": ("DT_STRING", "(-1)"),
}
DETECTIONS = {
    "detection_boxes": ("DT_FLOAT", "(-1, 100, 4)"),
    "detection_scores": ("DT_FLOAT", "(-1, 100)"),
    "detection_classes": ("DT_INT64", "(-1, 100)"),
    "detection_class_names": ("DT_STRING", "(-1, 100)"),
    "num_detections": ("DT_INT32", "(-1)"),
}
DETECTOR = {
    "backbone_args": {"stage_filters": [8, 16, 16, 32]},
    "head_units": [32],
    "roi_batch_per_image": 16,
}


def _classifier():
    model = ImageClassifier(
        3,
        (32, 32, 3),
        class_names=["circle", "square", "star"],
        backbone_args={"stage_filters": (8, 16), "blocks_per_stage": (1, 1)},
    )
    return model, export_classifier


def _segmenter():
    return UNet(
        3, image_size=32, filters=4, depth=2, class_names=["background", "circle", "square"]
    ), export_segmenter


def _fast_rcnn():
    return FastRCNN(3, image_size=64, max_proposals=24, **DETECTOR), export_detector


def _faster_rcnn():
    return FasterRCNN(
        3, image_size=64, rpn_filters=16, rpn_post_nms_top_k=20, anchor_sizes=[16, 32], **DETECTOR
    ), export_detector


CASES = {
    "classifier": (
        _classifier,
        {
            name: (
                {"images": image},
                {
                    "probabilities": ("DT_FLOAT", "(-1, 3)"),
                    "class_id": ("DT_INT64", "(-1)"),
                    "class_name": ("DT_STRING", "(-1)"),
                },
            )
            for name, image in PIXELS.items()
        },
    ),
    "segmenter": (
        _segmenter,
        {
            **{
                name: (
                    {"images": PIXELS[name]},
                    {
                        "probabilities": ("DT_FLOAT", "(-1, -1, -1, 3)"),
                        "class_map": ("DT_INT32", "(-1, -1, -1)"),
                        "class_names": ("DT_STRING", "(-1, 3)"),
                    },
                )
                for name in ("serving_default", "serve_uint8")
            },
            "serve_bytes": (
                {"images": PIXELS["serve_bytes"]},
                {
                    "probabilities": ("DT_FLOAT", "(-1, 32, 32, 3)"),
                    "class_map": ("DT_INT32", "(-1, 32, 32)"),
                    "image_size": ("DT_INT32", "(-1, 2)"),
                    "class_names": ("DT_STRING", "(-1, 3)"),
                },
            ),
        },
    ),
    # Fast R-CNN takes region proposals in every signature
    "fast_rcnn": (
        _fast_rcnn,
        {
            name: ({"images": image, "proposals": ("DT_FLOAT", "(-1, -1, 4)")}, DETECTIONS)
            for name, image in PIXELS.items()
        },
    ),
    "faster_rcnn": (_faster_rcnn, {name: ({"images": image}, DETECTIONS) for name, image in PIXELS.items()}),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_saved_model_cli_shows_the_documented_signatures(kind, tmp_path):
    build, expected = CASES[kind]
    keras.utils.set_random_seed(0)
    model, export = build()
    path = export(model, tmp_path / kind / "1", model.class_names)
    sigs = saved_model_cli_signatures(path)
    assert set(SIGNATURES) <= set(sigs)
    for name, (inputs, outputs) in expected.items():
        assert sigs[name] == {"inputs": inputs, "outputs": outputs}, name
    metadata = json.loads((path / METADATA_FILE).read_text())
    assert metadata["class_names"] == list(model.class_names)
    assert metadata["task"] == {"classifier": "classification", "segmenter": "segmentation"}.get(
        kind, "detection"
    )
