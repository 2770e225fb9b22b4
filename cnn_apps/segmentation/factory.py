"""Build the segmenter a config names (``model.architecture``: fcn32s, fcn16s, fcn8s, segnet,
unet, ...), or list what can be built."""

from __future__ import annotations

import cnn_apps.builtins  # noqa: F401  (registers the built-in segmenters)
from cnn_apps import registry


def segmenter_from_config(config, num_classes: int, class_names=None, **overrides):
    """``registry.get("segmenter", config.model.architecture)`` called with the image size, the
    ignore label, the class names (background first), ``model.backbone`` / ``backbone_args``
    when the architecture takes a backbone (the FCNs' VGG) and ``model.architecture_args``."""
    args = dict(
        image_size=config.data.image_size,
        class_names=class_names,
        ignore_label=config.segmentation.ignore_label,
    )
    return registry.build_from_config(
        "segmenter", config, num_classes, args, overrides, refused=(TypeError, ValueError)
    )


def segmenter_table(num_classes: int = 21, image_size: int = 224) -> list[dict]:
    """One row per registered segmenter with ``num_classes`` classes (21: PASCAL VOC with
    background): ``{name, params, stride}``."""
    import gc

    rows = []
    for name in registry.names("segmenter"):
        model = registry.get("segmenter", name)(num_classes, image_size=image_size)
        rows.append({"name": name, "params": int(model.count_params()), "stride": int(model.stride)})
        del model
        gc.collect()
    return rows
