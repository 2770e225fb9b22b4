"""The detection toolkit: boxes, coder, anchors, matcher, mining, NMS, losses."""

import numpy as np
import pytest
from keras import ops

from cnn_apps.detection import anchors as anchors_mod
from cnn_apps.detection.boxes import BoxCoder, convert, pairwise_iou
from cnn_apps.detection.losses import smooth_l1, ssd_multibox_loss, yolo_v1_loss
from cnn_apps.detection.matching import IGNORE, NEGATIVE, Matcher, gather_matched, hard_negative_mining
from cnn_apps.detection.nms import batched_nms

np_ = ops.convert_to_numpy


def test_iou_hand_computed():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    b = np.array([[0, 0, 10, 10], [0, 0, 5, 5], [20, 20, 30, 30], [5, 0, 15, 10]], np.float32)
    iou = np_(pairwise_iou(a, b))
    expected = np.array([[1.0, 25 / 100, 0.0, 50 / 150], [25 / 175, 0.0, 0.0, 50 / 150]])
    np.testing.assert_allclose(iou, expected, rtol=1e-6)
    # padded boxes (-1) overlap nothing; batched leading axes work
    pad = -np.ones((1, 4), np.float32)
    assert np_(pairwise_iou(a, pad)).max() == 0.0
    assert np_(pairwise_iou(a[None, None], b[None, None])).shape == (1, 1, 2, 4)


def test_convert_formats():
    xyxy = np.array([[2.0, 4.0, 12.0, 8.0]], np.float32)
    np.testing.assert_allclose(np_(convert(xyxy, "xyxy", "xywh")), [[2, 4, 10, 4]])
    np.testing.assert_allclose(np_(convert(xyxy, "xyxy", "yxyx")), [[4, 2, 8, 12]])
    np.testing.assert_allclose(np_(convert(xyxy, "xyxy", "center_xywh")), [[7, 6, 10, 4]])


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10, 10, 5, 5)])
def test_coder_round_trip(weights):
    rng = np.random.default_rng(0)
    anchors = rng.uniform(0, 50, (64, 2)).astype(np.float32)
    anchors = np.concatenate([anchors, anchors + rng.uniform(4, 40, (64, 2))], 1).astype(np.float32)
    boxes = np.concatenate(
        [anchors[:, :2] + rng.normal(0, 3, (64, 2)), anchors[:, 2:] + rng.normal(0, 3, (64, 2))], 1
    ).astype(np.float32)
    coder = BoxCoder(weights)
    deltas = coder.encode(boxes[None], anchors)
    np.testing.assert_allclose(np_(coder.decode(deltas, anchors))[0], boxes, atol=1e-3)
    # a known case: the same box gives zero deltas, twice the width gives w_w * log 2
    d = np_(coder.encode(np.array([[0, 0, 20, 10]], np.float32), np.array([[0, 0, 10, 10]], np.float32)))
    np.testing.assert_allclose(d, [[weights[0] * 0.5, 0, weights[2] * np.log(2), 0]], rtol=1e-5)


def test_coder_clips_huge_scales():
    coder = BoxCoder((1, 1, 1, 1), scale_clip=np.log(1000 / 16))
    out = np_(coder.decode(np.array([[0, 0, 50, 50]], np.float32), np.array([[0, 0, 16, 16]], np.float32)))
    assert np.isfinite(out).all() and out[0, 2] - out[0, 0] <= 1000 + 1e-3


def test_matcher_thresholds_and_forced_matches():
    anchors = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 4.5], [0, 0, 10, 2], [50, 50, 60, 60]], np.float32
    )
    gt = np.array([[[0, 0, 10, 10], [-1, -1, -1, -1]]], np.float32)
    labels = np.array([[2, -1]])
    # IoUs with the object: 1.0, 0.8, 0.45, 0.2, 0
    matched, iou = Matcher(high=0.7, low=0.3, force_best=False)(anchors, gt, labels)
    assert np_(matched).tolist() == [[0, 0, IGNORE, NEGATIVE, NEGATIVE]]
    matched, _ = Matcher(high=0.5, force_best=False)(anchors, gt, labels)
    assert np_(matched).tolist() == [[0, 0, NEGATIVE, NEGATIVE, NEGATIVE]]
    # an object no anchor overlaps at 0.5 still gets its best anchor
    small = np.array([[[52, 52, 55, 55], [-1, -1, -1, -1]]], np.float32)
    matched, _ = Matcher(high=0.5, force_best=True)(anchors, small, labels)
    assert np_(matched).tolist() == [[NEGATIVE] * 4 + [0]]
    boxes, tl = gather_matched(small, labels, matched)
    assert np_(tl).tolist() == [[NEGATIVE] * 4 + [2]]
    np.testing.assert_allclose(np_(boxes)[0, 4], small[0, 0])
    # an image without objects: every anchor is background
    matched, _ = Matcher(0.5)(anchors, -np.ones((1, 2, 4), np.float32), -np.ones((1, 2)))
    assert (np_(matched) == NEGATIVE).all()


