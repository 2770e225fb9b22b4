"""Faster R-CNN: RPN anchor labelling, the multi-task loss, RoI sampling, and the model
(train step, detect, .keras round trip)."""

import numpy as np
import pytest
from keras import ops

from cnn_apps.detection.anchors import AnchorGenerator
from cnn_apps.detection.boxes import BoxCoder
from cnn_apps.detection.matching import IGNORE, NEGATIVE, Matcher
from cnn_apps.detection.roi_head import fast_rcnn_loss, sample_rois
from cnn_apps.detection.rpn import rpn_loss

np_ = ops.convert_to_numpy


def _gt(boxes, labels, n=3):
    b = -np.ones((1, n, 4), np.float32)
    lab = -np.ones((1, n), np.int64)
    if boxes:
        b[0, : len(boxes)] = boxes
        lab[0, : len(labels)] = labels
    return b, lab


def test_rpn_anchor_labels_follow_the_paper():
    anchors = np.array(
        [
            [0, 0, 32, 32],  # IoU 1 with the object: positive
            [0, 0, 32, 24],  # 0.75: positive
            [0, 0, 32, 16],  # 0.5: ignored (between 0.3 and 0.7)
            [0, 0, 32, 8],  # 0.25: negative
            [40, 40, 50, 50],
        ],
        np.float32,
    )  # 0: negative
    gt, labels = _gt([[0, 0, 32, 32]], [1])
    matched, _ = Matcher(0.7, 0.3, force_best=True)(anchors, gt, labels)
    assert np_(matched).tolist() == [[0, 0, IGNORE, NEGATIVE, NEGATIVE]]
    # a small object below 0.7 everywhere still gets its best anchor
    gt2, labels2 = _gt([[41, 41, 47, 47]], [0])
    matched, _ = Matcher(0.7, 0.3, force_best=True)(anchors, gt2, labels2)
    assert np_(matched)[0, 4] == 0


def test_rpn_loss_samples_and_ignores():
    gen = AnchorGenerator(sizes=(16, 32), aspect_ratios=(1.0,))
    anchors = gen(4, 4, stride=16)  # 32 anchors on a 64 px image
    gt, labels = _gt([[8, 8, 40, 40]], [2])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, len(anchors))).astype(np.float32)
    deltas = rng.normal(size=(1, len(anchors), 4)).astype(np.float32)
    parts = rpn_loss(
        logits,
        deltas,
        anchors,
        gt,
        labels,
        matcher=Matcher(0.7, 0.3),
        coder=BoxCoder(),
        batch_size_per_image=8,
        positive_fraction=0.5,
        seed=1,
    )
    assert float(np_(parts["rpn_objectness"])) > 0 and float(np_(parts["rpn_box"])) > 0
    empty, no_labels = _gt([], [])
    parts = rpn_loss(
        logits,
        deltas,
        anchors,
        empty,
        no_labels,
        matcher=Matcher(0.7, 0.3),
        coder=BoxCoder(),
        batch_size_per_image=8,
        seed=1,
    )
    assert float(np_(parts["rpn_box"])) == 0.0 and float(np_(parts["rpn_objectness"])) > 0


def test_background_rois_contribute_no_box_loss():
    coder = BoxCoder((10, 10, 5, 5))
    rois = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], np.float32)
    targets = np.array([[[1, 1, 11, 11], [0, 0, 0, 0]]], np.float32)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 2, 4)).astype(np.float32)
    deltas = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
    weights = np.ones((1, 2), np.float32)
    background = fast_rcnn_loss(logits, deltas, rois, np.array([[0, 0]]), targets, weights, coder=coder)
    assert float(np_(background["box"])) == 0.0 and float(np_(background["classification"])) > 0
    foreground = fast_rcnn_loss(logits, deltas, rois, np.array([[2, 0]]), targets, weights, coder=coder)
    assert float(np_(foreground["box"])) > 0
    # only the true class's deltas count: changing another class's deltas changes nothing
    other = deltas.copy()
    other[0, 0, 0] += 5.0  # class 0's deltas; the RoI's class is 2 (index 1)
    same = fast_rcnn_loss(logits, other, rois, np.array([[2, 0]]), targets, weights, coder=coder)
    assert float(np_(same["box"])) == pytest.approx(float(np_(foreground["box"])))


