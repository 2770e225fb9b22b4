"""Name -> builder tables, one per kind (``backbone``, ``detector``, ``segmenter``,
``region_detector``, ...), so that configs pick models by name.

This module imports no model module: a model module registers itself with
``@register(kind, name)`` when it is imported, and :mod:`cnn_apps.builtins` imports every
module that registers a built-in model. Code that looks models up by name (the factories, the
CLI) imports ``cnn_apps.builtins`` first; :func:`get` on an unknown name lists what is
registered and says so when the built-ins were never imported.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable

from cnn_apps.errors import ConfigError

_REGISTRIES: dict[str, dict[str, Callable]] = {}


def register(kind: str, name: str):
    """Decorator: ``@register("backbone", "resnet_mini")``. Registering the same builder again
    (a module imported twice) is a no-op; another builder under a taken name is an error."""

    def wrap(builder: Callable) -> Callable:
        table = _REGISTRIES.setdefault(kind, {})
        if name in table and table[name] is not builder:
            raise ValueError(f"{kind} '{name}' is registered twice")
        table[name] = builder
        return builder

    return wrap


def names(kind: str) -> list[str]:
    """The registered names of ``kind``, sorted (the built-ins once ``cnn_apps.builtins`` is imported)."""
    return sorted(_REGISTRIES.get(kind, {}))


def get(kind: str, name: str) -> Callable:
    """The builder registered as ``name``; an unknown name is a ConfigError listing the registered ones."""
    table = _REGISTRIES.get(kind, {})
    if name not in table:
        # a lookup before anything imported the built-ins: say how to register them
        hint = ""
        if "cnn_apps.builtins" not in sys.modules:
            hint = " (import cnn_apps.builtins to register the built-in models)"
        raise ConfigError(f"unknown {kind} '{name}'. Registered: {', '.join(sorted(table)) or 'none'}{hint}")
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
