"""Image classification: a registered backbone plus a pooling/dropout/dense head."""

from cnn_apps.classification.classifier import ImageClassifier, classifier_from_config  # noqa: F401
