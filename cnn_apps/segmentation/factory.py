"""Build the segmenter a config names (``model.architecture``: fcn32s, fcn16s, fcn8s, segnet,
unet, ...), or list what can be built."""

from __future__ import annotations

from cnn_apps import registry
from cnn_apps.errors import ConfigError


def segmenter_from_config(config, num_classes: int, class_names=None, **overrides):
    """``registry.get("segmenter", config.model.architecture)`` called with the image size, the
    ignore label, the class names (background first), ``model.backbone`` / ``backbone_args``
    when the architecture takes a backbone (the FCNs' VGG) and ``model.architecture_args``."""
    name = config.model.architecture
    if not name:
        raise ConfigError("model.architecture: name the segmenter for task 'segmentation' "
                          f"(one of: {', '.join(registry.names('segmenter'))})")
    build = registry.get("segmenter", name)
    accepted = registry.accepted_arguments(build)
    args = dict(image_size=config.data.image_size, class_names=class_names,
                ignore_label=config.segmentation.ignore_label)
    if accepted is not None and "backbone" in accepted:
        args.update(backbone=config.model.backbone, backbone_args=dict(config.model.backbone_args))
    unknown = sorted(set(config.model.architecture_args) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(f"model.architecture_args: {', '.join(unknown)} not taken by '{name}'. "
                          f"Valid keys: {', '.join(sorted(accepted - {'num_classes', 'name'}))}")
    args.update(config.model.architecture_args)
    args.update(overrides)
    try:
        return build(num_classes, **args)
    except (TypeError, ValueError) as exc:  # a bad architecture_args value
        raise ConfigError(f"model.architecture_args for '{name}': {exc}") from exc


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
