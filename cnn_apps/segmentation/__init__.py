"""Semantic segmentation: upsampling layers, FCN-32s/16s/8s, SegNet, U-Net, metrics. Masks are
(B, H, W) int class ids; 255 is the ignore label."""

from cnn_apps.segmentation import fcn, segnet, unet  # noqa: F401,E402  (registers the segmenters)
from cnn_apps.segmentation.segmenter import Segmenter  # noqa: F401,E402
