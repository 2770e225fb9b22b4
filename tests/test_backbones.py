"""The classic backbone zoo: exact paper/keras.applications counts, FLOPs, weight mapping,
regularization switches, small inputs and .keras round trips."""

import inspect
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import keras
import numpy as np
import pytest

from cnn_apps import registry
from cnn_apps.backbones.base import Backbone, nominal_stride, pyramid_by_stride
from cnn_apps.backbones.features import pyramid_features
from cnn_apps.backbones.flops import count_macs
from cnn_apps.backbones.pretrained import from_keras_applications, load_keras_applications_weights
from cnn_apps.backbones.resnet import ResNet
from cnn_apps.backbones.vgg import VGG
from cnn_apps.backbones.zoo import zoo_table
from cnn_apps.classification import ImageClassifier
from cnn_apps.errors import ConfigError, ModelArgumentError, ModelError

ZOO = ["alexnet", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "resnet50_v1_5", "plain18", "plain34"]
ROOT = Path(__file__).resolve().parents[1]


def build(name, size=224, **kwargs):
    kwargs.setdefault("include_top", True)
    return registry.get("backbone", name)(input_shape=(size, size, 3), **kwargs)


def trainable(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def pixels(size, n=2, seed=0):
    # caffe-style preprocessed range, so random-init activations are not vanishingly small
    return np.random.default_rng(seed).uniform(-120, 130, (n, size, size, 3)).astype("float32")


# --- exact counts -------------------------------------------------------------------------


def test_every_zoo_name_is_registered():
    assert set(ZOO) <= set(registry.names("backbone"))
    assert "resnet_mini" in registry.names("backbone")


@pytest.mark.parametrize("name, expected", [("vgg16", 138_357_544), ("vgg19", 143_667_240)])
def test_vgg_matches_keras_applications_parameters_and_names(name, expected):
    model = build(name)
    assert model.count_params() == expected  # = keras.applications.VGG16/VGG19(weights=None)
    theirs = getattr(keras.applications, name.upper())(
        weights=None, include_top=False, input_shape=(32, 32, 3)
    )
    ours_names = [layer.name for layer in model.layers if layer.weights]
    assert ours_names == [layer.name for layer in theirs.layers if layer.weights] + [
        "fc1",
        "fc2",
        "predictions",
    ]
    assert model.pyramid_outputs == {f"P{i}": f"block{i}_pool" for i in range(1, 6)}
    assert model.pyramid_outputs.aliases == {f"pool{i}": f"P{i}" for i in range(1, 6)}


def test_resnet50_matches_keras_applications_layer_for_layer():
    ours = build("resnet50", conv_bias=True)
    theirs = keras.applications.ResNet50(weights=None)
    assert ours.count_params() == theirs.count_params() == 25_636_712

    def keras_class(layer):  # our FusedBatchNormalization is Keras' BatchNormalization with a faster call
        return next(c.__name__ for c in type(layer).__mro__ if c.__module__.startswith("keras"))

    def strip(m):
        return [
            (keras_class(layer), layer.name, [tuple(v.shape) for v in layer.weights])
            for layer in m.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ]

    assert strip(ours) == strip(theirs)
    assert ours.get_layer("conv1_bn").epsilon == pytest.approx(1.001e-5)
    assert ours.get_layer("conv3_block1_1_conv").strides == (2, 2)  # v1: stride on the first 1x1
    assert ours.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert ours.pyramid_outputs == {
        "P2": "conv2_block3_out",
        "P3": "conv3_block4_out",
        "P4": "conv4_block6_out",
        "P5": "conv5_block3_out",
    }
    assert ours.pyramid_outputs["C4"] == ours.pyramid_outputs["P4"] == "conv4_block6_out"


@pytest.mark.parametrize(
    "name, expected", [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)]
)
def test_paper_resnets_match_torchvision_trainable_counts(name, expected):
    model = build(name)  # conv_bias=False, BN after every conv
    assert trainable(model) == expected
    assert not model.get_layer("conv1_conv").use_bias


