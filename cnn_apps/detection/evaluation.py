"""Detection metrics: PASCAL VOC mAP (all-point and 11-point) and COCO AP/AR.

Pure NumPy, importable without TensorFlow. Inputs follow the library's conventions: boxes
``xyxy`` in absolute pixels, labels 0-based, padded rows (label < 0) ignored.

- VOC follows the devkit (``voc_eval.py`` of py-faster-rcnn, ``VOCevaldet.m``): the
  detections of a class, sorted by score, each take the ground truth (GT) box of highest IoU
  in their image; a hit (IoU >= 0.5) on a GT already taken is a false positive, even when
  another free GT overlaps enough. IoU is continuous (no +1 pixel). Crowd GT plays the
  devkit's "difficult": not counted, and a detection on it is neither TP nor FP.
- COCO re-implements ``COCOeval`` (``iouType="bbox"``) step by step, so the numbers agree with
  pycocotools. One difference in the inputs: COCO's area ranges use the annotation's
  ``area`` (the mask area on COCO itself); here both GT and detections use the box area.
  It scores validation passes and studies, where it is faster than pycocotools
  (``benchmarks/coco_eval.py``); ``cnn-apps evaluate`` reports pycocotools' own numbers on
  the logged files (:mod:`cnn_apps.detection.pycocotools_eval`, :meth:`DetectionMetrics.with_coco`).

Shapes: N GT boxes and M detections per image, K classes, T=10 IoU thresholds, R=101 recall
points, A=4 area ranges (all, small, medium, large), maxDets M=(1, 10, 100).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cnn_apps.errors import DataError

# The same arithmetic as COCOeval's Params.setDetParams, so thresholds compare equal.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
VOC_IOU = 0.5

# (name, ap?, iou index or None, area, maxDets) in the order of COCOeval.stats.
_COCO_STATS = (
    ("coco_ap", True, None, "all", 100),
    ("coco_ap50", True, 0, "all", 100),
    ("coco_ap75", True, 5, "all", 100),
    ("coco_ap_small", True, None, "small", 100),
    ("coco_ap_medium", True, None, "medium", 100),
    ("coco_ap_large", True, None, "large", 100),
    ("coco_ar1", False, None, "all", 1),
    ("coco_ar10", False, None, "all", 10),
    ("coco_ar100", False, None, "all", 100),
    ("coco_ar_small", False, None, "small", 100),
    ("coco_ar_medium", False, None, "medium", 100),
    ("coco_ar_large", False, None, "large", 100),
)
_LOGGED = ("map50", "map50_voc07", *(name for name, *_ in _COCO_STATS))  # all 12 COCOeval.stats
_PER_CLASS_COLUMNS = ("class", "ap50", "ap50_voc07", "coco_ap", "num_gt", "num_det")


@dataclass
class DetectionMetrics:
    """Results of :func:`evaluate_detections`. A metric with nothing to average is NaN
    (pycocotools prints -1 there)."""

    map50: float
    map50_voc07: float
    coco_ap: float
    coco_ap50: float
    coco_ap75: float
    coco_ap_small: float
    coco_ap_medium: float
    coco_ap_large: float
    coco_ar1: float
    coco_ar10: float
    coco_ar100: float
    coco_ar_small: float
    coco_ar_medium: float
    coco_ar_large: float
    # One dict per class: class, ap50, ap50_voc07, coco_ap, num_gt, num_det (NaN APs without GT).
    per_class: list = field(default_factory=list)
    # {class name: (recall (D,), precision (D,))} at IoU 0.5, VOC matching, classes with GT.
    pr_curves: dict = field(default_factory=dict, repr=False)
    # COCOeval.eval["precision"] (T, R, K, A, M) and ["recall"] (T, K, A, M), -1 where no GT.
    coco_precision: np.ndarray = field(default=None, repr=False)
    coco_recall: np.ndarray = field(default=None, repr=False)

    # who computed the coco_* numbers: "numpy" (this module) or "pycocotools" (with_coco)
    coco_source: str = "numpy"

    def with_coco(self, precision: np.ndarray, recall: np.ndarray, source: str = "pycocotools"):
        """A copy whose COCO numbers (the 12 stats and each class's ``coco_ap``) come from
        another COCOeval run's ``eval["precision"]`` (T, R, K, A, M) and ``eval["recall"]``
        (T, K, A, M), e.g. pycocotools' on the logged ``detections.json``; the VOC numbers stay."""
        precision, recall = np.asarray(precision), np.asarray(recall)
        if precision.shape[2] != len(self.per_class):
            raise DataError(
                f"the COCO evaluation has {precision.shape[2]} categories, the detector {len(self.per_class)}"
            )
        stats = {name: _summarize(precision, recall, ap, t, area, m) for name, ap, t, area, m in _COCO_STATS}
        per_class = []
        for k, row in enumerate(self.per_class):
            coco_k = precision[:, :, k, 0, -1]
            per_class.append(
                {**row, "coco_ap": float(coco_k[coco_k > -1].mean()) if (coco_k > -1).any() else math.nan}
            )
        arrays = {"coco_precision": precision, "coco_recall": recall}
        return dataclasses.replace(self, per_class=per_class, coco_source=source, **arrays, **stats)

    @property
    def coco_stats(self) -> np.ndarray:
        """The 12 numbers of ``COCOeval.stats`` in its order (NaN instead of -1)."""
        return np.array([getattr(self, name) for name, *_ in _COCO_STATS])

    def metrics(self, prefix: str = "test_") -> dict:
        """The MLflow metrics: ``{prefix}map50``, ``{prefix}map50_voc07`` and the 12 numbers of
        ``COCOeval.stats``: ``{prefix}coco_ap``, ``_ap50``, ``_ap75``, ``_ap_small``, ``_ap_medium``,
        ``_ap_large``, ``_ar1``, ``_ar10``, ``_ar100``, ``_ar_small``, ``_ar_medium``, ``_ar_large``."""
        return {f"{prefix}{name}": float(getattr(self, name)) for name in _LOGGED}

    def per_class_table(self) -> str:
        """The per-class results as CSV text with a header row."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_PER_CLASS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.per_class:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
        return out.getvalue()

    def markdown(self) -> str:
        """A summary table and the per-class table, in Markdown."""
        summary = [
            ("mAP@0.5, VOC all-point", self.map50),
            ("mAP@0.5, VOC07 11-point", self.map50_voc07),
            ("COCO AP@[.5:.95]", self.coco_ap),
            ("COCO AP@.5", self.coco_ap50),
            ("COCO AP@.75", self.coco_ap75),
            ("COCO AP small", self.coco_ap_small),
            ("COCO AP medium", self.coco_ap_medium),
            ("COCO AP large", self.coco_ap_large),
            ("COCO AR@1", self.coco_ar1),
            ("COCO AR@10", self.coco_ar10),
            ("COCO AR@100", self.coco_ar100),
        ]
        lines = [f"COCO numbers computed by {self.coco_source}.", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in summary]
        lines += [
            "",
            "| class | AP@0.5 | AP@0.5 (VOC07) | COCO AP | GT | detections |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['class']} | {_fmt(r['ap50'])} | {_fmt(r['ap50_voc07'])} | {_fmt(r['coco_ap'])} "
            f"| {r['num_gt']} | {r['num_det']} |"
            for r in self.per_class
        ]
        return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def evaluate_detections(ground_truth, detections, num_classes: int, class_names=None) -> DetectionMetrics:
    """VOC and COCO metrics of detections against ground truth.

    ground_truth: one dict per image, ``{"boxes": (N, 4) xyxy, "labels": (N,)}`` with an
        optional ``"iscrowd": (N,)``; or one batched dict ``{"boxes": (B, N, 4), "labels": (B, N)}``.
    detections: the same number of images, ``{"boxes": (M, 4), "scores": (M,), "labels": (M,)}``
        (or batched, with an optional ``"num_detections": (B,)`` as detectors return it).
    Rows with label < 0 are padding. Labels must be < num_classes (K).
    """
    class_names = (
        [str(k) for k in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    )
    if len(class_names) != num_classes:
        raise DataError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
    gts = [_read(g, i, num_classes, "ground_truth") for i, g in enumerate(_as_list(ground_truth))]
    dts = [_read(d, i, num_classes, "detections") for i, d in enumerate(_as_list(detections))]
    if len(gts) != len(dts):
        raise DataError(
            f"ground_truth has {len(gts)} images but detections has {len(dts)}; "
            "give one entry per image in both, empty where an image has none"
        )

    per_class, curves = [], {}
    ap50, ap07 = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
    for k in range(num_classes):
        npos, rec, prec = _voc_class(gts, dts, k)
        if npos > 0:
            ap50[k], ap07[k] = voc_ap(rec, prec), voc_ap(rec, prec, use_07_metric=True)
            curves[class_names[k]] = (rec, prec)
    precision, recall = _coco(gts, dts, num_classes)
    stats = {
        name: _summarize(precision, recall, ap, t, area, max_det)
        for name, ap, t, area, max_det in _COCO_STATS
    }

    for k in range(num_classes):
        coco_k = precision[:, :, k, 0, -1]
        per_class.append(
            {
                "class": class_names[k],
                "ap50": float(ap50[k]),
                "ap50_voc07": float(ap07[k]),
                "coco_ap": float(coco_k[coco_k > -1].mean()) if (coco_k > -1).any() else math.nan,
                "num_gt": int(sum(np.count_nonzero((g["labels"] == k) & ~g["crowd"]) for g in gts)),
                "num_det": int(sum(np.count_nonzero(d["labels"] == k) for d in dts)),
            }
        )
    has_gt = ~np.isnan(ap50)
    return DetectionMetrics(
        map50=float(ap50[has_gt].mean()) if has_gt.any() else math.nan,
        map50_voc07=float(ap07[has_gt].mean()) if has_gt.any() else math.nan,
        per_class=per_class,
        pr_curves=curves,
        coco_precision=precision,
        coco_recall=recall,
        **stats,
    )


def _as_list(images) -> list:
    if isinstance(images, Mapping):  # batched padded dict -> one dict per image
        n = len(images["boxes"])
        return [{key: value[i] for key, value in images.items()} for i in range(n)]
    if not isinstance(images, Sequence):
        images = list(images)
    return list(images)


def _read(record, index: int, num_classes: int, what: str) -> dict:
    """One image's dict -> float64 boxes (n, 4), int labels, crowd flags, scores; padding dropped."""
    try:
        boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(record["labels"]).reshape(-1).astype(np.int64)
        scores = np.asarray(record["scores"], dtype=np.float64).reshape(-1) if "scores" in record else None
    except (KeyError, ValueError) as err:
        raise DataError(
            f"{what}[{index}] is not a dict of 'boxes' (n, 4) and 'labels' (n,)"
            f"{' and scores (n,)' if what == 'detections' else ''}: {err}"
        ) from err
    if what == "detections" and scores is None:
        raise DataError(f"detections[{index}] has no 'scores'; every detection needs a score to be ranked")
    if len(boxes) != len(labels) or (scores is not None and len(scores) != len(labels)):
        raise DataError(
            f"{what}[{index}] has {len(boxes)} boxes and {len(labels)} labels"
            f"{'' if scores is None else f' and {len(scores)} scores'}; they must match"
        )
    keep = labels >= 0
    if "num_detections" in record:
        keep &= np.arange(len(labels)) < int(np.asarray(record["num_detections"]))
    if "iscrowd" in record:
        crowd = np.asarray(record["iscrowd"]).reshape(-1).astype(bool)
    else:
        crowd = np.zeros(len(labels), bool)
    if np.any(labels[keep] >= num_classes):
        raise DataError(
            f"{what}[{index}] has label {labels[keep].max()} but num_classes is {num_classes} "
            "(labels are 0-based; padding is -1)"
        )
    return {
        "boxes": boxes[keep],
        "labels": labels[keep],
        "crowd": crowd[keep],
        "scores": None if scores is None else scores[keep],
    }


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU (D, G) of xyxy boxes, in the order of operations of pycocotools' ``bbIou`` so that
    a threshold compares equal. A crowd GT divides by the detection's area only."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    w = np.minimum(dt[:, None, 2], gt[None, :, 2]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    h = np.minimum(dt[:, None, 3], gt[None, :, 3]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = w * h
    da = ((dt[:, 2] - dt[:, 0]) * (dt[:, 3] - dt[:, 1]))[:, None]
    ga = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None, :]
    union = da + ga - inter
    if crowd is not None:
        union = np.where(crowd[None, :], da, union)
    overlap = (w > 0) & (h > 0)
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


