"""Detection metrics: parity with pycocotools' COCOeval and hand-computed VOC cases."""

import contextlib
import csv
import io
import math

import numpy as np
import pytest

from cnn_apps.detection.evaluation import evaluate_detections, voc_ap
from cnn_apps.errors import DataError


def gt(boxes, labels, iscrowd=None):
    out = {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int32)}
    if iscrowd is not None:
        out["iscrowd"] = np.asarray(iscrowd, np.int32)
    return out


def det(boxes, scores, labels):
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "labels": np.asarray(labels, np.int32),
    }


def coco_reference(ground_truth, detections, num_classes):
    """pycocotools on the same data: image id = index + 1, category id = label + 1, area = w * h."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    anns = []
    for i, g in enumerate(ground_truth):
        crowd = g.get("iscrowd", np.zeros(len(g["labels"])))
        for box, label, c in zip(g["boxes"], g["labels"], crowd):
            if label >= 0:
                b = xywh(box)
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": int(label) + 1,
                        "bbox": b,
                        "area": b[2] * b[3],
                        "iscrowd": int(c),
                    }
                )
    results = [
        {"image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh(box), "score": float(score)}
        for i, d in enumerate(detections)
        for box, score, label in zip(d["boxes"], d["scores"], d["labels"])
        if label >= 0
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1, "width": 640, "height": 640} for i in range(len(ground_truth))],
            "annotations": anns,
            "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)  # an empty list fails in loadRes: fixtures always detect something
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_coco_parity(ground_truth, detections, num_classes):
    ours = evaluate_detections(ground_truth, detections, num_classes)
    ref = coco_reference(ground_truth, detections, num_classes)
    expected = np.where(np.asarray(ref.stats) == -1, np.nan, ref.stats)
    # AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100 (and ARs, ARm, ARl)
    np.testing.assert_allclose(ours.coco_stats, expected, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(ours.coco_precision, ref.eval["precision"], atol=1e-4)
    np.testing.assert_allclose(ours.coco_recall, ref.eval["recall"], atol=1e-4)
    return ours, ref


def mixed_fixture():
    """4 classes: every size range, images without GT or detections, ties, a class without GT."""
    small, medium, large = [10, 10, 20, 20], [40, 40, 90, 80], [100, 100, 230, 220]
    ground_truth = [
        gt(
            [small, medium, large, [300, 300, 332, 332], [-1, -1, -1, -1]], [0, 1, 2, 0, -1]
        ),  # 32x32: both small and medium
        gt([medium, [200, 50, 260, 110]], [1, 1]),  # no detections
        gt([], []),  # no GT
        gt([small, [12, 11, 21, 22], large], [0, 0, 2]),
        gt([medium], [1]),
    ]
    detections = [
        det(
            [
                [11, 10, 20, 21],
                [40, 42, 90, 80],
                [41, 40, 88, 82],
                [105, 98, 228, 222],
                [301, 299, 331, 333],
                [0, 0, 5, 5],
                [0, 0, 0, 0],
            ],
            [0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.1],
            [0, 1, 1, 2, 0, 3, -1],
        ),  # a duplicate, a tie, class 3, padding
        det([], [], []),
        det([[50, 50, 60, 60], [400, 400, 520, 520]], [0.8, 0.9], [0, 2]),  # false positives, no GT
        det(
            [[10, 10, 20, 20], [11, 11, 21, 21], [100, 100, 230, 220], [0, 0, 200, 200]],
            [0.8, 0.8, 0.6, 0.8],
            [0, 0, 2, 3],
        ),  # ties across and within images
        det([[40, 40, 90, 80]], [0.5], [1]),
    ]
    return ground_truth, detections


def random_fixture(seed=0, images=30, classes=3):
    """Jittered GT plus false positives, scores rounded to 2 decimals so that ties happen."""
    rng = np.random.default_rng(seed)
    ground_truth, detections = [], []
    for i in range(images):
        n = 0 if i % 7 == 3 else int(rng.integers(1, 6))
        wh = np.exp(rng.uniform(np.log(6), np.log(200), (n, 2)))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, classes, n)
        ground_truth.append(gt(boxes, labels))
        if i % 11 == 5:  # an image with GT but no detections
            detections.append(det([], [], []))
            continue
        keep = rng.random(n) < 0.8
        jitter = boxes[keep] + rng.normal(0, 0.06, (int(keep.sum()), 4)) * np.repeat(
            wh[keep], 2, axis=0
        ).reshape(-1, 4)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        det_labels = np.where(rng.random(len(jitter)) < 0.1, (labels[keep] + 1) % classes, labels[keep])
        m = int(rng.integers(0, 6)) if i != 10 else 120  # one image over maxDets=100
        fp_xy = rng.uniform(0, 400, (m, 2))
        fp = np.concatenate([fp_xy, fp_xy + np.exp(rng.uniform(np.log(6), np.log(200), (m, 2)))], axis=1)
        all_boxes = np.concatenate([jitter, fp, jitter[:1]])  # plus one duplicate
        all_labels = np.concatenate([det_labels, rng.integers(0, classes, m), det_labels[:1]])
        scores = np.round(rng.uniform(0.05, 1.0, len(all_boxes)), 2)
        scores[: len(jitter)] = np.round(np.clip(scores[: len(jitter)] + 0.3, 0, 1), 2)
        detections.append(det(all_boxes, scores, all_labels))
    return ground_truth, detections


def test_coco_parity_mixed_fixture():
    ours, ref = assert_coco_parity(*mixed_fixture(), num_classes=4)
    assert ref.eval["precision"][0, 0, 3, 0, 2] == -1  # class 3 has detections but no GT ...
    assert math.isnan(ours.per_class[3]["coco_ap"]) and math.isnan(ours.per_class[3]["ap50"])
    assert ours.per_class[3]["num_det"] == 2 and ours.per_class[3]["num_gt"] == 0
    assert not math.isnan(ours.coco_ap_small) and not math.isnan(ours.coco_ap_large)


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_parity_random_fixture(seed):
    ours, _ = assert_coco_parity(*random_fixture(seed), num_classes=3)
    assert 0.2 < ours.coco_ap < 0.95  # neither trivial nor hopeless


def test_coco_parity_crowd():
    ground_truth = [
        gt([[0, 0, 100, 100], [10, 10, 40, 40], [200, 200, 240, 260]], [0, 0, 0], iscrowd=[1, 0, 0]),
        gt([[5, 5, 50, 50]], [0]),
    ]
    detections = [
        det(
            [[10, 10, 40, 41], [20, 20, 60, 60], [60, 60, 90, 90], [200, 200, 241, 259]],
            [0.9, 0.8, 0.7, 0.6],
            [0, 0, 0, 0],
        ),
        det([[5, 5, 50, 50], [5, 6, 50, 50]], [0.7, 0.7], [0, 0]),
    ]
    ours, _ = assert_coco_parity(ground_truth, detections, num_classes=1)
    assert ours.per_class[0]["num_gt"] == 3


def test_no_detections_at_all():
    ground_truth, _ = mixed_fixture()
    result = evaluate_detections(ground_truth, [det([], [], [])] * len(ground_truth), num_classes=4)
    assert result.map50 == 0 and result.coco_ap == 0 and result.coco_ar100 == 0
    assert math.isnan(result.per_class[3]["ap50"])


def voc_reference(ground_truth, detections, k):
    """A loop-by-loop transcription of py-faster-rcnn's voc_eval (continuous IoU, >= 0.5, stable sort)."""
    records = [
        {"bbox": g["boxes"][g["labels"] == k].astype(float), "det": [False] * int((g["labels"] == k).sum())}
        for g in ground_truth
    ]
    npos = sum(len(r["det"]) for r in records)
    ids, conf, bbs = [], [], []
    for i, d in enumerate(detections):
        for box, score, label in zip(d["boxes"], d["scores"], d["labels"]):
            if label == k:
                ids.append(i), conf.append(float(score)), bbs.append(box.astype(float))
    order = np.argsort(-np.asarray(conf), kind="mergesort")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, j in enumerate(order):
        R, bb, ovmax = records[ids[j]], bbs[j], -np.inf
        if R["bbox"].size:
            g = R["bbox"]
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]), 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]), 0.0)
            inters = iw * ih
            uni = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inters
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax >= 0.5 and not R["det"][jmax]:
            tp[d], R["det"][jmax] = 1.0, True
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec), voc_ap(rec, prec, use_07_metric=True)


