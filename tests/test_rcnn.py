"""R-CNN and SPP-net: warping with context, the SVM's hard negative mining, box regression,
SPP-net's projected proposal features, fit/predict on tiny shapes images, save/load, and
the config plumbing of the region-detector stages."""

import numpy as np
import pytest

from cnn_apps.config import load_config
from cnn_apps.detection import region_detector, region_geometry
from cnn_apps.detection.proposals import box_iou
from cnn_apps.detection.rcnn import RCNN
from cnn_apps.detection.region_geometry import context_window, warp_regions
from cnn_apps.detection.region_head import RegionHead
from cnn_apps.detection.region_training import train_box_regressor, train_linear_svm
from cnn_apps.detection.sppnet import SPPNet
from cnn_apps.errors import ConfigError

TINY = {"stage_filters": [8, 16, 16, 32]}
SIZE = 64


def test_context_window_leaves_p_pixels_of_context_at_the_warp_size():
    box = np.array([[20, 10, 40, 50]], np.float32)  # 20 x 40
    warp, p = 64, 16
    window = context_window(box, warp, p)[0]
    pad = p * warp / region_geometry.PAPER_WARP  # ~4.5 px at 64
    inner = warp - 2 * pad
    np.testing.assert_allclose(
        window,
        [20 - pad * 20 / inner, 10 - pad * 40 / inner, 40 + pad * 20 / inner, 50 + pad * 40 / inner],
        rtol=1e-5,
    )
    # no padding: the window is the box
    np.testing.assert_allclose(context_window(box, warp, 0)[0], box[0])


def test_warp_maps_the_box_to_the_centre_of_the_crop():
    image = np.full((80, 80, 3), 40, np.uint8)
    image[16:48, 8:40] = 220  # the box (8, 16, 40, 48): 32 x 32
    warp = 59  # padding 16 * 59 / 227 = 4.16 px -> the box spans [4.16, 54.84) of the crop
    out = warp_regions(image, [[8, 16, 40, 48]], warp, 16)
    assert out.shape == (1, warp, warp, 3) and out.dtype == np.uint8
    crop = out[0, ..., 0].astype(int)
    assert (crop[6:53, 6:53] == 220).all()  # inside the box
    assert (crop[:3, :] == 40).all() and (crop[-3:, :] == 40).all()  # the context around it
    assert (crop[:, :3] == 40).all() and (crop[:, -3:] == 40).all()
    # no padding: exactly the box, resized (2x here)
    plain = warp_regions(image, [[8, 16, 40, 48]], 64, 0)[0, ..., 0]
    assert (plain[1:-1, 1:-1] == 220).all()
    # outside the image: the image's mean colour
    corner = warp_regions(image, [[-40, -40, -20, -20]], 16, 0)[0]
    np.testing.assert_allclose(corner, np.broadcast_to(image.reshape(-1, 3).mean(0), corner.shape), atol=1)


def test_hard_negative_mining_adds_negatives():
    rng = np.random.default_rng(0)
    pos = rng.normal(1.0, 1.0, (40, 8)).astype(np.float32)
    neg = rng.normal(-1.0, 1.0, (3000, 8)).astype(np.float32)
    w, b, history = train_linear_svm(pos, neg, c=1.0, rounds=2, initial_negatives=50, hard_per_round=100)
    assert history[0] == 50
    assert history[1] > history[0]  # the hardest misclassified negatives were added
    assert all(h <= 50 + 100 * i for i, h in enumerate(history))
    assert ((pos @ w + b) > 0).mean() > 0.8 and ((neg @ w + b) < 0).mean() > 0.8


def test_box_regression_improves_iou():
    rng = np.random.default_rng(1)
    gt = np.array([[20, 20, 50, 60]], np.float32).repeat(300, 0)
    props = gt + rng.uniform(-6, 6, gt.shape).astype(np.float32)
    deltas = region_geometry.encode_deltas(gt, props)
    feats = np.concatenate([deltas * 10, rng.normal(0, 1, (300, 12))], 1).astype(
        np.float32
    )  # informative features
    coef, intercept = train_box_regressor(feats[:200], props[:200], gt[:200], alpha=1.0)
    moved = region_geometry.decode_deltas(feats[200:] @ coef.T + intercept, props[200:])
    before = np.diag(box_iou(props[200:], gt[200:])).mean()
    after = np.diag(box_iou(moved, gt[200:])).mean()
    assert after > before + 0.05 and after > 0.95


