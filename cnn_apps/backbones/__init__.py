"""Backbones: feature extractors registered by name (see ``cnn-apps models``)."""

from cnn_apps.backbones.alexnet import AlexNet  # noqa: F401  (registers "alexnet")
from cnn_apps.backbones.batch_norm import FusedBatchNormalization  # noqa: F401
from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D  # noqa: F401
from cnn_apps.backbones.resnet import ResNet  # noqa: F401  (registers "resnet18/34/50", "plain18/34")
from cnn_apps.backbones.resnet_mini import ResNetMini  # noqa: F401  (registers "resnet_mini")
from cnn_apps.backbones.vgg import VGG  # noqa: F401  (registers "vgg16", "vgg19")
