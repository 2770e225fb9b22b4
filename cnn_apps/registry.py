"""Name -> builder registries for backbones (and, in later issues, classifiers,
detectors and segmenters), so that configs pick models by name."""

from __future__ import annotations

import inspect
import typing
from typing import Callable

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


def _load_builtins() -> None:
    # Importing the packages runs their @register decorators.
    import cnn_apps.backbones  # noqa: F401
    import cnn_apps.detection  # noqa: F401
    import cnn_apps.segmentation  # noqa: F401