def test_region_head_separates_two_classes_and_nms_returns_sorted_detections():
    rng = np.random.default_rng(2)
    gt_boxes = [np.array([[10, 10, 30, 30], [40, 40, 60, 60]], np.float32)] * 6
    gt_labels = [np.array([0, 1])] * 6
    centres = np.eye(4, dtype=np.float32)[:2] * 3
    gt_feats = [centres + rng.normal(0, 0.1, (2, 4)).astype(np.float32) for _ in range(6)]
    props = [np.array([[0, 0, 5, 5], [50, 0, 60, 8], [10, 11, 30, 31]], np.float32)] * 6
    prop_feats = [
        np.stack([np.array([0, 0, 3, 0]), np.array([0, 0, 0, 3]), centres[0]]).astype(np.float32)
        + rng.normal(0, 0.1, (3, 4)).astype(np.float32)
        for _ in range(6)
    ]
    head = RegionHead(2, svm_c=1.0, hard_negative_rounds=1, bbox_ridge_alpha=1.0, score_threshold=-10)
    history = head.fit(gt_feats, gt_boxes, gt_labels, prop_feats, props)
    assert history[0]["positives"] == 6 and history[1]["positives"] == 6
    scores = head.scores(np.stack([centres[0], centres[1], [0, 0, 3, 0]]))
    assert scores[0, 0] > 0 > scores[0, 1] and scores[1, 1] > 0 > scores[1, 0] and (scores[2] < 0).all()
    det = head.detect(prop_feats[0], props[0], 64)
    assert det["boxes"].shape[1] == 4 and len(det["scores"]) == len(det["labels"]) <= 6
    assert (np.diff(det["scores"]) <= 1e-6).all()


def _shapes(n=16, size=SIZE):
    from cnn_apps.data.shapes import make_scene

    scenes = [make_scene(0, "train", i, size, "detection") for i in range(n)]
    return np.stack([s.image for s in scenes]), [s.boxes for s in scenes], [s.labels for s in scenes]


def _tiny(cls, **kw):
    args = dict(
        image_size=SIZE,
        backbone_args=TINY,
        warp_size=32,
        max_proposals=30,
        finetune_epochs=1,
        hard_negative_rounds=1,
        feature_batch_size=128,
    )
    args.update(kw)
    return cls(4, ["circle", "square", "triangle", "star"], **args)


@pytest.fixture(scope="module")
def fitted_sppnet():
    images, boxes, labels = _shapes()
    model = _tiny(SPPNet)
    model.fit(images, boxes, labels)
    return model, images


def test_sppnet_features_are_spp_of_the_conv_map(fitted_sppnet):
    from cnn_apps.detection.pooling import spatial_pyramid_pool

    model, images = fitted_sppnet
    boxes = [np.array([[0, 0, SIZE, SIZE], [8, 8, 40, 24]], np.float32)]
    feats = model._box_features(images[:1], boxes)[0]
    conv = model.conv_maps(images[:1])
    h, w, c = conv.shape[1:]
    assert h == SIZE * model.spatial_scale and feats.shape == (2, c * 21)
    expected = np.asarray(spatial_pyramid_pool(conv, boxes[0][None], (4, 2, 1), model.spatial_scale))[0]
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    # the whole image's level-1 bin (last C values) is the map's global max per channel
    np.testing.assert_allclose(feats[0, -c:], conv[0].max(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    # and the conv map is the fine-tuned backbone's (same weights, full image size)
    assert np.allclose(model._conv_model.get_weights()[0], model.classifier.backbone.get_weights()[0])


def _check_detections(dets, n):
    assert len(dets) == n
    for d in dets:
        m = d["num_detections"]
        assert d["boxes"].shape == (m, 4) and d["scores"].shape == (m,) and d["labels"].shape == (m,)
        assert d["labels"].dtype == np.int32 and ((d["labels"] >= 0) & (d["labels"] < 4)).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= SIZE).all()


def test_sppnet_predict_and_save_load(fitted_sppnet, tmp_path):
    model, images = fitted_sppnet
    dets = model.predict(images[:4])
    _check_detections(dets, 4)
    assert set(model.last_timings) == {"proposal_ms", "feature_ms", "classify_ms"}
    loaded = region_detector.RegionDetector.load(model.save(tmp_path / "spp"))
    assert isinstance(loaded, SPPNet) and loaded.spp_levels == (4, 2, 1)
    again = loaded.predict(images[:4])
    for a, b in zip(dets, again):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)