def test_hard_negative_mining_keeps_three_per_positive():
    loss = np.array([[0.1, 0.9, 0.5, 0.3, 0.8, 0.7, 0.2, 5.0]], np.float32)
    positive = np.array([[False] * 7 + [True]])
    kept = np_(hard_negative_mining(loss, positive, ~positive, ratio=3))
    assert kept.tolist() == [[False, True, False, False, True, True, False, False]]
    none = np_(hard_negative_mining(loss, np.zeros_like(positive), np.ones_like(positive), ratio=3))
    assert not none.any()


def _brute_force_nms(boxes, scores, iou_thr, score_thr, max_det):
    out = []
    for c in range(scores.shape[1]):
        order = [i for i in np.argsort(-scores[:, c], kind="stable") if scores[i, c] > score_thr]
        kept = []
        for i in order:
            if all(np_(pairwise_iou(boxes[i : i + 1], boxes[j : j + 1]))[0, 0] <= iou_thr for j in kept):
                kept.append(i)
        out += [(scores[i, c], c, tuple(boxes[i])) for i in kept]
    out.sort(key=lambda t: -t[0])
    return out[:max_det]


@pytest.mark.parametrize("implementation", ["tf", "portable", "numpy"])
def test_nms_matches_brute_force(implementation):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 80, (2, 60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (2, 60, 2))], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (2, 60, 3)).astype(np.float32)
    out = {
        k: np_(v)
        for k, v in batched_nms(
            boxes,
            scores,
            max_detections=20,
            iou_threshold=0.4,
            score_threshold=0.3,
            pre_nms_top_k=60,
            implementation=implementation,
        ).items()
    }
    assert out["boxes"].shape == (2, 20, 4) and out["labels"].dtype == np.int32
    for b in range(2):
        ref = _brute_force_nms(boxes[b], scores[b], 0.4, 0.3, 20)
        n = int(out["num_detections"][b])
        assert n == len(ref)
        np.testing.assert_allclose(out["scores"][b, :n], [r[0] for r in ref], rtol=1e-6)
        assert out["labels"][b, :n].tolist() == [r[1] for r in ref]
        np.testing.assert_allclose(out["boxes"][b, :n], [r[2] for r in ref], rtol=1e-5)
        assert (out["labels"][b, n:] == -1).all() and (out["scores"][b, n:] == 0).all()


def test_numpy_nms_caps_each_class_as_tensorflow_does():
    """Many overlapping candidates per class and a small per-class cap: the NumPy NMS (used by
    R-CNN's head where TensorFlow is absent) keeps what TF's combined NMS keeps."""
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 200, (1, 300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 80, (1, 300, 2))], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (1, 300, 4)).astype(np.float32)
    kw = dict(max_detections=15, iou_threshold=0.5, score_threshold=0.2, pre_nms_top_k=6)
    ours = batched_nms(boxes, scores, implementation="numpy", **kw)
    theirs = {k: np_(v) for k, v in batched_nms(boxes, scores, implementation="tf", **kw).items()}
    assert int(ours["num_detections"][0]) == int(theirs["num_detections"][0]) == 15
    assert np.bincount(ours["labels"][0], minlength=4).max() <= 6
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)


def test_nms_with_nothing_above_threshold():
    boxes = np.zeros((1, 5, 4), np.float32)
    scores = np.full((1, 5, 2), 0.01, np.float32)
    for impl in ("tf", "portable", "numpy"):
        out = batched_nms(boxes, scores, max_detections=10, score_threshold=0.05, implementation=impl)
        assert int(np_(out["num_detections"])[0]) == 0 and (np_(out["labels"]) == -1).all()


def test_smooth_l1():
    np.testing.assert_allclose(np_(smooth_l1(np.array([0.0, 0.5, -2.0], np.float32))), [0, 0.125, 1.5])


