"""Transfer learning helpers: freeze a base, unfreeze its top N blocks, copy its first N, count.

Blocks are found by layer name, in graph order: ``stem``, ``stageS_blockB``
(resnet_mini), ``convS_blockB`` / ``conv1`` (ResNet, plain), ``blockB`` (VGG),
``convK`` (AlexNet). Unfreezing "the top N blocks" therefore means the last N of
these, not the last N layers. Batch-norm layers stay frozen whatever happens: a
frozen ``BatchNormalization`` runs in inference mode in Keras 3, so fine-tuning on
a small target set does not overwrite the statistics learnt on the large source.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import keras

from cnn_apps.errors import ConfigError

_BLOCK = re.compile(r"^(stem|stage\d+_block\d+|conv\d+_block\d+|block\d+|conv\d+|pool\d+|fc\d+)")


def backbone_blocks(backbone) -> OrderedDict[str, list]:
    """``{block name: [layers]}`` in graph order for the weight-carrying layers of ``backbone``."""
    blocks: OrderedDict = OrderedDict()
    for layer in backbone.layers:
        if not layer.weights:
            continue
        match = _BLOCK.match(layer.name)
        key = match.group(1) if match else layer.name
        blocks.setdefault(key, []).append(layer)
    return blocks


def freeze_batch_norm(model) -> None:
    """Every BatchNormalization layer (nested models included) frozen: inference mode."""
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def unfreeze_top_blocks(classifier, n: int) -> list[str]:
    """Freeze the classifier's backbone except its last ``n`` blocks; BN stays frozen.

    The head (everything outside the backbone) stays trainable. Returns the names
    of the unfrozen blocks. ``n`` larger than the number of blocks unfreezes all.
    """
    if n < 0:
        raise ConfigError(f"finetune.unfreeze_blocks must be >= 0, got {n}")
    backbone = classifier.backbone
    backbone.trainable = True
    blocks = backbone_blocks(backbone)
    names = list(blocks)
    top = names[len(names) - n :] if n else []
    for name, layers in blocks.items():
        for layer in layers:
            layer.trainable = name in top
    freeze_batch_norm(backbone)
    return top


def copy_first_blocks(source, target, n: int) -> list[str]:
    """Copy the first ``n`` blocks of ``source``'s backbone into ``target``'s, frozen (batch norm
    in inference mode); the blocks above keep ``target``'s own (random) weights and train, as in
    Yosinski et al.'s AnB / BnB networks. Returns the names of the copied blocks."""
    from cnn_apps.errors import ModelError

    src, dst = backbone_blocks(source.backbone), backbone_blocks(target.backbone)
    if list(src) != list(dst):
        raise ModelError(f"cannot copy blocks between different backbones: {list(src)} vs {list(dst)}")
    if not 1 <= n <= len(dst):
        raise ConfigError(
            f"finetune.copied_blocks: give 1..{len(dst)} (the backbone's blocks: {', '.join(dst)}), got {n}"
        )
    names = list(dst)[:n]
    for name in names:
        for from_layer, to_layer in zip(src[name], dst[name], strict=True):
            to_layer.set_weights(from_layer.get_weights())
            to_layer.trainable = False
    return names


def parameter_counts(model) -> dict:
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = sum(int(w.numpy().size) for w in model.weights)
    return {"params_total": total, "params_trainable": trainable, "params_frozen": total - trainable}


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