def test_rcnn_fit_predict_save_load(tmp_path):
    images, boxes, labels = _shapes()
    model = _tiny(RCNN)
    summary = model.fit(images, boxes, labels)
    assert summary["finetune"]["fg_pool"] > 0 and summary["finetune"]["bg_pool"] > 0
    assert model.classifier.output.shape[-1] == 5  # background + 4 classes
    dets = model.predict(images[:4])
    _check_detections(dets, 4)
    loaded = RCNN.load(model.save(tmp_path / "rcnn"))
    assert isinstance(loaded, RCNN) and loaded.get_config() == model.get_config()
    again = loaded.predict(images[:4])
    for a, b in zip(dets, again):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)
    # SPP-net reuses a fine-tuned classifier (no second fine-tuning)
    spp = _tiny(SPPNet)
    summary = spp.fit(images, boxes, labels, classifier=model.classifier)
    assert summary["finetune"] == {"reused": True}
    _check_detections(spp.predict(images[:2]), 2)


def test_config_builds_region_detectors_and_rejects_unknown_args():
    from cnn_apps.tasks import task_class
    from cnn_apps.tasks.region_detection import is_region_detector, region_detector_from_config

    for name, cls in (("rcnn", RCNN), ("sppnet", SPPNet)):
        config = load_config(f"pipelines/configs/shapes_{name}.yaml", [])
        model = region_detector_from_config(config, ["circle", "square", "triangle", "star"])
        assert type(model) is cls and model.image_size == 96 and model.head.nms_iou == 0.3
        assert is_region_detector(name)
        task = task_class(config)(config, spec=None)
        assert not task.exportable
        with pytest.raises(ConfigError, match="outside TensorFlow"):
            task.check_exportable()
    assert not is_region_detector("faster_rcnn")
    bad = load_config("pipelines/configs/shapes_rcnn.yaml", ["model.architecture_args.warp_sise=32"])
    with pytest.raises(ConfigError, match="warp_sise.*Valid keys:.*warp_size"):
        region_detector_from_config(bad, ["a"])
    with pytest.raises(ConfigError, match="valid:"):
        RCNN(2, spp_levels=(1,))  # an SPP-net option is not R-CNN's


@pytest.mark.slow
def test_stages_train_and_evaluate_through_mlflow(tmp_path, monkeypatch):
    from conftest import tiny_overrides

    from cnn_apps import tracking
    from cnn_apps.stages import evaluate, train
    from cnn_apps.stages.prepare import prepare

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = tiny_overrides(
        tmp_path, **{"data.image_size": 64, "data.train_size": 16, "data.val_size": 8, "data.test_size": 8}
    )
    overrides += [
        "task=detection",
        "data.source=shapes",
        "model.architecture=sppnet",
        "model.backbone_args.stage_filters=[8,16,16,32]",
        "model.architecture_args={warp_size: 32, max_proposals: 30, finetune_epochs: 1, "
        "hard_negative_rounds: 1}",
    ]
    config = load_config(None, overrides)
    prep = prepare(config).run_id
    spec = tracking.load_dataset_spec(prep)
    trained = train(config, prep)
    assert "val_map50" in trained.outputs
    assert tracking.load_dataset_spec(trained.run_id).fingerprint == spec.fingerprint
    result = evaluate(config, trained.run_id)
    assert {"test_map50", "test_coco_ap", "test_seconds_per_image", "test_proposal_ms"} <= set(result.outputs)
    run = tracking.get_run(result.run_id)
    assert "test_classify_ms" in run.data.metrics and run.data.tags["source_run"] == trained.run_id


@pytest.mark.parametrize(
    ("backbone", "args", "level", "stride"),
    [
        ("vgg16", {"width": 0.0625}, "pool4", 16),
        ("vgg16", {"width": 0.0625}, "P3", 8),
        ("vgg16", {"width": 0.0625}, "block5_conv3", 16),  # a layer: conv5, SPP-net's map
        ("resnet_mini", {"backbone_args": TINY}, "C3", 8),
    ],
)
def test_sppnet_reads_the_stride_of_any_pyramid_name(backbone, args, level, stride):
    """SPP-net's spatial scale comes from the backbone's pyramid: a P-key, a ResNet's C-name
    or VGG's poolN name (which the level-number parse of old could not read), or from the map
    of a named layer."""
    model = SPPNet(2, ["a", "b"], image_size=64, backbone=backbone, feature_level=level, **args)
    model.classifier = model.build_classifier()
    model._after_finetune()
    assert model.spatial_scale == 1.0 / stride
    assert model._conv_model.output.shape[1] == 64 // stride
