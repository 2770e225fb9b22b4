"""Name -> builder registries for backbones (and, in later issues, classifiers,
detectors and segmenters), so that configs pick models by name."""

from __future__ import annotations

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


def _load_builtins() -> None:
    # Importing the packages runs their @register decorators.
    import cnn_apps.backbones  # noqa: F401
    import cnn_apps.detection  # noqa: F401
