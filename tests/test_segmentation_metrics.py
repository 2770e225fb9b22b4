"""Segmentation metrics: hand-computed FCN metrics, sklearn parity, ignore label, streaming."""

import csv
import io
import math

import numpy as np
import pytest

from cnn_apps.errors import DataError
from cnn_apps.segmentation.metrics import (
    ConfusionMatrix,
    SegmentationMetrics,
    evaluate_segmentation,
    logits_to_class_map,
    segmentation_metrics,
)

# 4x4 example, K = 3. Truth: class 0 top-left, 1 top-right, 2 the bottom half.
TRUTH = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 2, 1, 2], [2, 2, 2, 2]])
# rows truth, columns prediction:
#   truth 0 (4 px): 3 -> 0, 1 -> 1        t_0 = 4
#   truth 1 (4 px): 1 -> 0, 3 -> 1        t_1 = 4
#   truth 2 (8 px): 1 -> 1, 7 -> 2        t_2 = 8
# column sums (predicted pixels) 4, 5, 7
HAND = np.array([[3, 1, 0], [1, 3, 0], [0, 1, 7]])


def matrix_of(truth, pred, k, ignore_label=255):
    return ConfusionMatrix(k, ignore_label).update(truth, pred).matrix


def random_masks(rng, shape, k):
    truth = rng.integers(0, k, shape)
    pred = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, k, shape))  # mostly right
    return truth, pred


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(TRUTH, PRED)
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, HAND)
    cm.reset()
    np.testing.assert_array_equal(cm.matrix, np.zeros((3, 3)))


def test_metrics_by_hand():
    m = evaluate_segmentation([TRUTH], [PRED], 3, ["bg", "a", "b"])
    assert isinstance(m, SegmentationMetrics)
    # pixel accuracy = (3 + 3 + 7) / 16
    assert m.pixel_accuracy == pytest.approx(13 / 16)
    # mean accuracy = (3/4 + 3/4 + 7/8) / 3
    assert m.mean_accuracy == pytest.approx((0.75 + 0.75 + 0.875) / 3)
    # IoU: 3 / (4 + 4 - 3) = 0.6, 3 / (4 + 5 - 3) = 0.5, 7 / (8 + 7 - 7) = 0.875
    assert m.per_class_iou == pytest.approx({"bg": 0.6, "a": 0.5, "b": 0.875})
    assert m.miou == pytest.approx((0.6 + 0.5 + 0.875) / 3)  # 0.658333
    # frequency weighted: (4 * 0.6 + 4 * 0.5 + 8 * 0.875) / 16 = 11.4 / 16
    assert m.frequency_weighted_iou == pytest.approx(11.4 / 16)
    assert m.num_pixels == 16
    np.testing.assert_array_equal(m.confusion, HAND)
    assert m.per_class_accuracy == pytest.approx({"bg": 0.75, "a": 0.75, "b": 0.875})


def test_absent_class_is_nan_and_predicted_only_class_counts():
    pred = PRED.copy()
    pred[3, 3] = 4  # class 4 predicted once, never true; class 3 nowhere
    m = evaluate_segmentation([TRUTH], [pred], 5)
    # truth 2 now: 6 -> 2, 1 -> 1, 1 -> 4; IoU_2 = 6 / (8 + 6 - 6) = 0.75; IoU_4 = 0 / (0 + 1 - 0)
    assert math.isnan(m.per_class_iou["3"])
    assert m.per_class_iou["4"] == 0.0
    assert m.miou == pytest.approx((0.6 + 0.5 + 0.75 + 0.0) / 4)  # class 3 left out, class 4 in
    assert m.mean_accuracy == pytest.approx((0.75 + 0.75 + 0.75) / 3)  # classes in the truth only
    assert m.pixel_accuracy == pytest.approx(12 / 16)
    assert m.frequency_weighted_iou == pytest.approx((4 * 0.6 + 4 * 0.5 + 8 * 0.75) / 16)
    assert math.isnan(m.per_class_accuracy["4"]) and math.isnan(m.per_class_accuracy["3"])


