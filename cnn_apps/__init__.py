"""cnn-apps: convolutional vision applications on Keras/TensorFlow.

Importing the package is cheap; TensorFlow, Keras and MLflow are imported by the
modules that need them.
"""

__version__ = "0.1.0"
