"""Name -> builder registries for backbones (and, in later issues, classifiers,
detectors and segmenters), so that configs pick models by name."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable

from cnn_apps.errors import ConfigError

_REGISTRIES: dict[str, dict[str, Callable]] = {"backbone": {}}


def register(kind: str, name: str):
    """Decorator: ``@register("backbone", "resnet_mini")``."""

    def wrap(builder: Callable) -> Callable:
        table = _REGISTRIES.setdefault(kind, {})
        if name in table and table[name] is not builder:
            raise ValueError(f"{kind} '{name}' is registered twice")
        table[name] = builder
        return builder

    return wrap


def names(kind: str) -> list[str]:
    _load_builtins()
    return sorted(_REGISTRIES.get(kind, {}))


def get(kind: str, name: str) -> Callable:
    _load_builtins()
    table = _REGISTRIES.get(kind, {})
    if name not in table:
        raise ConfigError(f"unknown {kind} '{name}'. Registered: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def accepted_arguments(build) -> set | None:
    """Keyword arguments ``build`` takes: its own, plus its return class's when it forwards
    ``**kwargs``; None when that cannot be told."""
    params = inspect.signature(build).parameters
    names = {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return names
    target = typing.get_type_hints(build).get("return") if not inspect.isclass(build) else build
    if not inspect.isclass(target):
        return None
    init = inspect.signature(target.__init__).parameters
    return names | {n for n, p in init.items() if p.kind is not p.VAR_KEYWORD and n != "self"}


def build_from_config(
    kind: str, config, num_classes: int, args: dict, overrides: dict | None = None, refused=(TypeError,)
):
    """``get(kind, config.model.architecture)(num_classes, **args, **architecture_args,
    **overrides)``, with ``model.backbone`` / ``backbone_args`` added when the builder takes
    them (not one that fixes its own, ``fixed_backbone``); an ``architecture_args`` key the
    builder does not take is a ConfigError naming the valid keys, and so is an exception of
    the ``refused`` types from the builder."""
    name = config.model.architecture
    if not name:
        raise ConfigError(
            f"model.architecture: name the {kind} for task '{config.task}' (one of: {', '.join(names(kind))})"
        )
    build = get(kind, name)
    accepted = accepted_arguments(build)
    args = dict(args)
    if not getattr(build, "fixed_backbone", False) and (accepted is None or "backbone" in accepted):
        args.update(backbone=config.model.backbone, backbone_args=dict(config.model.backbone_args))
    unknown = sorted(set(config.model.architecture_args) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(
            f"model.architecture_args: {', '.join(unknown)} not taken by '{name}'. "
            f"Valid keys: {', '.join(sorted(accepted - {'num_classes', 'name'}))}"
        )
    args.update(config.model.architecture_args)
    args.update(overrides or {})
    try:
        return build(num_classes, **args)
    except refused as exc:  # a bad architecture_args key (or value)
        raise ConfigError(f"model.architecture_args for '{name}': {exc}") from exc


def _load_builtins() -> None:
    # Importing the packages runs their @register decorators.
    import cnn_apps.backbones  # noqa: F401
    import cnn_apps.detection  # noqa: F401
    import cnn_apps.segmentation  # noqa: F401