def test_empty_matrix_gives_nan_and_no_metrics():
    m = segmentation_metrics(np.zeros((2, 2), np.int64))
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy) and math.isnan(m.frequency_weighted_iou)
    assert m.metrics("val_") == {}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_sklearn_parity_on_random_masks():
    from sklearn import metrics

    rng = np.random.default_rng(0)
    k = 6
    truth, pred = random_masks(rng, (3, 12, 10), k)
    truth[truth == 5] = 255  # class 5 ignored in the truth: IoU 0 from predictions only
    truth[0, :3] = 255
    m = evaluate_segmentation([truth], [pred], k)
    valid = truth != 255
    t, p = truth[valid], pred[valid]
    np.testing.assert_array_equal(m.confusion, metrics.confusion_matrix(t, p, labels=range(k)))
    per_class = metrics.jaccard_score(t, p, labels=list(range(k)), average=None, zero_division=0)
    np.testing.assert_allclose([m.per_class_iou[str(c)] for c in range(k)], per_class)
    present = sorted(set(t.tolist()) | set(p.tolist()))
    assert m.miou == pytest.approx(metrics.jaccard_score(t, p, labels=present, average="macro"))
    assert m.pixel_accuracy == pytest.approx(metrics.accuracy_score(t, p))
    assert m.mean_accuracy == pytest.approx(metrics.balanced_accuracy_score(t, p))
    weighted = metrics.jaccard_score(t, p, labels=sorted(set(t.tolist())), average="weighted")
    assert m.frequency_weighted_iou == pytest.approx(weighted)


def test_ignore_pixel_equals_dropping_it():
    truth, pred = TRUTH.copy(), PRED.copy()
    truth[0, 1] = 255  # the (0 -> 1) error
    truth[3, 0] = 255
    pred[3, 0] = 99  # anything may be predicted at an ignored pixel
    keep = np.ones(TRUTH.shape, bool)
    keep[0, 1] = keep[3, 0] = False
    np.testing.assert_array_equal(matrix_of(truth, pred, 3), matrix_of(TRUTH[keep], PRED[keep], 3))
    m = evaluate_segmentation([truth], [pred], 3)
    assert m.num_pixels == 14
    # class 0: t_0 = 3 (all right), still predicted on one class-1 pixel: 3 / (3 + 4 - 3)
    assert m.per_class_iou["0"] == pytest.approx(0.75)
    # a configurable ignore label
    np.testing.assert_array_equal(
        matrix_of(np.where(truth == 255, 7, truth), pred, 3, ignore_label=7), matrix_of(truth, pred, 3)
    )


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(1)
    truth, pred = random_masks(rng, (6, 8, 8), 4)
    truth[rng.random(truth.shape) < 0.1] = 255
    whole = matrix_of(truth, pred, 4)
    cm = ConfusionMatrix(4)
    for lo, hi in ((0, 2), (2, 5), (5, 6)):
        cm.update(truth[lo:hi], pred[lo:hi])
    np.testing.assert_array_equal(cm.matrix, whole)
    # batches as lists, single (H, W) masks, and a trailing channel axis all agree
    batched = evaluate_segmentation([truth[:3, ..., None], truth[3:]], [pred[:3], pred[3:, ..., None]], 4)
    np.testing.assert_array_equal(batched.confusion, whole)
    np.testing.assert_array_equal(evaluate_segmentation(truth, pred, 4).confusion, whole)


def test_invalid_values_raise_naming_them():
    with pytest.raises(ValueError, match=r"truth has values \[3, 7\].*0\.\.2"):
        matrix_of(np.array([[0, 7], [3, 1]]), np.zeros((2, 2), int), 3)
    with pytest.raises(ValueError, match=r"prediction has values \[-1\]"):
        matrix_of(np.zeros((2, 2), int), np.array([[0, -1], [1, 1]]), 3)
    with pytest.raises(ValueError, match="prediction has values \\[255\\]"):  # 255 is void only in the truth
        matrix_of(np.zeros((2, 2), int), np.full((2, 2), 255), 3)
    with pytest.raises(ValueError, match="shape"):
        matrix_of(np.zeros((2, 2), int), np.zeros((2, 2, 3)), 3)
    with pytest.raises(ValueError, match="logits_to_class_map"):
        matrix_of(np.zeros((2, 2), int), np.full((2, 2), 0.5), 3)
    with pytest.raises(DataError, match="class_names has 2 names"):
        evaluate_segmentation([TRUTH], [PRED], 3, ["a", "b"])
    with pytest.raises(DataError, match="more"):
        evaluate_segmentation([TRUTH], [PRED, PRED], 3)
    with pytest.raises(DataError, match="ran out"):
        evaluate_segmentation([TRUTH, TRUTH], [PRED], 3)


