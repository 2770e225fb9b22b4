"""Object detection: the shared toolkit (boxes, anchors, matching, NMS, losses), the
detectors (YOLO v1, SSD, ...) and the evaluator. Boxes are ``xyxy`` in absolute pixels."""

from cnn_apps.detection import fast_rcnn, faster_rcnn, ssd, yolo, yolov8  # noqa: F401  (registers the detectors)
from cnn_apps.detection.detector import Detector  # noqa: F401