def test_ssd_default_boxes_follow_the_paper():
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    boxes = anchors_mod.ssd_default_boxes(
        300, [38, 19, 10, 5, 3, 1], ratios, anchors_mod.ssd_scales(6, 0.2, 0.9, first=0.1)
    )
    assert boxes.shape == (8732, 4)
    # the first location of conv4_3: aspect 1 at scale 0.1 (30 px) centred at (300/76, 300/76)
    c = 300 / 38 / 2
    np.testing.assert_allclose(boxes[0], np.clip([c - 15, c - 15, c + 15, c + 15], 0, 300), rtol=1e-5)
    scales = anchors_mod.ssd_scales(5, 0.2, 0.9, first=None)
    np.testing.assert_allclose(scales[:5], [0.2, 0.375, 0.55, 0.725, 0.9])
    # the aspect-2 box is twice as wide as high
    w, h = boxes[2, 2] - boxes[2, 0], boxes[2, 3] - boxes[2, 1]
    unclipped = anchors_mod.ssd_default_boxes(300, [38], [[2]], [0.1, 0.2], clip=False)
    w, h = unclipped[2, 2] - unclipped[2, 0], unclipped[2, 3] - unclipped[2, 1]
    np.testing.assert_allclose(w / h, 2.0, rtol=1e-5)


def test_rpn_anchors():
    gen = anchors_mod.AnchorGenerator(sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0))
    a = gen(2, 3, stride=16)
    assert a.shape == (2 * 3 * 6, 4)
    areas = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    np.testing.assert_allclose(sorted(set(np.round(areas))), [32**2, 64**2], rtol=1e-4)
    np.testing.assert_allclose((a[:6, :2] + a[:6, 2:]) / 2, [[8, 8]] * 6)


def _padded(boxes, labels, n=4):
    b = -np.ones((1, n, 4), np.float32)
    lab = -np.ones((1, n), np.int64)
    if len(boxes):
        b[0, : len(boxes)] = boxes
        lab[0, : len(labels)] = labels
    return b, lab


def test_empty_image_gives_zero_box_loss():
    empty_b, empty_l = _padded([], [])
    anchors = anchors_mod.ssd_default_boxes(64, [4, 2], [[2], [2]], [0.2, 0.5, 0.8])
    a = len(anchors)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, a, 3)).astype(np.float32)
    deltas = rng.normal(size=(1, a, 4)).astype(np.float32)
    parts = ssd_multibox_loss(
        logits, deltas, anchors, empty_b, empty_l, matcher=Matcher(0.5), coder=BoxCoder((10, 10, 5, 5))
    )
    assert float(np_(parts["box"])) == 0.0 and float(np_(parts["classification"])) == 0.0
    obj_b, obj_l = _padded([[10, 10, 30, 30]], [1])
    parts = ssd_multibox_loss(
        logits, deltas, anchors, obj_b, obj_l, matcher=Matcher(0.5), coder=BoxCoder((10, 10, 5, 5))
    )
    assert float(np_(parts["box"])) > 0

    offsets = anchors_mod.yolo_cell_offsets(7)
    pred = rng.uniform(size=(1, 7, 7, 5 * 2 + 3)).astype(np.float32)
    parts = yolo_v1_loss(
        pred, empty_b, empty_l, image_size=112.0, grid=7, num_boxes=2, num_classes=3, offsets=offsets
    )
    assert float(np_(parts["box"])) == 0.0 and float(np_(parts["classification"])) == 0.0
    assert float(np_(parts["no_object"])) > 0  # every predictor is told "no object"


def test_yolo_loss_is_zero_for_a_perfect_prediction():
    offsets = anchors_mod.yolo_cell_offsets(7)
    b, lab = _padded([[16, 16, 48, 40]], [2])  # centre (32, 28): cell column 2, row 1 at 16 px cells
    pred = np.zeros((1, 7, 7, 5 * 2 + 3), np.float32)
    cell = pred[0, 1, 2]
    cell[0:4] = [0.0, 0.75, np.sqrt(32 / 112), np.sqrt(24 / 112)]  # x, y in the cell; sqrt w, h
    cell[4] = 1.0  # confidence = IoU of a perfect box
    cell[10 + 2] = 1.0
    parts = yolo_v1_loss(pred, b, lab, image_size=112.0, grid=7, num_boxes=2, num_classes=3, offsets=offsets)
    for name, value in parts.items():
        assert float(np_(value)) == pytest.approx(0.0, abs=1e-5), name