def test_resnet50_v1_5_is_torchvisions_layout():
    # torchvision's resnet50 docs: num_params 25,557,032, GFLOPS 4.09 (multiply-adds), the stride
    # of each downsampling bottleneck on its 3x3 (v1.5) instead of its first 1x1 (v1)
    v1, v15 = build("resnet50"), build("resnet50_v1_5")
    assert trainable(v15) == trainable(v1) == 25_557_032
    assert count_macs(v15) / 1e9 == pytest.approx(4.09, abs=0.005)
    assert count_macs(v1) / 1e9 == pytest.approx(3.86, abs=0.005)
    for stage in ("conv3", "conv4", "conv5"):
        assert v15.get_layer(f"{stage}_block1_1_conv").strides == (1, 1)
        assert v15.get_layer(f"{stage}_block1_2_conv").strides == (2, 2)
        assert v1.get_layer(f"{stage}_block1_1_conv").strides == (2, 2)
    assert v15.output_shape == v1.output_shape == (None, 1000)
    assert v15.pyramid_outputs == v1.pyramid_outputs
    with pytest.raises(ModelArgumentError, match="stride_in_3x3 applies to bottleneck blocks"):
        build("resnet18", stride_in_3x3=True)


def test_plain_nets_are_the_resnets_without_shortcuts():
    for depth in (18, 34):
        plain, res = build(f"plain{depth}"), build(f"resnet{depth}")
        assert not [layer for layer in plain.layers if isinstance(layer, keras.layers.Add)]
        plain_convs = {layer.name for layer in plain.layers if isinstance(layer, keras.layers.Conv2D)}
        res_convs = {layer.name for layer in res.layers if isinstance(layer, keras.layers.Conv2D)}
        assert res_convs - plain_convs == {
            "conv3_block1_0_conv",
            "conv4_block1_0_conv",
            "conv5_block1_0_conv",
        }
        assert plain_convs < res_convs
    assert plain.pyramid_outputs == res.pyramid_outputs


def test_alexnet_paper_counts_single_tower_and_grouped():
    one = build("alexnet", 227)
    assert one.count_params() == 62_378_344
    assert one.output_shape == (None, 1000)
    assert one.get_layer("pool5").output.shape[1:] == (6, 6, 256)
    two = build("alexnet", 227, grouped=True)
    assert two.count_params() == 60_965_224
    assert [two.get_layer(f"conv{i}").groups for i in range(1, 6)] == [1, 2, 1, 2, 2]
    assert one.pyramid_outputs == {"P3": "pool1", "P4": "pool2", "P5": "pool5"}  # strides 8, 16, 32
    assert one.pyramid_outputs.aliases == {"pool1": "P3", "pool2": "P4", "pool5": "P5"}


# --- FLOPs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, gmacs", [("vgg19", 19.6), ("resnet34", 3.6), ("plain34", 3.6)])
def test_multiply_adds_match_the_resnet_paper(name, gmacs):
    assert count_macs(build(name)) / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_count_macs_by_hand_and_through_a_nested_backbone():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(6, 3, padding="same", groups=2)(inputs)  # 8*8*6*3*3*4/2
    x = keras.layers.MaxPooling2D()(x)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(x))  # 4*4*6*5
    assert count_macs(keras.Model(inputs, outputs)) == 8 * 8 * 6 * 9 * 2 + 96 * 5
    clf = ImageClassifier(10, (64, 64, 3), backbone="resnet18")
    assert count_macs(clf) == count_macs(clf.backbone) + 512 * 10
    with pytest.raises(ModelError, match="conv1_conv"):
        count_macs(registry.get("backbone", "resnet18")())  # (None, None, 3): sizes unknown


def test_count_macs_of_a_head_on_a_variable_number_of_rows():
    rois = keras.Input((None, 12))  # a RoI head: Dense on (B, rows, features)
    model = keras.Model(rois, keras.layers.Dense(3)(keras.layers.Dense(7)(rois)))
    assert count_macs(model, unknown_rows=300) == 300 * (12 * 7 + 7 * 3)
    with pytest.raises(ModelError, match="unknown_rows"):
        count_macs(model)