# ---------------------------------------------------------------- PASCAL VOC


def _voc_class(gts: list, dts: list, k: int, iou_threshold: float = VOC_IOU):
    """Devkit matching for class k -> (number of non-crowd GT, recall (D,), precision (D,))."""
    scores, ovmax, gt_index, gt_crowd = [], [], [], []
    npos, offset = 0, 0
    for g, d in zip(gts, dts):
        gmask, dmask = g["labels"] == k, d["labels"] == k
        gboxes, crowd = g["boxes"][gmask], g["crowd"][gmask]
        npos += int(np.count_nonzero(~crowd))
        if dmask.any():
            iou = _iou(d["boxes"][dmask], gboxes)
            scores.append(d["scores"][dmask])
            if len(gboxes):
                ovmax.append(iou.max(axis=1))
                gt_index.append(offset + iou.argmax(axis=1))  # first GT on a tie, as np.argmax
            else:
                ovmax.append(np.full(int(dmask.sum()), -np.inf))
                gt_index.append(np.full(int(dmask.sum()), -1))
        gt_crowd.append(crowd)
        offset += len(gboxes)
    if not scores:
        return npos, np.zeros(0), np.zeros(0)
    scores, ovmax, gt_index = np.concatenate(scores), np.concatenate(ovmax), np.concatenate(gt_index)
    gt_crowd = np.concatenate(gt_crowd) if offset else np.zeros(0, bool)
    # Stable sort: score ties keep image order, then the order within the image.
    order = np.argsort(-scores, kind="mergesort")
    ovmax, gt_index = ovmax[order], gt_index[order]
    hit = ovmax >= iou_threshold
    ignored = hit & gt_crowd[np.where(hit, gt_index, 0)] if offset else np.zeros_like(hit)
    candidate = np.flatnonzero(hit & ~ignored)
    # The first (highest-scored) hit on each GT is the true positive; later hits are duplicates.
    _, first = np.unique(gt_index[candidate], return_index=True)
    tp = np.zeros(len(order))
    tp[candidate[first]] = 1.0
    fp = (1.0 - tp) * ~ignored
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos if npos else np.full(len(tp), np.nan)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return npos, rec, prec


