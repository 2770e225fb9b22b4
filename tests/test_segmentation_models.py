"""FCN-32s/16s/8s, SegNet and U-Net: any input side divisible by the stride gives scores at
input resolution, .keras round trips, FCN takes a VGG classifier's FC weights as convs, the
finer FCNs start from their coarser parent's prediction, and every model learns a tiny task."""

import keras
import numpy as np
import pytest

from cnn_apps import registry
from cnn_apps.errors import ConfigError, ModelArgumentError
from cnn_apps.segmentation.fcn import FCN, load_classifier_weights
from cnn_apps.segmentation.segmenter import check_divisible, segmentation_loss
from cnn_apps.segmentation.segnet import SegNet
from cnn_apps.segmentation.unet import UNet

TINY = {
    "fcn32s": dict(backbone_args={"width": 1 / 16}, fc_filters=32, fc_kernel=3),
    "fcn16s": dict(backbone_args={"width": 1 / 16}, fc_filters=32, fc_kernel=3),
    "fcn8s": dict(backbone_args={"width": 1 / 16}, fc_filters=32, fc_kernel=3),
    "segnet": dict(width=1 / 16, repeats=(1, 1, 1, 1, 1)),
    "unet": dict(filters=4, depth=3, batch_norm=False),  # 50 steps leave BN's moving statistics unsettled
}


def build(name, num_classes=3, **kwargs):
    return registry.get("segmenter", name)(num_classes, image_size=64, **{**TINY[name], **kwargs})


def test_every_segmenter_is_registered():
    assert set(TINY) <= set(registry.names("segmenter"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_scores_at_input_resolution_for_any_divisible_size(name):
    model = build(name)
    for side in (64, 96):
        images = np.random.default_rng(0).uniform(0, 255, (2, side, side + 32, 3)).astype("float32")
        logits = model.predict_on_batch(images)
        assert logits.shape == (2, side, side + 32, 3)
        out = model.segment(images)
        assert tuple(out["class_map"].shape) == (2, side, side + 32)
        np.testing.assert_allclose(np.asarray(out["probabilities"]).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_keras_round_trip(name, tmp_path):
    model = build(name, class_names=["background", "a", "b"])
    images = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == model.get_config()
    assert loaded.class_names == ["background", "a", "b"] and loaded.stride == model.stride
    np.testing.assert_allclose(loaded.predict_on_batch(images), model.predict_on_batch(images), atol=1e-5)


def test_strides_and_errors():
    assert build("fcn8s").stride == 32 and build("segnet").stride == 32 and build("unet").stride == 8
    with pytest.raises(ValueError, match="variant"):
        FCN(3, variant="4s")
    with pytest.raises(ValueError, match="class names"):
        UNet(3, filters=4, depth=2, class_names=["background", "a"])
    with pytest.raises(ValueError, match="divisible"):
        build("segnet").predict_on_batch(np.zeros((1, 48, 48, 3), "float32"))
    with pytest.raises(ValueError, match="repeats"):
        SegNet(3, repeats=())
    with pytest.raises(ValueError, match="VGG"):
        FCN(3, backbone="resnet_mini")


def test_bad_arguments_raise_one_error_type_and_default_names_start_with_background():
    # ModelArgumentError is a ValueError (as before) and a ConfigError (the CLI's exit 2)
    assert build("unet").class_names == ["background", "1", "2"]
    with pytest.raises(
        ModelArgumentError, match=r"UNet: class_names has 2 class names for num_classes=3 \(background"
    ):
        UNet(3, filters=4, depth=2, class_names=["background", "a"])
    with pytest.raises(ModelArgumentError, match="FCN variant must be one of 32s, 16s, 8s"):
        FCN(3, variant="4s")
    with pytest.raises(ModelArgumentError, match="depth must be >= 1"):
        UNet(3, depth=0)
    with pytest.raises(ModelArgumentError, match=r"repeats needs 1\.\.5 blocks"):
        SegNet(3, repeats=(1,) * 6)
    with pytest.raises(ModelArgumentError, match="divisible by 32.*got 100; try 96"):
        check_divisible(100, 32, "FCN")
    with pytest.raises(ConfigError, match="FCN is built on a VGG"):
        FCN(3, backbone="resnet_mini")


def test_fcn_skips_start_from_the_coarser_prediction():
    """score_pool4 / score_pool3 are zero-initialised: an untrained FCN-8s with FCN-32s'
    weights predicts the same coarse scores upsampled (up to the x2 stages' bilinear steps)."""
    fcn8 = build("fcn8s")
    assert not np.any(fcn8.get_layer("score_pool4").get_weights()[0])
    assert not np.any(fcn8.get_layer("score_pool3").get_weights()[0])
    assert not fcn8.get_layer("upscore8").trainable and fcn8.get_layer("upscore_pool4").trainable


def test_fcn_loads_a_vgg_classifier_fc_layers_as_convolutions():
    from cnn_apps.backbones.vgg import VGG

    keras.utils.set_random_seed(0)
    vgg = VGG(
        input_shape=(64, 64, 3), width=1 / 16, include_top=True, num_classes=5, dropout=0.0, name="vgg16"
    )
    fcn = FCN(3, variant="32s", backbone_args={"width": 1 / 16}, fc_filters=4096, fc_kernel=2, dropout=0.0)
    loaded = load_classifier_weights(fcn, vgg)
    assert {"block1_conv1", "block5_conv3", "fc6", "fc7"} <= set(loaded)
    images = np.random.default_rng(2).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    fc2 = keras.Model(vgg.inputs, vgg.get_layer("fc2").output).predict_on_batch(images)
    # the FCN's fc7 on the 2x2 pool5 map: its top-left position sees exactly the classifier's window
    fcn_fc7 = keras.Model(fcn.inputs, fcn.get_layer("fc7").output)
    scaled = (images + 1.0) * 127.5  # the FCN's own [-1, 1] scaling undone
    np.testing.assert_allclose(fcn_fc7.predict_on_batch(scaled)[:, 0, 0], fc2, rtol=1e-4, atol=1e-4)
    bad = FCN(3, variant="32s", backbone_args={"width": 1 / 16}, fc_filters=64, fc_kernel=2)
    with pytest.raises(ValueError, match="fc_kernel"):
        load_classifier_weights(bad, vgg)


@pytest.mark.parametrize("name", sorted(TINY))
def test_learns_a_tiny_task_and_ignores_255(name):
    """Left half class 1, right half class 2 on images whose colour says which side is which;
    a band of ignore pixels with a wrong label must not matter."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 16
    images = np.zeros((n, 64, 64, 3), "float32")
    masks = np.zeros((n, 64, 64), "int32")
    flip = rng.integers(0, 2, n).astype(bool)
    images[:, :, :32, 0] = 200.0
    images[:, :, 32:, 2] = 200.0
    masks[:, :, :32], masks[:, :, 32:] = 1, 2
    images[flip] = images[flip][:, :, ::-1]
    masks[flip] = masks[flip][:, :, ::-1]
    masks[:, :4] = 255  # ignored rows
    model = build(name, **({"dropout": 0.0} if name.startswith("fcn") else {}))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=segmentation_loss())
    history = model.fit(images, masks, epochs=25, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    pred = np.asarray(model.segment(images)["class_map"])
    valid = masks != 255
    assert (pred[valid] == masks[valid]).mean() > 0.8