@pytest.mark.parametrize("fixture", [mixed_fixture, random_fixture])
def test_voc_matches_devkit_transcription(fixture):
    ground_truth, detections = fixture()
    classes = 4 if fixture is mixed_fixture else 3
    result = evaluate_detections(ground_truth, detections, classes)
    for k in range(3):  # class 3 of the mixed fixture has no GT
        ap, ap07 = voc_reference(ground_truth, detections, k)
        assert result.per_class[k]["ap50"] == pytest.approx(ap, abs=1e-12)
        assert result.per_class[k]["ap50_voc07"] == pytest.approx(ap07, abs=1e-12)


def test_voc_tp_fp_tp_by_hand():
    # 2 GT; ranked TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3
    ground_truth = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    detections = [det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])]
    result = evaluate_detections(ground_truth, detections, 1, class_names=["square"])
    assert result.map50 == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result.map50_voc07 == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    recall, precision = result.pr_curves["square"]
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])


def test_voc_duplicate_is_false_positive():
    # the second detection of GT A ranks above B's detection: same curve as TP, FP, TP
    ground_truth = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    detections = [det([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])]
    result = evaluate_detections(ground_truth, detections, 1)
    assert result.map50 == pytest.approx(5 / 6)


def test_voc_takes_best_gt_even_if_taken():
    # devkit rule: the second detection's best GT is A (taken) -> FP, although its IoU with B is 0.6;
    # COCOeval instead matches it to the free B.
    a, b = [0, 0, 10, 10], [0, 4, 10, 14]
    ground_truth = [gt([a, b], [0, 0])]
    detections = [det([a, [0, 1, 10, 11]], [0.9, 0.8], [0, 0])]  # IoU with a: 9/11, with b: 7/13 >= 0.5
    result = evaluate_detections(ground_truth, detections, 1)
    np.testing.assert_allclose(result.pr_curves["0"][0], [0.5, 0.5])
    assert result.coco_ap50 == pytest.approx(1.0)