def test_zoo_table_has_every_backbone_at_paper_size():
    rows = {row["name"]: row for row in zoo_table()}
    assert set(rows) == set(registry.names("backbone"))
    assert all(set(row) == {"name", "params", "macs", "input_size"} for row in rows.values())
    assert rows["alexnet"]["input_size"] == 227 and rows["vgg16"]["input_size"] == 224
    assert rows["vgg16"]["params"] == 138_357_544 and rows["alexnet"]["params"] == 62_378_344
    assert rows["vgg19"]["macs"] / 1e9 == pytest.approx(19.6, rel=0.02)


# --- small inputs, options ----------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_every_backbone_builds_and_runs_at_32px(name):
    top = build(name, 32, num_classes=7)
    out = top(pixels(32))
    assert tuple(out.shape) == (2, 7)
    np.testing.assert_allclose(np.sum(keras.ops.convert_to_numpy(out), axis=1), 1.0, rtol=1e-5)
    sides = [top.get_layer(layer).output.shape[1] for layer in top.pyramid_outputs.values()]
    assert sides == sorted(sides, reverse=True) and sides[-1] == 1  # coarser level by level, 1x1 at the top
    for pooling, rank in ((None, 4), ("avg", 2), ("max", 2)):
        assert len(build(name, 32, include_top=False, pooling=pooling).output_shape) == rank


def test_default_is_a_feature_extractor_for_any_size_and_the_classifier():
    features = registry.get("backbone", "resnet18")()
    assert features.output_shape == (None, None, None, 512)
    assert tuple(features(pixels(64, 1)).shape) == (1, 2, 2, 512)
    with pytest.raises(ModelError, match="fixed input_shape"):
        registry.get("backbone", "vgg16")(include_top=True)
    for name in ("vgg16", "alexnet", "plain18"):
        clf = ImageClassifier(3, (32, 32, 3), backbone=name, width=0.25)
        assert clf.predict(pixels(32), verbose=0).shape == (2, 3)


def test_width_scales_filters_not_fc_widths():
    half = build("vgg16", 32, width=0.5)
    assert half.get_layer("block1_conv1").filters == 32 and half.get_layer("block5_conv3").filters == 256
    assert half.get_layer("fc1").units == 4096
    assert build("resnet50", 32, width=0.5).get_layer("conv5_block3_3_conv").filters == 1024
    assert build("alexnet", 32, width=2.0).get_layer("conv1").filters == 192


def test_alexnet_keeps_paper_pools_from_67px_and_pads_below():
    assert {build("alexnet", 67).get_layer(p).padding for p in ("pool1", "pool2", "pool5")} == {"valid"}
    small = build("alexnet", 32)
    assert [small.get_layer(p).padding for p in ("pool1", "pool2", "pool5")] == ["valid", "same", "same"]


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ConfigError, match="pooling"):
        build("vgg16", 32, include_top=False, pooling="mean")
    with pytest.raises(ConfigError, match="block"):
        ResNet(block="wide")
    with pytest.raises(ConfigError, match="32 px"):
        build("resnet18", 16)
    # one error type for bad constructor arguments, still a ConfigError and a ValueError
    with pytest.raises(ModelArgumentError, match="repeats needs 5 entries"):
        VGG(repeats=(2, 2))
    with pytest.raises(ValueError, match="stage_filters"):
        registry.get("backbone", "resnet_mini")(stage_filters=(8, 16), blocks_per_stage=(1,))
    with pytest.raises(ModelArgumentError, match=r"no feature level or layer 'P9'; levels: P2, P3.*C2"):
        pyramid_features(registry.get("backbone", "resnet18")(), ["P9"])


# --- the Backbone base: config and pyramid levels keyed by stride --------------------------


def _paper_size(name):
    return 227 if name == "alexnet" else 224


