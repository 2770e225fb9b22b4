"""Serving: SavedModel exports for TF Serving (:mod:`.saved_model`: the signatures;
:mod:`.export_verification`: their check on reload; :mod:`.export_versions`: the version
folders and staging), the MLflow registry's aliases (:mod:`.registry`), TF Serving's REST
request format (:mod:`.rest`), MLflow's model server (:mod:`.model_server`) and batch
prediction from any of them (:mod:`.predict`: the command; :mod:`.images`: its input files;
:mod:`.predictors`: the model behind it)."""

from cnn_apps.serving.export_verification import (
    encode_png,
    verify_classifier_export,
    verify_detector_export,
    verify_segmenter_export,
)
from cnn_apps.serving.export_versions import next_version, staging_folder
from cnn_apps.serving.saved_model import (
    SIGNATURES,
    export_classifier,
    export_detector,
    export_segmenter,
    image_input_shape,
    load_export,
)

__all__ = [
    "SIGNATURES",
    "encode_png",
    "export_classifier",
    "export_detector",
    "export_segmenter",
    "image_input_shape",
    "load_export",
    "next_version",
    "staging_folder",
    "verify_classifier_export",
    "verify_detector_export",
    "verify_segmenter_export",
]
