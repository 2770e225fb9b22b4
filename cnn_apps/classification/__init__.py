"""Image classification: a registered backbone plus a pooling/dropout/dense head."""

from cnn_apps.classification.classifier import ImageClassifier  # noqa: F401
