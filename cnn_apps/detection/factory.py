"""Build the detector a config names (``model.architecture``), with the config's backbone
and post-processing, or list what can be built."""

from __future__ import annotations

import dataclasses

from cnn_apps import registry
from cnn_apps.errors import ConfigError


def detector_from_config(config, num_classes: int, class_names=None, **overrides):
    """``registry.get("detector", config.model.architecture)`` called with the image size,
    the ``detection`` section as post-processing, the backbone (unless the architecture
    fixes its own, like ``ssd300_vgg16``) and ``model.architecture_args``."""
    name = config.model.architecture
    if not name:
        raise ConfigError("model.architecture: name the detector for task 'detection' "
                          f"(one of: {', '.join(registry.names('detector'))})")
    build = registry.get("detector", name)
    args = dict(image_size=config.data.image_size, class_names=class_names,
                postprocess=dataclasses.asdict(config.detection))
    if not getattr(build, "fixed_backbone", False):
        args.update(backbone=config.model.backbone, backbone_args=dict(config.model.backbone_args))
    accepted = registry.accepted_arguments(build)
    unknown = sorted(set(config.model.architecture_args) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(f"model.architecture_args: {', '.join(unknown)} not taken by '{name}'. "
                          f"Valid keys: {', '.join(sorted(accepted - {'num_classes', 'name'}))}")
    args.update(config.model.architecture_args)
    args.update(overrides)
    try:
        return build(num_classes, **args)
    except TypeError as exc:  # an architecture_args key the constructor does not take
        raise ConfigError(f"model.architecture_args for '{name}': {exc}") from exc


def detector_table(num_classes: int = 20) -> list[dict]:
    """One row per registered detector at its default input size with ``num_classes``
    classes (20: PASCAL VOC): ``{name, params, input_size, backbone}``."""
    import gc

    rows = []
    for name in registry.names("detector"):
        model = registry.get("detector", name)(num_classes)
        rows.append({"name": name, "params": int(model.count_params()), "input_size": int(model.image_size),
                     "backbone": getattr(model, "_config", {}).get("backbone", "-")})
        del model
        gc.collect()
    return rows