def voc_ap(rec, prec, use_07_metric: bool = False) -> float:
    """AP from a recall/precision curve as the VOC devkit computes it.

    All-point: area under the monotone precision envelope at the recall change points.
    11-point (VOC2007): mean over t = 0, 0.1, ..., 1 of the best precision at recall >= t.
    """
    rec, prec = np.asarray(rec, np.float64), np.asarray(prec, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's thresholds, float rounding included
            p = np.max(prec[rec >= t]) if np.any(rec >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


# ---------------------------------------------------------------- COCO


def _match(iou: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray):
    """COCOeval.evaluateImg's greedy matching, vectorised over the T thresholds.

    iou (D, G) with detections by score and GT sorted ignore-last. Each detection takes the
    free GT of highest IoU >= t (the last one on a tie, as COCOeval's ``>=`` update does),
    preferring regular GT to ignored ones; crowd GT can be taken again.
    Returns matched (T, D) bool and matched-to-ignored (T, D) bool.
    """
    t_count, (d_count, g_count) = len(IOU_THRESHOLDS), iou.shape
    matched = np.zeros((t_count, d_count), bool)
    on_ignored = np.zeros((t_count, d_count), bool)
    if d_count == 0 or g_count == 0:
        return matched, on_ignored
    taken = np.zeros((t_count, g_count), bool)
    threshold = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    rows = np.arange(t_count)
    for d in range(d_count):
        free = (~taken | crowd[None, :]) & (iou[d][None, :] >= threshold)  # (T, G)
        regular = free & ~gt_ignore[None, :]
        allowed = np.where(regular.any(axis=1, keepdims=True), regular, free)
        found = allowed.any(axis=1)
        if not found.any():
            continue
        score = np.where(allowed, iou[d][None, :], -1.0)
        best = g_count - 1 - np.argmax(score[:, ::-1], axis=1)  # last index of the maximum
        matched[found, d] = True
        on_ignored[found, d] = gt_ignore[best[found]]
        taken[rows[found], best[found]] = True
    return matched, on_ignored


def _coco(gts: list, dts: list, num_classes: int):
    """COCOeval evaluate + accumulate -> precision (T, R, K, A, M), recall (T, K, A, M)."""
    areas = list(AREA_RANGES.values())
    t_count, r_count, a_count, m_count = (
        len(IOU_THRESHOLDS),
        len(RECALL_THRESHOLDS),
        len(areas),
        len(MAX_DETS),
    )
    precision = -np.ones((t_count, r_count, num_classes, a_count, m_count))
    recall = -np.ones((t_count, num_classes, a_count, m_count))
    for k in range(num_classes):
        # evaluateImg for every image with GT or detections of class k, in image order.
        per_area = [[] for _ in areas]
        for g, d in zip(gts, dts):
            gmask, dmask = g["labels"] == k, d["labels"] == k
            if not gmask.any() and not dmask.any():
                continue
            gboxes, crowd = g["boxes"][gmask], g["crowd"][gmask]
            order = np.argsort(-d["scores"][dmask], kind="mergesort")[: MAX_DETS[-1]]
            dboxes, dscores = d["boxes"][dmask][order], d["scores"][dmask][order]
            iou = _iou(dboxes, gboxes, crowd)
            garea = (gboxes[:, 2] - gboxes[:, 0]) * (gboxes[:, 3] - gboxes[:, 1])
            darea = (dboxes[:, 2] - dboxes[:, 0]) * (dboxes[:, 3] - dboxes[:, 1])
            for a, (lo, hi) in enumerate(areas):
                gt_ignore = crowd | (garea < lo) | (garea > hi)
                gorder = np.argsort(gt_ignore, kind="mergesort")
                matched, on_ignored = _match(iou[:, gorder], gt_ignore[gorder], crowd[gorder])
                dt_ignore = on_ignored | (~matched & ((darea < lo) | (darea > hi))[None, :])
                per_area[a].append((dscores, matched, dt_ignore, int(np.count_nonzero(~gt_ignore))))
        # accumulate
        for a, images in enumerate(per_area):
            if not images:
                continue
            npig = sum(n for *_, n in images)
            if npig == 0:
                continue
            for m, max_det in enumerate(MAX_DETS):
                scores = np.concatenate([s[:max_det] for s, *_ in images])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([mt[:, :max_det] for _, mt, _, _ in images], axis=1)[:, order]
                ignore = np.concatenate([ig[:, :max_det] for _, _, ig, _ in images], axis=1)[:, order]
                tp = np.cumsum(matched & ~ignore, axis=1).astype(float)
                fp = np.cumsum(~matched & ~ignore, axis=1).astype(float)
                nd = tp.shape[1]
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if nd else 0.0
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(t_count):
                    inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    valid = inds < nd
                    q = np.zeros(r_count)
                    q[valid] = pr[t, inds[valid]]
                    precision[t, :, k, a, m] = q
    return precision, recall


def _summarize(precision, recall, ap: bool, iou_index, area: str, max_det: int) -> float:
    """COCOeval.summarize's _summarize: mean over the entries that are not -1 (NaN if none)."""
    a, m = list(AREA_RANGES).index(area), MAX_DETS.index(max_det)
    s = precision[..., a, m] if ap else recall[..., a, m]
    if iou_index is not None:
        s = s[iou_index]
    s = s[s > -1]
    return float(s.mean()) if s.size else math.nan