def test_voc_crowd_counts_as_difficult():
    # a hit on a crowd box is neither TP nor FP, and the crowd box is not counted as GT
    ground_truth = [gt([[0, 0, 10, 10], [50, 50, 90, 90]], [0, 0], iscrowd=[0, 1])]
    detections = [det([[50, 50, 90, 90], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    result = evaluate_detections(ground_truth, detections, 1)
    assert result.map50 == 1.0 and result.per_class[0]["num_gt"] == 1
    np.testing.assert_allclose(result.pr_curves["0"][0], [0.0, 1.0])


def test_perfect_detector_and_padding():
    ground_truth, _ = mixed_fixture()
    detections = [det(g["boxes"], np.linspace(1, 0.5, len(g["labels"])), g["labels"]) for g in ground_truth]
    result = evaluate_detections(ground_truth, detections, 4)  # the -1 rows of image 0 are padding
    assert result.map50 == 1.0 and result.map50_voc07 == pytest.approx(1.0)
    assert result.coco_ap == pytest.approx(1.0) and result.coco_ar100 == pytest.approx(1.0)
    assert [r["num_gt"] for r in result.per_class] == [4, 4, 2, 0]


def test_iou_exactly_half_is_a_match():
    result = evaluate_detections([gt([[0, 0, 10, 10]], [0])], [det([[0, 0, 10, 5]], [0.5], [0])], 1)
    assert result.map50 == 1.0 and result.coco_ap50 == pytest.approx(1.0)


def test_batched_padded_input():
    ground_truth = {
        "boxes": np.array([[[0, 0, 10, 10], [-1, -1, -1, -1]], [[5, 5, 9, 9], [20, 20, 30, 30]]], np.float32),
        "labels": np.array([[0, -1], [1, 0]]),
    }
    detections = {
        "boxes": np.array([[[0, 0, 10, 10], [0, 0, 10, 10]], [[5, 5, 9, 9], [0, 0, 1, 1]]], np.float32),
        "scores": np.array([[0.9, 0.8], [0.7, 0.6]], np.float32),
        "labels": np.array([[0, 0], [1, 1]]),
        "num_detections": np.array([1, 1]),
    }
    result = evaluate_detections(ground_truth, detections, 2)
    assert [r["num_det"] for r in result.per_class] == [1, 1]
    assert result.per_class[0]["ap50"] == pytest.approx(0.5) and result.per_class[1]["ap50"] == 1.0


def test_outputs_and_errors():
    result = evaluate_detections(*mixed_fixture(), 4, class_names=["a", "b", "c", "d"])
    assert list(result.metrics()) == [
        "test_map50",
        "test_map50_voc07",
        "test_coco_ap",
        "test_coco_ap50",
        "test_coco_ap75",
        "test_coco_ap_small",
        "test_coco_ap_medium",
        "test_coco_ap_large",
        "test_coco_ar1",
        "test_coco_ar10",
        "test_coco_ar100",
        "test_coco_ar_small",
        "test_coco_ar_medium",
        "test_coco_ar_large",
    ]
    assert all(isinstance(v, float) for v in result.metrics("val_").values())
    rows = list(csv.DictReader(io.StringIO(result.per_class_table())))
    assert [r["class"] for r in rows] == ["a", "b", "c", "d"] and rows[3]["ap50"] == "nan"
    assert "| d |" in result.markdown() and "COCO AP@[.5:.95]" in result.markdown()
    assert set(result.pr_curves) == {"a", "b", "c"}
    with pytest.raises(DataError, match="num_classes"):
        evaluate_detections(*mixed_fixture(), 3)
    with pytest.raises(DataError, match="2 images"):
        evaluate_detections(mixed_fixture()[0][:2], mixed_fixture()[1], 4)


def test_plots(tmp_path):
    from cnn_apps import plots

    ground_truth, detections = mixed_fixture()
    result = evaluate_detections(ground_truth, detections, 4, class_names=["a", "b", "c", "d"])
    plots.pr_curves(result.pr_curves).savefig(tmp_path / "pr.png")
    images = np.zeros((2, 64, 64, 3), np.uint8)
    true = [gt([[4, 4, 30, 30]], [0]), gt([], [])]
    pred = [det([[5, 5, 31, 29]], [0.87], [0]), det([[10, 10, 20, 20]], [0.4], [1])]
    plots.detection_grid(images, true, pred, ["a", "b"], title="t").savefig(tmp_path / "grid.png")
    assert (tmp_path / "pr.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0
