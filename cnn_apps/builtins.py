"""The built-in models, registered: importing this module imports every module that registers
a builder with :mod:`cnn_apps.registry`, so that ``registry.get(kind, name)`` finds them.

* ``backbone``: the modules of :mod:`cnn_apps.backbones`
* ``detector``: the detectors of :mod:`cnn_apps.detection` (YOLO, SSD, Fast/Faster R-CNN, ...)
* ``region_detector``: :mod:`cnn_apps.detection.rcnn` and :mod:`cnn_apps.detection.sppnet`
* ``segmenter``: the segmenters of :mod:`cnn_apps.segmentation` (FCN, SegNet, U-Net)

``cnn-apps models`` lists them. The registry itself imports no model module (so no model
module's import can loop back to it); the factories and the CLI import this module before
they look a name up. Registering is idempotent: importing this module again, or after some
of these modules, changes nothing.
"""

import cnn_apps.backbones  # noqa: F401
import cnn_apps.detection  # noqa: F401
import cnn_apps.detection.rcnn  # noqa: F401
import cnn_apps.detection.sppnet  # noqa: F401
import cnn_apps.segmentation  # noqa: F401