def test_roi_sampling_fixed_size_with_ground_truth_added():
    proposals = np.array([[[0, 0, 10, 10], [30, 30, 40, 40], [0, 0, 0, 0]]], np.float32)
    gt, labels = _gt([[1, 1, 11, 11]], [1])
    rois, roi_labels, targets, weights = sample_rois(
        proposals,
        gt,
        labels,
        matcher=Matcher(0.5, force_best=False),
        batch_size_per_image=4,
        positive_fraction=0.5,
        seed=3,
    )
    rois, roi_labels, weights = np_(rois), np_(roi_labels), np_(weights)
    assert rois.shape == (1, 4, 4) and weights.tolist() == [[1, 1, 1, 0]]  # 3 valid candidates
    assert sorted(roi_labels[0, :3].tolist()) == [0, 2, 2]  # the GT box itself and the overlapping proposal
    assert roi_labels[0, 0] == 2  # foreground first


TINY = {
    "backbone_args": {"stage_filters": [8, 16, 16, 32]},
    "rpn_filters": 16,
    "head_units": [32],
    "rpn_post_nms_top_k": 20,
    "roi_batch_per_image": 16,
    "anchor_sizes": [16, 32],
    "postprocess": {"score_threshold": 0.0},
}


def test_faster_rcnn_trains_detects_and_reloads(tmp_path):
    import keras

    from cnn_apps.data.shapes import make_scene
    from cnn_apps.detection.faster_rcnn import FasterRCNN

    scenes = [make_scene(0, "train", i, 64, "detection") for i in range(4)]
    images = np.stack([s.image for s in scenes]).astype(np.float32)
    boxes = -np.ones((4, 4, 4), np.float32)
    labels = -np.ones((4, 4), np.int64)
    for i, s in enumerate(scenes):
        boxes[i, : len(s.boxes)] = s.boxes
        labels[i, : len(s.labels)] = s.labels
    model = FasterRCNN(4, image_size=64, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images, {"boxes": boxes, "labels": labels}, epochs=6, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert {"rpn_objectness_loss", "rpn_box_loss", "classification_loss", "box_loss"} <= set(history.history)
    out = model.predict(images, verbose=0)
    assert out["boxes"].shape == (4, 100, 4) and (out["num_detections"] > 0).all()
    path = tmp_path / "frcnn.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    assert again.get_config() == model.get_config()
    np.testing.assert_allclose(again.predict(images, verbose=0)["scores"], out["scores"], atol=1e-5)


def test_fast_and_faster_rcnn_share_one_two_stage_base():
    import inspect

    import keras

    from cnn_apps.detection.detector import Detector
    from cnn_apps.detection.fast_rcnn import FastRCNN
    from cnn_apps.detection.faster_rcnn import FasterRCNN
    from cnn_apps.detection.two_stage import TwoStageDetector

    for cls in (FastRCNN, FasterRCNN):
        assert issubclass(cls, TwoStageDetector) and issubclass(cls, Detector)
        # post-processing, config and the RoI loss live once, in the base
        assert not {"postprocess_outputs", "get_config", "roi_losses"} & set(vars(cls))
    model = FasterRCNN(4, image_size=64, **TINY)
    params = set(inspect.signature(FasterRCNN.__init__).parameters) - {"self", "kwargs"}
    assert set(model.get_config()) == params | {"name", "trainable"}  # every constructor argument
    assert model.feature_shape == (8, 8, 16)  # C3 = P3: stride 8, the third stage's 16 filters
    # the feature map by stride (P3) or by the backbone family's name (C3): the same model
    by_stride = FasterRCNN(4, image_size=64, **{**TINY, "feature_level": "P3"})
    assert by_stride.count_params() == model.count_params() and by_stride.feature_shape == model.feature_shape
    np.testing.assert_array_equal(by_stride.anchors, model.anchors)

    # the RoI part of the loss is roi_head.sample_rois + fast_rcnn_loss, seeded by the model's seed
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {
        "boxes": np.array(
            [[[4, 4, 30, 30], [-1, -1, -1, -1]], [[20, 10, 60, 50], [0, 0, 12, 12]]], "float32"
        ),
        "labels": np.array([[1, -1], [2, 0]], "int32"),
    }
    y_pred = model(images, training=False)
    rois = ops.stop_gradient(y_pred["rois"])
    seed = keras.random.SeedGenerator(TINY.get("seed", 0))
    sampled = sample_rois(
        rois, ops.convert_to_tensor(y["boxes"]), ops.convert_to_tensor(y["labels"]),
        matcher=Matcher(0.5, force_best=False), batch_size_per_image=16, positive_fraction=0.25, seed=seed,
    )  # fmt: skip
    logits, deltas = model.roi_head([y_pred["features"], sampled[0]], training=True)
    want = fast_rcnn_loss(logits, deltas, *sampled, coder=BoxCoder((10.0, 10.0, 5.0, 5.0)))
    got = model.roi_losses(rois, y, y_pred)
    for name in ("classification", "box"):
        np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=1e-6)
