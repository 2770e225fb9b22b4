"""keras.applications weights in our backbones, copied by layer name.

Our VGG-16/19 and ResNet-50 (``conv_bias=True``) use keras.applications' layer names,
so the mapping is explicit: every weight-carrying layer of theirs goes to our layer of
the same name (or ``name_map[name]``), every variable to the variable of the same name
(``kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``). A
missing layer, a missing variable or a shape that differs raises ``ModelError`` naming
the layer, before anything is copied; so does one of our layers left without weights.

Inputs: keras.applications' weights expect ``keras.applications.<family>.preprocess_input``
pixels (caffe style: BGR, ImageNet mean subtracted), not the [-1, 1] of ``ImageClassifier``.
"""

from __future__ import annotations

import os

import keras

import cnn_apps.backbones  # noqa: F401  (registers the built-in backbones)
from cnn_apps import registry
from cnn_apps.errors import ModelError

# our registry name -> (keras.applications constructor, our arguments that make the same layers)
KERAS_APPLICATIONS = {
    "vgg16": ("VGG16", {}),
    "vgg19": ("VGG19", {}),
    "resnet50": ("ResNet50", {"conv_bias": True}),
}


def _weighted_layers(model) -> dict:
    """name -> layer for every layer with weights, nested models flattened."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = _weighted_layers(layer)
            clash = sorted(set(inner) & set(found))
            if clash:
                raise ModelError(
                    f"layer name '{clash[0]}' appears twice in {model.name}; names must be unique to map"
                )
            found.update(inner)
        elif layer.weights:
            found[layer.name] = layer
    return found


def load_keras_applications_weights(ours, theirs, name_map: dict | None = None, skip=()) -> list[str]:
    """Copy ``theirs``' weights (a keras.applications model) into ``ours``, layer by layer name.

    Args:
        ours: our model (a backbone, or a model that nests one).
        theirs: the source model, e.g. ``keras.applications.VGG16(weights="imagenet")``.
        name_map: their layer name -> our layer name, where they differ (default: same name).
        skip: our layer names allowed to keep their own weights (e.g. a new ``predictions``).

    Returns the names of our layers that were loaded. Raises ``ModelError`` (nothing copied)
    when a layer or variable has no counterpart or a shape differs.
    """
    name_map = dict(name_map or {})
    mine = _weighted_layers(ours)
    pairs, loaded = [], []
    for their_name, their_layer in _weighted_layers(theirs).items():
        our_name = name_map.get(their_name, their_name)
        if our_name in skip:
            continue
        if our_name not in mine:
            raise ModelError(
                f"keras.applications layer '{their_name}' has no layer '{our_name}' in {ours.name} "
                "(pass name_map to rename, or skip)"
            )
        if our_name in loaded:
            raise ModelError(f"two keras.applications layers map to layer '{our_name}' of {ours.name}")
        our_vars = {v.name: v for v in mine[our_name].weights}
        their_vars = {v.name: v for v in their_layer.weights}
        if set(our_vars) != set(their_vars):
            raise ModelError(
                f"layer '{our_name}': keras.applications has variables {sorted(their_vars)}, "
                f"ours has {sorted(our_vars)} (a ResNet needs conv_bias=True for keras weights)"
            )
        for var_name, src in their_vars.items():
            dst = our_vars[var_name]
            if tuple(dst.shape) != tuple(src.shape):
                raise ModelError(
                    f"layer '{our_name}' {var_name}: keras.applications shape {tuple(src.shape)}, "
                    f"ours {tuple(dst.shape)} (width, num_classes or input size differ?)"
                )
            pairs.append((dst, src))
        loaded.append(our_name)
    left = sorted(set(mine) - set(loaded) - set(skip))
    if left:
        raise ModelError(
            f"layers of {ours.name} with no keras.applications counterpart: {', '.join(left[:5])}"
            f"{' ...' if len(left) > 5 else ''} (pass skip to keep their own weights)"
        )
    for dst, src in pairs:  # only now: a failed mapping leaves ours untouched
        dst.assign(src.numpy())
    return loaded


def _is_offline() -> bool:
    return os.environ.get("CNN_APPS_OFFLINE", "") not in ("", "0")


def from_keras_applications(
    name: str,
    weights="imagenet",
    input_shape=(224, 224, 3),
    include_top=True,
    num_classes=1000,
    pooling=None,
    **backbone_args,
):
    """Our ``name`` backbone with keras.applications' weights (ImageNet by default).

    Builds ``keras.applications.<X>(weights=weights, ...)`` (downloads the ImageNet file
    once into ~/.keras/models, so it needs the internet unless cached or ``weights`` is a
    local .h5 path), builds ours with the same shape, copies by layer name and returns ours.
    ``backbone_args`` go to our constructor (regularization; ``dropout`` only adds layers).

    Input (B, H, W, 3) preprocessed as ``keras.applications.<family>.preprocess_input``.
    """
    key = name.lower()
    if key not in KERAS_APPLICATIONS:
        raise ModelError(
            f"no keras.applications counterpart for backbone '{name}'. "
            f"Available: {', '.join(sorted(KERAS_APPLICATIONS))}"
        )
    constructor, ours_args = KERAS_APPLICATIONS[key]
    local_file = isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights)
    if weights is not None and not local_file and _is_offline():
        raise ModelError(
            f"{constructor}(weights={weights!r}) downloads its weights, but CNN_APPS_OFFLINE is set; "
            "pass a local .h5 path as weights, or unset CNN_APPS_OFFLINE on a machine with internet"
        )
    try:
        theirs = getattr(keras.applications, constructor)(
            weights=weights,
            include_top=include_top,
            input_shape=tuple(input_shape),
            classes=num_classes,
            pooling=pooling,
        )
    except (OSError, ValueError) as err:  # download failures surface as OSError/URLError (an OSError)
        raise ModelError(f"keras.applications.{constructor}(weights={weights!r}) failed: {err}") from err
    build = registry.get("backbone", key)
    ours = build(
        input_shape=tuple(input_shape),
        include_top=include_top,
        num_classes=num_classes,
        pooling=pooling,
        **{**ours_args, **backbone_args},
    )
    load_keras_applications_weights(ours, theirs)
    return ours
