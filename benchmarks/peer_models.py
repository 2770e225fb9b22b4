"""The models both benchmarks time, ours and torchvision's, with what makes them comparable.

``benchmarks/gpu.py`` (Keras on JAX) and ``benchmarks/cpu.py`` (Keras on TensorFlow) time the
same rows: ``SPECS`` gives each row's task, input size, GPU batch and torchvision peer;
``build_ours`` and ``build_peer`` build the two models with matched settings (classes,
post-processing thresholds, proposal counts); ``ours_inputs`` makes the random images and
targets both sides get; ``peer_functions`` wraps the torchvision model in one inference and one
training step (SGD with the same learning rate and momentum as ours).

Nothing here imports TensorFlow, Keras, JAX or torch at module level, nor sets
``KERAS_BACKEND``: each script picks its backend before importing this module, and the
builders import what they need when called.
"""

from __future__ import annotations

import dataclasses
import random

DETECTION_CLASSES = 20  # PASCAL VOC (torchvision counts the background: 21)
SEGMENTATION_CLASSES = 21  # PASCAL VOC with the background
IGNORE_LABEL = 255
LEARNING_RATE = 1e-3  # random weights, random targets: small enough to stay finite for a few steps
MOMENTUM = 0.9


@dataclasses.dataclass
class Spec:
    task: str  # classification, detection, segmentation
    image_size: int
    batch: int
    tiny_size: int
    tiny_batch: int
    ours: str  # description
    peer: str | None  # torchvision builder name (None: no peer)
    peer_note: str = ""
    num_classes: int = 0


SPECS = {
    "resnet50": Spec(
        "classification",
        224,
        128,
        32,
        2,
        "cnn_apps resnet50_v1_5 classifier (logits; torchvision's stride-in-3x3 layout)",
        "resnet50",
        "same architecture",
        1000,
    ),
    "vgg16": Spec(
        "classification",
        224,
        64,
        32,
        2,
        "cnn_apps vgg16 classifier (logits, dropout 0.5)",
        "vgg16",
        "same architecture",
        1000,
    ),
    "yolo": Spec(
        "detection",
        448,
        32,
        64,
        2,
        "YOLO v1 on resnet50, 448 px, FC head (1x1 conv to 64, FC 4096)",
        None,
        "torchvision has no YOLO: ours alone",
        DETECTION_CLASSES,
    ),
    "ssd300": Spec(
        "detection",
        300,
        32,
        300,
        1,
        "ssd300_vgg16 (8732 default boxes)",
        "ssd300_vgg16",
        "same design; our post-processing thresholds on both",
        DETECTION_CLASSES,
    ),
    "faster_rcnn": Spec(
        "detection",
        512,
        8,
        64,
        2,
        "Faster R-CNN on resnet50 C4 (one level, RoI max pooling)",
        "fasterrcnn_resnet50_fpn",
        "different architecture: torchvision's has an FPN and RoIAlign; proposal counts matched",
        DETECTION_CLASSES,
    ),
    "fcn8s": Spec(
        "segmentation",
        512,
        8,
        64,
        2,
        "FCN-8s on VGG-16 (fc6 7x7x4096)",
        "fcn_resnet50",
        "different architecture: torchvision's FCN is a dilated ResNet-50 (stride 8)",
        SEGMENTATION_CLASSES,
    ),
    "fcn32s": Spec(
        "segmentation",
        512,
        8,
        64,
        2,
        "FCN-32s on VGG-16 (fc6 7x7x4096)",
        "fcn_resnet50",
        "different architecture: torchvision's FCN is a dilated ResNet-50 (stride 8)",
        SEGMENTATION_CLASSES,
    ),
}
DEFAULT_MODELS = ("resnet50", "vgg16", "ssd300", "fcn8s", "faster_rcnn", "yolo")  # yolo last: no peer
ALIASES = {"yolo_v1": "yolo", "ssd300_vgg16": "ssd300", "ssd": "ssd300", "fasterrcnn": "faster_rcnn"}
FASTER_RCNN = {
    "proposals_pre_nms": 1000,
    "proposals_post_nms": 1000,
    "rois_per_image": 512,
    "detections": 100,
}


