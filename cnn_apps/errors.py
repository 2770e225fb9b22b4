"""Exceptions raised by cnn-apps.

Each message names the culprit (the key, file, record or run) and, where there is
one, the fix. The CLI prints them without a traceback.
"""


class CnnAppsError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(CnnAppsError):
    """A configuration file, key or value is wrong."""


class ModelArgumentError(ConfigError, ValueError):
    """A model constructor got a bad argument (class names that do not fit ``num_classes``, an
    unknown option or postprocess key, an input side its stride does not divide). The message
    names the argument and the valid values. A ConfigError, so the CLI reports it without a
    traceback, and a ValueError, as these constructors raised before it existed."""


class DataError(CnnAppsError):
    """A data source, file or record cannot be used."""


class ModelError(CnnAppsError):
    """A model cannot be built, loaded, exported or verified."""


class TrackingError(CnnAppsError):
    """An MLflow run, artifact or model that a stage needs is missing or wrong."""


class TrainingError(CnnAppsError):
    """Training cannot go on (the loss became NaN or infinite)."""