@pytest.mark.parametrize("name", sorted(set(ZOO) | {"resnet_mini"}))
def test_pyramid_keys_name_the_stride_and_the_old_names_are_aliases(name):
    size = _paper_size(name)
    model = registry.get("backbone", name)(input_shape=(size, size, 3))
    assert isinstance(model, Backbone)
    pyramid = model.pyramid_outputs
    keys = list(pyramid)
    assert keys and all(re.fullmatch(r"P\d", k) for k in keys)
    assert keys == sorted(keys, key=lambda k: int(k[1:]))  # finest first
    for key, layer in pyramid.items():
        stride = 2 ** int(key[1:])
        assert pyramid.stride(key) == stride
        side = model.get_layer(layer).output.shape[1]
        if name == "alexnet":  # 'valid' convs and pools: 27, 13, 6 at 227 px (not 28, 14, 7)
            assert side == size // stride - 1
        else:
            assert side == size // stride  # e.g. P5 = 7 x 7 at 224 px
    if "P5" in pyramid and name != "alexnet":
        assert model.get_layer(pyramid["P5"]).output.shape[1:3] == (7, 7)
    old = {"alexnet": ["pool1", "pool2", "pool5"], "resnet_mini": ["C1", "C2", "C3", "C4"]}.get(
        name, [f"pool{i}" for i in range(1, 6)] if name.startswith("vgg") else ["C2", "C3", "C4", "C5"]
    )
    assert list(pyramid.aliases) == old
    for alias, key in pyramid.aliases.items():
        assert alias in pyramid and pyramid[alias] == pyramid[key] == pyramid.get(alias)
        assert pyramid.stride(alias) == pyramid.stride(key)
    assert "P9" not in pyramid and pyramid.get("P9") is None
    # the old names and the P-keys give the same feature model
    a, b = pyramid_features(model, [old[-1]]), pyramid_features(model, [keys[-1]])
    assert a.outputs[0].shape == b.outputs[0].shape
    assert a.layers[-1].name == b.layers[-1].name == pyramid[keys[-1]]


def test_pyramid_strides_do_not_depend_on_the_input_size():
    # at 32 px AlexNet's pool1 is 2 x 2 (a size ratio of 16) but its stride is 8
    for size in (None, 32, 64):
        alex = registry.get("backbone", "alexnet")(input_shape=(size, size, 3))
        assert alex.pyramid_outputs == {"P3": "pool1", "P4": "pool2", "P5": "pool5"}
        vgg = registry.get("backbone", "vgg16")(input_shape=(size, size, 3), ceil_pooling=True)
        assert list(vgg.pyramid_outputs) == ["P1", "P2", "P3", "P4", "P5"]
    mini = registry.get("backbone", "resnet_mini")(
        stem_strides=1, stage_filters=(8, 16), blocks_per_stage=(1, 2)
    )
    assert mini.pyramid_outputs == {"P0": "stage1_block1_out", "P1": "stage2_block2_out"}
    assert mini.pyramid_outputs.aliases == {"C0": "P0", "C1": "P1"}


def test_nominal_stride_walks_any_graph_and_two_levels_need_two_strides():
    x = keras.Input((32, 32, 3))
    a = keras.layers.Conv2D(4, 3, strides=2, name="a")(x)
    b = keras.layers.Conv2D(4, 1, name="b")(a)
    up = keras.layers.Conv2DTranspose(4, 2, strides=2, name="up")(b)
    inner = keras.Model(x, b, name="inner")
    y = keras.Input((32, 32, 3))
    pooled = keras.layers.MaxPooling2D(name="pooled")(inner(y))  # through a nested model
    assert (nominal_stride(a), nominal_stride(up), nominal_stride(pooled)) == (2.0, 1.0, 4.0)
    with pytest.raises(ModelError, match="'a' and 'b'.*both have stride 2 \\(P1\\)"):
        pyramid_by_stride(keras.Model(x, up), {"first": "a", "second": "b"})


