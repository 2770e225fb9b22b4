"""Build the detector a config names (``model.architecture``), with the config's backbone
and post-processing, or list what can be built."""

from __future__ import annotations

import dataclasses

import cnn_apps.builtins  # noqa: F401  (registers the built-in detectors)
from cnn_apps import registry


def detector_from_config(config, num_classes: int, class_names=None, **overrides):
    """``registry.get("detector", config.model.architecture)`` called with the image size,
    the ``detection`` section as post-processing, the backbone (unless the architecture
    fixes its own, like ``ssd300_vgg16``), ``training.seed`` as the seed of a detector that
    samples (the two-stage RPN / RoI samplers) and ``model.architecture_args`` (which may set
    its own ``seed``)."""
    args = dict(
        image_size=config.data.image_size,
        class_names=class_names,
        postprocess=dataclasses.asdict(config.detection),
    )
    if config.model.architecture in registry.names("detector"):
        accepted = registry.accepted_arguments(registry.get("detector", config.model.architecture))
        if accepted is not None and "seed" in accepted:
            args["seed"] = config.training.seed
    return registry.build_from_config("detector", config, num_classes, args, overrides)


def detector_table(num_classes: int = 20) -> list[dict]:
    """One row per registered detector at its default input size with ``num_classes``
    classes (20: PASCAL VOC): ``{name, params, input_size, backbone}``."""
    import gc

    rows = []
    for name in registry.names("detector"):
        model = registry.get("detector", name)(num_classes)
        rows.append(
            {
                "name": name,
                "params": int(model.count_params()),
                "input_size": int(model.image_size),
                "backbone": getattr(model, "_config", {}).get("backbone", "-"),
            }
        )
        del model
        gc.collect()
    return rows