# ---------------------------------------------------------------------------------------- ours
# our backbone that is the same graph as the peer's: torchvision's resnet50 is v1.5 (stride in
# the 3x3, 4.09 G multiply-adds); our resnet50 is the paper's v1 (3.86 G)
SAME_GRAPH = {"resnet50": "resnet50_v1_5"}


def build_ours(name: str, spec: Spec, size: int, tiny: bool):
    """Our Keras model, its loss for ``compile`` (None: the model's own ``compute_loss``)."""
    import keras
    import numpy as np

    import cnn_apps.backbones  # noqa: F401  (registers the backbones looked up here)
    from cnn_apps import registry

    # Unseeded initialisers draw from Python's random; keras.utils.set_random_seed would also
    # import TensorFlow whenever it is installed, even under JAX.
    random.seed(0)
    np.random.seed(0)
    if spec.task == "classification":
        extra = {"width": 0.125} if tiny else {}
        model = registry.get("backbone", SAME_GRAPH.get(name, name))(
            input_shape=(size, size, 3),
            include_top=True,
            num_classes=spec.num_classes,
            classifier_activation=None,
            **extra,
        )
        return model, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "yolo":
        from cnn_apps.detection.yolo import YOLOv1

        if tiny:
            return YOLOv1(
                spec.num_classes,
                image_size=size,
                backbone="resnet50",
                backbone_args={"width": 0.125},
                head_filters=8,
                hidden_units=64,
            ), None
        return YOLOv1(
            spec.num_classes, image_size=size, backbone="resnet50", head_filters=64, hidden_units=4096
        ), None
    if name == "ssd300":
        from cnn_apps.detection.ssd import ssd300_vgg16

        if tiny:  # the paper's 300 px (its extra layers need it), at 1/16 of the widths
            return ssd300_vgg16(
                spec.num_classes,
                backbone_args={"ceil_pooling": True, "width": 0.0625},
                fc_units=32,
                extra_blocks=[32, 16, [16, 1, "valid"], [16, 1, "valid"]],
            ), None
        return ssd300_vgg16(spec.num_classes), None
    if name == "faster_rcnn":
        from cnn_apps.detection.faster_rcnn import FasterRCNN

        if tiny:
            return FasterRCNN(
                spec.num_classes,
                image_size=size,
                backbone="resnet50",
                backbone_args={"width": 0.125},
                feature_level="C4",
                rpn_filters=16,
                rpn_pre_nms_top_k=64,
                rpn_post_nms_top_k=32,
                rpn_batch_per_image=32,
                roi_batch_per_image=16,
                head_units=(32, 32),
            ), None
        f = FASTER_RCNN
        return FasterRCNN(
            spec.num_classes,
            image_size=size,
            backbone="resnet50",
            feature_level="C4",
            anchor_sizes=(32.0, 64.0, 128.0, 256.0, 512.0),
            aspect_ratios=(0.5, 1.0, 2.0),
            rpn_filters=512,
            rpn_pre_nms_top_k=f["proposals_pre_nms"],
            rpn_post_nms_top_k=f["proposals_post_nms"],
            roi_batch_per_image=f["rois_per_image"],
            head_units=(1024, 1024),
            postprocess={"max_detections": f["detections"]},
        ), None
    if name in ("fcn8s", "fcn32s"):
        from cnn_apps.segmentation.fcn import FCN
        from cnn_apps.segmentation.segmenter import segmentation_loss

        args = {"backbone_args": {"width": 0.0625}, "fc_filters": 32, "fc_kernel": 3} if tiny else {}
        return FCN(spec.num_classes, variant=name[3:], image_size=size, **args), segmentation_loss(
            IGNORE_LABEL
        )
    raise ValueError(name)