@pytest.mark.parametrize("name", sorted(set(ZOO) | {"resnet_mini"}))
def test_get_config_mirrors_every_constructor_argument(name):
    model = registry.get("backbone", name)(input_shape=(32, 32, 3))
    params = inspect.signature(type(model).__init__).parameters
    args = {p for p in params if p not in ("self", "kwargs")}
    config = model.get_config()
    assert set(config) == args | {"name", "trainable"}
    again = type(model).from_config(config)
    assert again.get_config() == config and again.count_params() == model.count_params()


def _layers(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_defaults_leave_the_papers_unregularized():
    for name in ("alexnet", "vgg16", "resnet18"):
        model = build(name, 32)
        convs_dense = _layers(model, (keras.layers.Conv2D, keras.layers.Dense))
        assert all(layer.kernel_regularizer is None for layer in convs_dense)
        assert not _layers(model, keras.layers.SpatialDropout2D)
    assert not _layers(build("vgg16", 32), keras.layers.BatchNormalization)
    assert len(_layers(build("alexnet", 32), keras.layers.Dropout)) == 2  # the paper's FC dropout
    assert len(_layers(build("vgg16", 32, dropout=0.0), keras.layers.Dropout)) == 0
    assert len(_layers(build("resnet18", 32), keras.layers.BatchNormalization)) == 20


def test_regularization_switches():
    vgg = build("vgg16", 32, batch_norm=True, block_dropout=0.1, l2=1e-4)
    assert len(_layers(vgg, keras.layers.BatchNormalization)) == 13
    assert not vgg.get_layer("block1_conv1").use_bias  # BN's beta replaces the bias
    assert vgg.get_layer("block1_conv1_relu")  # conv -> BN -> ReLU
    assert [layer.name for layer in _layers(vgg, keras.layers.SpatialDropout2D)] == [
        f"block{i}_dropout" for i in range(1, 6)
    ]
    convs_dense = _layers(vgg, (keras.layers.Conv2D, keras.layers.Dense))
    assert all(isinstance(layer.kernel_regularizer, keras.regularizers.L1L2) for layer in convs_dense)
    assert len(vgg.losses) == len(convs_dense) == 16

    alex = build("alexnet", 32, batch_norm=True, block_dropout=0.2, l1=1e-5)
    assert len(_layers(alex, keras.layers.BatchNormalization)) == 5
    assert len(_layers(alex, keras.layers.SpatialDropout2D)) == 3
    assert alex.get_layer("fc6").kernel_regularizer.l1 == pytest.approx(1e-5)

    res = build("resnet18", 32, batch_norm=False, block_dropout=0.1, l1=1e-5, l2=1e-4)
    assert not _layers(res, keras.layers.BatchNormalization)
    assert all(layer.use_bias for layer in _layers(res, keras.layers.Conv2D))
    assert len(_layers(res, keras.layers.SpatialDropout2D)) == 4
    assert len(res.losses) == len(_layers(res, (keras.layers.Conv2D, keras.layers.Dense)))


# --- keras.applications weights -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, constructor, args",
    [("vgg16", "VGG16", {}), ("vgg19", "VGG19", {}), ("resnet50", "ResNet50", {"conv_bias": True})],
)
def test_keras_applications_weights_give_the_same_outputs(name, constructor, args):
    theirs = getattr(keras.applications, constructor)(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    ours = build(name, 64, include_top=False, **args)
    loaded = load_keras_applications_weights(ours, theirs)
    assert "block1_conv1" in loaded or "conv1_conv" in loaded
    x = pixels(64)
    want = theirs.predict(x, verbose=0)
    assert np.abs(want).max() > 1e-3  # not a vacuous comparison
    # float32 round-off only: our batch norm runs TensorFlow's fused kernel, theirs Keras' separate
    # ops, and the difference grows through ResNet-50's 53 of them (a mis-mapped weight is O(1))
    np.testing.assert_allclose(ours.predict(x, verbose=0), want, atol=1e-4, rtol=1e-4)


def test_keras_applications_vgg_top_maps_too():
    theirs = keras.applications.VGG16(weights=None, include_top=True, input_shape=(32, 32, 3), classes=10)
    ours = build("vgg16", 32, num_classes=10)
    load_keras_applications_weights(ours, theirs)
    x = pixels(32)
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), atol=1e-5)


