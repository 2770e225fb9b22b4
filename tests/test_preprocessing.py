"""Pixel scaling layers: what they compute, and that ``CaffePreprocessing`` keeps the Keras
registration it had in ``cnn_apps.classification.classifier`` (``.keras`` files saved before
it moved to ``cnn_apps.preprocessing`` still load)."""

import json
import zipfile

import keras
import numpy as np
import pytest

from cnn_apps.classification import ImageClassifier
from cnn_apps.preprocessing import CaffePreprocessing, preprocessing_layer


def _model(kind):
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Flatten()(preprocessing_layer(kind)(inputs)))


def test_unit_and_caffe_scaling():
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    unit = preprocessing_layer("unit")
    np.testing.assert_allclose(np.asarray(unit(pixels)), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    caffe = preprocessing_layer("caffe")
    assert isinstance(caffe, CaffePreprocessing) and caffe.name == "pixel_scaling"
    expected = [255.0 - 103.939, 127.5 - 116.779, 0.0 - 123.68]  # BGR minus the means
    np.testing.assert_allclose(np.asarray(caffe(pixels))[0, 0, 0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="'unit' or 'caffe'"):
        preprocessing_layer("imagenet")


def test_caffe_layer_keeps_its_registered_name_and_loads_from_before_the_move(tmp_path):
    assert keras.saving.get_registered_name(CaffePreprocessing) == "cnn_apps>CaffePreprocessing"
    model = _model("caffe")
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    path = tmp_path / "now.keras"
    model.save(path)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0), expected)
    # a file written while the class lived in the classifier module: its config names that module
    old = tmp_path / "before.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["class_name"] == "CaffePreprocessing":
                        assert layer["registered_name"] == "cnn_apps>CaffePreprocessing"
                        layer["module"] = "cnn_apps.classification.classifier"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = keras.saving.load_model(old)
    assert isinstance(loaded.get_layer("pixel_scaling"), CaffePreprocessing)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected)


def test_caffe_classifier_round_trips(tmp_path):
    model = ImageClassifier(3, (16, 16, 3), backbone="resnet_mini", width=0.25, preprocessing="caffe")
    assert isinstance(model.get_layer("pixel_scaling"), CaffePreprocessing)
    x = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras")
    assert loaded.preprocessing == "caffe"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
