"""Backbones: feature extractors registered by name (see ``cnn-apps models``)."""

from cnn_apps.backbones.resnet_mini import ResNetMini  # noqa: F401  (registers "resnet_mini")