def test_weight_mapping_errors_name_the_layer_and_copy_nothing():
    theirs = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    paper = build("resnet50", 32, include_top=False)  # conv_bias=False: no biases to take
    before = paper.get_layer("conv1_bn").gamma.numpy().copy()
    with pytest.raises(ModelError, match="layer 'conv1_conv'.*conv_bias=True"):
        load_keras_applications_weights(paper, theirs)
    np.testing.assert_array_equal(paper.get_layer("conv1_bn").gamma.numpy(), before)

    vgg16 = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ModelError, match="block3_conv4"):  # VGG-19 has a conv VGG-16 lacks
        load_keras_applications_weights(build("vgg19", 32, include_top=False), vgg16)
    with pytest.raises(ModelError, match="layer 'block1_conv1' kernel.*shape"):
        load_keras_applications_weights(build("vgg16", 32, include_top=False, width=0.5), vgg16)
    with pytest.raises(ModelError, match="block1_conv1"):
        load_keras_applications_weights(build("vgg16", 32, include_top=False, batch_norm=True), vgg16)
    # a new head on ImageNet features: skip keeps our predictions layer
    ours = build("vgg16", 32, num_classes=3)
    assert "predictions" not in load_keras_applications_weights(
        ours,
        keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=1000),
        skip=("predictions",),
    )


def test_from_keras_applications(monkeypatch):
    with pytest.raises(ModelError, match="no keras.applications counterpart.*resnet50"):
        from_keras_applications("alexnet", weights=None)
    monkeypatch.setenv("CNN_APPS_OFFLINE", "1")
    with pytest.raises(ModelError, match="CNN_APPS_OFFLINE"):
        from_keras_applications("vgg16")  # fails before any download
    ours = from_keras_applications(
        "resnet50", weights=None, input_shape=(32, 32, 3), include_top=False, pooling="avg", l2=1e-4
    )
    assert ours.output_shape == (None, 2048) and ours.get_layer("conv1_conv").use_bias


# --- serialization and portability ---------------------------------------------------------


@pytest.mark.parametrize(
    "name, args",
    [
        ("vgg16", {"width": 0.25, "include_top": True, "num_classes": 4, "batch_norm": True, "l2": 1e-4}),
        ("resnet50", {"width": 0.25, "pooling": "avg", "block_dropout": 0.1, "conv_bias": True}),
        ("resnet50_v1_5", {"width": 0.25, "pooling": "avg"}),
        ("plain18", {"width": 0.25, "batch_norm": False, "l1": 1e-5}),
        ("alexnet", {"width": 0.25, "include_top": True, "num_classes": 4, "grouped": True, "dropout": 0.3}),
    ],
)
def test_keras_save_and_load_give_the_same_outputs(tmp_path, name, args):
    args = {"include_top": False, **args}
    model = registry.get("backbone", name)(input_shape=(32, 32, 3), **args)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert loaded.pyramid_outputs == model.pyramid_outputs
    assert loaded.pyramid_outputs.aliases == model.pyramid_outputs.aliases
    x = pixels(32, 3)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_grouped_conv_trains_on_this_backend():
    model = build("alexnet", 32, width=0.25, grouped=True, num_classes=3)
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=False)
    loss = model.train_on_batch(pixels(32, 4) / 128, np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)


