"""SSD: Single Shot MultiBox Detector (Liu et al., ECCV 2016).

Predictions come from several feature maps of decreasing resolution: the backbone's
levels (``feature_levels``), optionally SSD300's converted fc6/fc7 on top of the last
one, then extra stride-2 blocks. Every location of map k carries ``2 + 2 len(r_k)``
default boxes (aspect 1 at scales s_k and sqrt(s_k s_{k+1}), and r, 1/r for each ratio
r), scored by a 3x3 conv over C + 1 classes (0 = background) and regressed by a 3x3 conv
to 4 deltas (variances 0.1/0.2, i.e. coder weights 10, 10, 5, 5). Training matches
default boxes at IoU 0.5 (plus each object's best box), mines hard negatives 3:1 and
adds softmax cross-entropy and smooth L1 (:func:`~cnn_apps.detection.losses.ssd_multibox_loss`).

Boxes are xyxy pixels throughout. Shapes: images (B, S, S, 3) raw pixels; head outputs
``class_logits`` (B, A, C + 1) and ``box_deltas`` (B, A, 4) for A default boxes.
"""

from __future__ import annotations

import json

import keras
from keras import layers, ops

from cnn_apps import registry
from cnn_apps.backbones.batch_norm import FusedBatchNormalization
from cnn_apps.backbones.features import build_backbone, pyramid_features
from cnn_apps.detection.anchors import boxes_per_location, ssd_default_boxes, ssd_scales
from cnn_apps.detection.boxes import BoxCoder, clip_to_image
from cnn_apps.detection.detector import Detector
from cnn_apps.detection.losses import ssd_multibox_loss
from cnn_apps.detection.matching import Matcher
from cnn_apps.preprocessing import preprocessing_layer