def ours_inputs(spec: Spec, size: int, batch: int):
    """NumPy images, targets (ours) and the torchvision targets' NumPy source."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    if spec.task == "classification":
        return images, rng.integers(0, spec.num_classes, (batch,)).astype("int32")
    if spec.task == "segmentation":
        return images, rng.integers(0, spec.num_classes, (batch, size, size)).astype("int32")
    # detection: 3 objects per image, padded to 4 rows with -1
    xy = rng.uniform(0, 0.6 * size, (batch, 3, 2))
    wh = rng.uniform(0.15 * size, 0.4 * size, (batch, 3, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], axis=-1).astype("float32")
    labels = rng.integers(0, spec.num_classes, (batch, 3)).astype("int32")
    boxes = np.concatenate([boxes, -np.ones((batch, 1, 4), "float32")], axis=1)
    labels = np.concatenate([labels, -np.ones((batch, 1), "int32")], axis=1)
    return images, {"boxes": boxes, "labels": labels}


# ---------------------------------------------------------------------------------------- peer
def load_peer():
    """(torch, torchvision, None) or (None, None, why not)."""
    try:
        import torch
        import torchvision
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA install
        return None, None, f"torch/torchvision not importable: {type(exc).__name__}: {exc}"
    return torch, torchvision, None


def build_peer(torch, torchvision, name: str, spec: Spec, size: int, tiny: bool):
    models = torchvision.models
    if spec.task == "classification":
        return getattr(models, spec.peer)(weights=None, num_classes=spec.num_classes)
    if spec.task == "segmentation":
        return models.segmentation.fcn_resnet50(
            weights=None, weights_backbone=None, num_classes=spec.num_classes, aux_loss=False
        )
    detection = models.detection
    if name == "ssd300":  # our thresholds (cnn_apps.detection.detector.POSTPROCESS_DEFAULTS)
        from cnn_apps.detection.detector import POSTPROCESS_DEFAULTS as p

        return detection.ssd300_vgg16(
            weights=None,
            weights_backbone=None,
            num_classes=spec.num_classes + 1,
            score_thresh=p["score_threshold"],
            nms_thresh=p["iou_threshold"],
            detections_per_img=p["max_detections"],
            topk_candidates=p["pre_nms_top_k"],
        )
    if name == "faster_rcnn":
        f = FASTER_RCNN
        pre, post, rois = (
            (64, 32, 16) if tiny else (f["proposals_pre_nms"], f["proposals_post_nms"], f["rois_per_image"])
        )
        return detection.fasterrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=spec.num_classes + 1,
            min_size=size,
            max_size=size,
            rpn_pre_nms_top_n_train=pre,
            rpn_pre_nms_top_n_test=pre,
            rpn_post_nms_top_n_train=post,
            rpn_post_nms_top_n_test=post,
            box_batch_size_per_image=rois,
            box_detections_per_img=f["detections"],
        )
    raise ValueError(name)


def peer_functions(torch, model, spec: Spec, images, targets, args, device: str):
    """(infer(), train()) for the torchvision model on device-resident inputs; channels-last
    and torch.compile as asked (not channels-last for detectors: they take image lists)."""
    import torch.nn.functional as F

    dense = spec.task != "detection"
    fmt = torch.channels_last if (dense and args.channels_last) else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
    if dense:
        x = x.contiguous(memory_format=fmt)
        y = torch.from_numpy(targets).to(device).long()
    else:  # torchvision detectors: lists of 0..1 images and of per-image targets, background = 0
        x = list((x / 255.0).contiguous())
        y = []
        for boxes, labels in zip(targets["boxes"], targets["labels"]):
            keep = labels >= 0
            y.append(
                {
                    "boxes": torch.from_numpy(boxes[keep]).to(device),
                    "labels": torch.from_numpy(labels[keep].astype("int64") + 1).to(device),
                }
            )
    net = torch.compile(model) if args.torch_compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def autocast():
        return torch.autocast(
            device_type=device,
            dtype=torch.bfloat16,
            enabled=args.precision == "bfloat16",
        )

    def infer():
        model.eval()
        with torch.inference_mode(), autocast():
            return net(x)

    def loss_of(out):
        if spec.task == "classification":
            return F.cross_entropy(out.float(), y)
        if spec.task == "segmentation":
            return F.cross_entropy(out["out"].float(), y, ignore_index=IGNORE_LABEL)
        return sum(out.values())

    def train():
        model.train()
        with autocast():
            loss = loss_of(net(x, y) if not dense else net(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return infer, train
