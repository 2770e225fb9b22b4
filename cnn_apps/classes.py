"""The one check that a model's class names fit its number of classes, used by every model
constructor (classifiers, detectors, region detectors, segmenters)."""

from __future__ import annotations

from cnn_apps.errors import ModelArgumentError


def default_class_names(num_classes: int, *, background: bool = False) -> list[str]:
    """``"0"``..``"K-1"``; with ``background`` (segmenters: class 0 is the background)
    ``"background"``, ``"1"``..``"K-1"``."""
    names = [str(i) for i in range(num_classes)]
    return ["background", *names[1:]] if background and names else names


def check_class_names(
    num_classes, class_names=None, *, background: bool = False, owner: str = ""
) -> list[str]:
    """``class_names`` as a list of ``num_classes`` names, or the default names when it is None.

    ``background``: class 0 is the background and counts in ``num_classes`` (segmenters); it
    picks the default names and says so in the message. ``owner`` (the model's class name)
    starts the message. A ``num_classes`` below 1 or a list of another length is a
    :class:`~cnn_apps.errors.ModelArgumentError`.
    """
    where = f"{owner}: " if owner else ""
    try:
        count = int(num_classes)
    except (TypeError, ValueError):
        count = None
    if count is None or count != num_classes or count < 1:
        raise ModelArgumentError(f"{where}num_classes must be an int >= 1, got {num_classes!r}")
    num_classes = count
    if class_names is None:
        return default_class_names(num_classes, background=background)
    names = list(class_names)
    if len(names) != num_classes:
        included = " (background included)" if background else ""
        raise ModelArgumentError(
            f"{where}class_names has {len(names)} class names for num_classes={num_classes}{included}: "
            f"give one name per class, or none for the defaults"
        )
    return names