@pytest.mark.skipif(find_spec("jax") is None, reason="JAX not installed")
def test_backbones_build_and_run_under_jax():
    code = (
        "import numpy as np; import cnn_apps.backbones; from cnn_apps import registry\n"
        "for n in ['alexnet', 'vgg16', 'resnet50', 'plain18']:\n"
        "    m = registry.get('backbone', n)(input_shape=(32, 32, 3), include_top=True, num_classes=3,"
        " width=0.25, grouped=True) if n == 'alexnet' else registry.get('backbone', n)("
        "input_shape=(32, 32, 3), include_top=True, num_classes=3, width=0.25)\n"
        "    assert m.predict(np.ones((2, 32, 32, 3), 'float32'), verbose=0).shape == (2, 3)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_strided_pointwise_convolutions_train_at_odd_batch_sizes(tmp_path):
    """A 1x1 convolution at stride 2 over few channels (a tiny ResNet's projection shortcut)
    used to kill the process on TensorFlow 2.21's oneDNN CPU kernels when the batch size was
    odd (heap corruption in the filter gradient). The backbones subsample first and convolve
    at stride 1: the same numbers, and a training step at batch 3 and 5 survives. Run in a
    subprocess, so that a crash fails this test instead of killing the suite."""
    import subprocess
    import sys

    script = tmp_path / "odd_batch.py"
    script.write_text(
        "import numpy as np, keras\n"
        "from cnn_apps.backbones.resnet_mini import ResNetMini\n"
        "from cnn_apps.backbones.resnet import ResNet\n"
        "for net in (ResNetMini(input_shape=(32, 32, 3), stage_filters=[8, 8, 16, 16]),\n"
        "            ResNet(input_shape=(32, 32, 3), blocks_per_stage=[1, 1, 1, 1], width=0.0625)):\n"
        "    x = keras.Input((32, 32, 3))\n"
        "    y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(net(x)))\n"
        "    model = keras.Model(x, y)\n"
        "    model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
        "    for b in (3, 5):\n"
        "        model.train_on_batch(np.random.rand(b, 32, 32, 3).astype('float32'), np.zeros(b))\n"
        "print('survived')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "survived" in done.stdout, done.stderr[-2000:]


def test_pointwise_subsample_equals_the_strided_convolution():
    """Subsampling then a 1x1 convolution at stride 1 is the 1x1 convolution at stride 2, for
    even and odd sides."""
    from cnn_apps.backbones.layers import pointwise_subsample

    for side in (8, 9):
        x = np.random.default_rng(side).random((2, side, side, 4)).astype("float32")
        inputs = keras.Input((side, side, 4))
        sub, strides = pointwise_subsample(inputs, 1, 2, "p")
        assert strides == 1
        conv = keras.layers.Conv2D(6, 1, strides=strides, padding="same")
        ours = keras.Model(inputs, conv(sub))
        ref = keras.layers.Conv2D(6, 1, strides=2, padding="same")
        ref.build(x.shape)
        ref.set_weights(conv.get_weights())
        np.testing.assert_allclose(ours(x), ref(x), atol=1e-6)
    assert pointwise_subsample(inputs, 3, 2, "q")[1] == 2  # other kernels pass through


def test_a_model_saved_with_keras_own_layers_loads_into_ours(tmp_path, monkeypatch):
    """Models saved before the backbones used FusedBatchNormalization and MatmulGradConv2D
    (Keras' BatchNormalization and Conv2D in their place) load, weights and all: the .keras
    format files weights by class name, which ours keep."""
    from cnn_apps.backbones import resnet_mini
    from cnn_apps.backbones.batch_norm import FusedBatchNormalization
    from cnn_apps.backbones.pointwise_conv import MatmulGradConv2D

    with monkeypatch.context() as patch:  # the backbone as it was built before
        patch.setattr(resnet_mini, "FusedBatchNormalization", keras.layers.BatchNormalization)
        patch.setattr(resnet_mini, "MatmulGradConv2D", keras.layers.Conv2D)
        old = ImageClassifier(3, (32, 32, 3), backbone="resnet_mini")
    assert not any(isinstance(layer, MatmulGradConv2D) for layer in old.backbone.layers)
    old.set_weights([np.random.default_rng(i).normal(size=w.shape) for i, w in enumerate(old.get_weights())])
    old.save(tmp_path / "old.keras")
    loaded = keras.models.load_model(tmp_path / "old.keras")
    kinds = {type(layer) for layer in loaded.backbone.layers}
    assert {FusedBatchNormalization, MatmulGradConv2D} <= kinds
    for a, b in zip(loaded.get_weights(), old.get_weights()):
        np.testing.assert_array_equal(a, b)