@keras.saving.register_keras_serializable(package="cnn_apps")
class L2Normalization(layers.Layer):
    """ParseNet's channel-wise L2 normalisation with a learnt per-channel scale (SSD's
    conv4_3, initial scale 20): its activations are much larger than the deeper maps'."""

    def __init__(self, scale: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.scale), name="gamma"
        )

    def call(self, x):
        return x * ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + 1e-10) * self.gamma

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def _extra_block(x, spec, index: int, batch_norm: bool):
    """SSD's extra feature layers: 1x1 conv to half the filters, then 3x3 with the stride.
    ``spec``: filters (stride 2, same padding) or [filters, stride, padding]."""
    filters, stride, padding = (spec, 2, "same") if isinstance(spec, int) else tuple(spec)
    name = f"extra{index}"
    x = layers.Conv2D(max(filters // 2, 8), 1, use_bias=not batch_norm, name=f"{name}_reduce")(x)
    if batch_norm:
        x = FusedBatchNormalization(momentum=0.9, name=f"{name}_reduce_bn")(x)
    x = layers.ReLU(name=f"{name}_reduce_relu")(x)
    x = layers.Conv2D(
        filters, 3, strides=stride, padding=padding, use_bias=not batch_norm, name=f"{name}_conv"
    )(x)
    if batch_norm:
        x = FusedBatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@keras.saving.register_keras_serializable(package="cnn_apps")
class SSD(Detector):
    """SSD on a registered backbone.

    Args:
        num_classes: C object classes (background is added internally).
        image_size: S, the square input side in pixels.
        backbone, backbone_args: a registered backbone and its keyword arguments.
        feature_levels: backbone levels (``C3``, ``C4``... for ResNets) or layer names
            (``block4_conv3`` for VGG) that predict, shallow to deep.
        fc_units: >0 adds SSD300's converted fc6 (3x3, dilation ``fc_dilation``) and fc7 (1x1)
            with this many filters after a 3x3/1 max pool on the last level (VGG16: 1024).
        extra_blocks: extra layers after the last map: filters (stride 2) or [filters, stride, padding].
        aspect_ratios: per map, the ratios r > 1 (r and 1/r both used): [[2], [2, 3], ...].
        scales: m + 1 box scales relative to S; None derives them from ``s_min``, ``s_max``,
            ``first_scale`` (:func:`~cnn_apps.detection.anchors.ssd_scales`).
        l2_normalize_first: ParseNet normalisation on the first map (VGG's conv4_3).
        match_iou: default box / object IoU for a positive (the paper's 0.5).
        negative_ratio: hard negatives per positive (3).
        box_weights: the box coder's weights (the paper's variances inverted).
        extra_batch_norm: BN in the extra blocks and heads' inputs (helps from scratch).
        preprocessing: ``unit`` or ``caffe`` (ImageNet VGG weights).
        postprocess: NMS settings (score/IoU thresholds, max detections, implementation).
    """

    loss_names = ("classification", "box")

    def __init__(
        self,
        num_classes: int,
        image_size: int = 96,
        backbone: str = "resnet_mini",
        backbone_args: dict | None = None,
        feature_levels=("C3", "C4"),
        fc_units: int = 0,
        fc_dilation: int = 6,
        extra_blocks=(128, 128),
        aspect_ratios=None,
        scales=None,
        s_min: float = 0.2,
        s_max: float = 0.9,
        first_scale: float | None = None,
        l2_normalize_first: bool = False,
        match_iou: float = 0.5,
        negative_ratio: float = 3.0,
        box_weights=(10.0, 10.0, 5.0, 5.0),
        extra_batch_norm: bool = True,
        preprocessing: str = "unit",
        class_names=None,
        postprocess: dict | None = None,
        **kwargs,
    ):
        # === Layers ===
        feature_levels = list(feature_levels)
        extra_blocks = json.loads(json.dumps(list(extra_blocks)))
        self.backbone, backbone_args = build_backbone(backbone, image_size, backbone_args)
        extractor = pyramid_features(self.backbone, feature_levels)
        scaling = preprocessing_layer(preprocessing)

        # === Functional model ===
        inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
        maps = extractor(scaling(inputs))
        maps = list(maps) if isinstance(maps, (list, tuple)) else [maps]
        if l2_normalize_first:
            maps[0] = L2Normalization(name="first_map_l2norm")(maps[0])
        if fc_units:
            x = layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(maps[-1])
            x = layers.Conv2D(
                fc_units, 3, padding="same", dilation_rate=fc_dilation, activation="relu", name="fc6"
            )(x)
            maps[-1] = layers.Conv2D(fc_units, 1, activation="relu", name="fc7")(x)
        x = maps[-1]
        for i, spec in enumerate(extra_blocks, start=1):
            x = _extra_block(x, spec, i, extra_batch_norm)
            maps.append(x)
        num_maps = len(maps)
        if aspect_ratios is None:
            aspect_ratios = [[2.0]] + [[2.0, 3.0]] * max(num_maps - 3, 0) + [[2.0]] * min(2, num_maps - 1)
        aspect_ratios = [[float(r) for r in rs] for rs in aspect_ratios]
        if len(aspect_ratios) != num_maps:
            raise ValueError(f"{num_maps} feature maps but {len(aspect_ratios)} aspect-ratio lists")
        scales = (
            [float(s) for s in scales]
            if scales is not None
            else ssd_scales(num_maps, s_min, s_max, first_scale)
        )
        sizes = [int(m.shape[1]) for m in maps]
        logits, deltas = [], []
        for k, (m, ratios) in enumerate(zip(maps, aspect_ratios)):
            per_loc = boxes_per_location(ratios)
            c = layers.Conv2D(per_loc * (num_classes + 1), 3, padding="same", name=f"class_head{k}")(m)
            b = layers.Conv2D(per_loc * 4, 3, padding="same", name=f"box_head{k}")(m)
            logits.append(layers.Reshape((-1, num_classes + 1), name=f"class_head{k}_flat")(c))
            deltas.append(layers.Reshape((-1, 4), name=f"box_head{k}_flat")(b))
        outputs = {
            "class_logits": layers.Concatenate(axis=1, name="class_logits", dtype="float32")(logits),
            "box_deltas": layers.Concatenate(axis=1, name="box_deltas", dtype="float32")(deltas),
        }
        kwargs.setdefault("name", f"ssd_{backbone}")
        super().__init__(
            inputs,
            outputs,
            num_classes=num_classes,
            image_size=image_size,
            class_names=class_names,
            postprocess=postprocess,
            **kwargs,
        )

        # === Config ===
        self.anchors = ssd_default_boxes(image_size, sizes, aspect_ratios, scales)
        self.feature_sizes = sizes
        self.coder = BoxCoder(box_weights)
        self.matcher = Matcher(match_iou, force_best=True)
        self._config = {
            "backbone": backbone,
            "backbone_args": backbone_args,
            "feature_levels": feature_levels,
            "fc_units": fc_units,
            "fc_dilation": fc_dilation,
            "extra_blocks": extra_blocks,
            "aspect_ratios": aspect_ratios,
            "scales": scales,
            "s_min": s_min,
            "s_max": s_max,
            "first_scale": first_scale,
            "l2_normalize_first": l2_normalize_first,
            "match_iou": match_iou,
            "negative_ratio": negative_ratio,
            "box_weights": list(box_weights),
            "extra_batch_norm": extra_batch_norm,
            "preprocessing": preprocessing,
        }

    def detection_losses(self, y, y_pred):
        anchors = ops.convert_to_tensor(self.anchors)
        return ssd_multibox_loss(
            y_pred["class_logits"],
            y_pred["box_deltas"],
            anchors,
            ops.cast(y["boxes"], "float32"),
            y["labels"],
            matcher=self.matcher,
            coder=self.coder,
            negative_ratio=self._config["negative_ratio"],
        )

    def decode(self, y_pred):
        anchors = ops.convert_to_tensor(self.anchors)
        boxes = self.coder.decode(ops.cast(y_pred["box_deltas"], "float32"), anchors)
        boxes = clip_to_image(boxes, float(self.image_size), float(self.image_size))
        scores = ops.softmax(ops.cast(y_pred["class_logits"], "float32"), axis=-1)[..., 1:]
        return boxes, scores

    def get_config(self):
        return {**self.base_config(), **self._config}


@registry.register("detector", "ssd")
def ssd(num_classes: int, **kwargs) -> SSD:
    """SSD with the constructor's defaults (a small resnet_mini model for tests and shapes)."""
    return SSD(num_classes, **kwargs)


@registry.register("detector", "ssd300_vgg16")
def ssd300_vgg16(num_classes: int, **kwargs) -> SSD:
    """The paper's SSD300: VGG16 (ceil-mode pools) conv4_3 (L2-normalised, scale 0.1) and
    fc7 (dilated fc6), extras conv8_2..conv11_2, 4/6/6/6/4/4 boxes per location: 8732
    default boxes at 300x300, scales 0.2..0.9."""
    args = dict(
        image_size=300,
        backbone="vgg16",
        backbone_args={"ceil_pooling": True},
        feature_levels=["block4_conv3", "block5_conv3"],
        fc_units=1024,
        fc_dilation=6,
        extra_blocks=[512, 256, [256, 1, "valid"], [256, 1, "valid"]],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        s_min=0.2,
        s_max=0.9,
        first_scale=0.1,
        l2_normalize_first=True,
        extra_batch_norm=False,
        preprocessing="caffe",
        name="ssd300_vgg16",
    )
    args.update(kwargs)
    return SSD(num_classes, **args)


ssd300_vgg16.fixed_backbone = True  # the factory does not pass the config's backbone