def test_logits_to_class_map():
    scores = np.zeros((2, 3, 4, 5), np.float32)
    scores[0, 1, 2, 4] = 1.0
    scores[1, ..., 3] = 2.0
    classes = logits_to_class_map(scores)
    assert classes.shape == (2, 3, 4) and classes.dtype == np.int32
    assert classes[0, 1, 2] == 4 and classes[0, 0, 0] == 0 and np.all(classes[1] == 3)


def test_metrics_keys_without_nan():
    pred = PRED.copy()
    pred[3, 3] = 4
    m = evaluate_segmentation([TRUTH], [pred], 5, ["background", "traffic light", "a-b", "a b", "x"])
    logged = m.metrics("test_")
    assert set(logged) == {
        "test_miou",
        "test_pixel_accuracy",
        "test_mean_accuracy",
        "test_fw_iou",
        "test_iou_background",
        "test_iou_traffic_light",
        "test_iou_a_b",
        "test_iou_x",
    }
    # "a b" clashes with "a-b" after sanitising but is NaN (absent), so it is not logged
    assert all(isinstance(v, float) and not math.isnan(v) for v in logged.values())
    assert logged["test_iou_x"] == 0.0
    assert set(evaluate_segmentation([TRUTH], [PRED], 3).metrics()) >= {"miou", "fw_iou", "iou_0", "iou_2"}
    with pytest.raises(DataError, match="repeats"):
        evaluate_segmentation([TRUTH], [PRED], 3, ["a", "a", "b"])


def test_per_class_table_and_markdown():
    pred = PRED.copy()
    pred[3, 3] = 4
    m = evaluate_segmentation([TRUTH], [pred], 5, ["bg", "a", "b", "c", "d"])
    rows = list(csv.DictReader(io.StringIO(m.per_class_table())))
    assert list(rows[0]) == ["class", "iou", "accuracy", "truth_pixels", "predicted_pixels"]
    assert [r["class"] for r in rows] == ["bg", "a", "b", "c", "d"]
    assert float(rows[2]["iou"]) == pytest.approx(0.75)
    assert math.isnan(float(rows[3]["iou"])) and math.isnan(float(rows[4]["accuracy"]))
    assert [int(r["truth_pixels"]) for r in rows] == [4, 4, 8, 0, 0]
    assert [int(r["predicted_pixels"]) for r in rows] == [4, 5, 6, 0, 1]
    md = m.markdown()
    assert "| mean IoU | 0.4625 |" in md and "| c | n/a | n/a | 0 | 0 |" in md


def test_segmentation_grid_renders(tmp_path):
    from matplotlib.figure import Figure

    from cnn_apps import plots

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    truth, pred = random_masks(rng, (3, 8, 8), 3)
    truth[:, 0, :2] = 255
    fig = plots.segmentation_grid(
        images, truth[..., None], pred, ["bg", "square", "disc"], cols=2, title="seg"
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 9  # 3 images x (image, truth, prediction); the spare row slots removed
    assert [t.get_text() for t in fig.legends[0].get_texts()][1:] == ["square", "disc", "ignore (255)"]
    fig.savefig(tmp_path / "seg.png")
    assert (tmp_path / "seg.png").stat().st_size > 0
    # grayscale float images, fewer shown than given, masks at half resolution
    gray = rng.uniform(0, 255, (3, 8, 8, 1)).astype(np.float32)
    fig2 = plots.segmentation_grid(
        gray, truth[:, ::2, ::2], pred[:, ::2, ::2], ["bg", "a", "b"], max_images=1
    )
    assert len(fig2.axes) == 3
    fig2.savefig(tmp_path / "seg_gray.png")
    plots.plt.close(fig)
    plots.plt.close(fig2)
