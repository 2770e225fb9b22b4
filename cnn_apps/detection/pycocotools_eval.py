"""COCO metrics from pycocotools itself, on COCO-format files: the reference every paper reports.

The evaluation writes what it scores: ``detections.json`` in the COCO results format
(``[{"image_id", "category_id", "bbox": [x, y, width, height], "score"}]``) and, unless the
data came from a COCO annotation file, ``ground_truth.json`` made from the split (boxes
``[x, y, w, h]``, ``area`` = w * h, ``iscrowd`` = the ignore flag). COCOeval then runs on
exactly those files, so anyone can reproduce the numbers with::

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO("ground_truth.json")  # or the original instances_*.json
    ev = COCOeval(gt, gt.loadRes("detections.json"), "bbox")
    ev.params.imgIds = [...]  # the split's image ids (all of ground_truth.json's)
    ev.evaluate(); ev.accumulate(); ev.summarize()

Boxes come in as xyxy pixels (0-based edges) and go out as COCO ``[x, y, w, h]``. Ignore
regions (VOC difficult, COCO crowd) are crowd annotations here: COCOeval neither rewards nor
penalizes a detection on one (for a VOC difficult object this also means COCO's crowd IoU,
intersection over the detection's area). Labels are 0-based; a category id is
``category_ids[label]`` (default ``label + 1``).
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np

from cnn_apps.errors import DataError

BOX_DIGITS = 3  # decimals of a bbox coordinate in detections.json
SCORE_DIGITS = 6


def xyxy_to_coco(boxes) -> np.ndarray:
    """(N, 4) xyxy pixels -> (N, 4) COCO ``[x, y, width, height]``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def ground_truth_json(truth: list, class_names, *, image_ids=None, file_names=None) -> dict:
    """A COCO instances dict of one split: ``truth`` is one dict per image with ``boxes``
    (N, 4) xyxy pixels, ``labels`` (N,), optional ``iscrowd`` (N,) and ``size`` (height,
    width). Image ids default to 1..N, category ids to label + 1."""
    image_ids = list(range(1, len(truth) + 1)) if image_ids is None else list(image_ids)
    images, annotations = [], []
    for k, (t, image_id) in enumerate(zip(truth, image_ids)):
        height, width = (int(v) for v in t["size"])
        image = {"id": image_id, "width": width, "height": height}
        if file_names is not None:
            image["file_name"] = str(file_names[k])
        images.append(image)
        crowd = np.asarray(t.get("iscrowd", np.zeros(len(t["labels"]))), bool).reshape(-1)
        for box, label, is_crowd in zip(xyxy_to_coco(t["boxes"]), np.asarray(t["labels"]).reshape(-1), crowd):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(is_crowd),
                }
            )
    categories = [{"id": k + 1, "name": str(name)} for k, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def results_json(detections: list, image_ids, category_ids=None) -> list:
    """The COCO results list of per-image detections (``boxes`` (M, 4) xyxy pixels, ``scores``,
    ``labels``), boxes rounded to :data:`BOX_DIGITS` decimals and scores to :data:`SCORE_DIGITS`."""
    out = []
    for det, image_id in zip(detections, image_ids):
        labels, scores = np.asarray(det["labels"]).reshape(-1), np.asarray(det["scores"]).reshape(-1)
        for box, score, label in zip(xyxy_to_coco(det["boxes"]), scores, labels):
            label = int(label)
            if label < 0:
                continue
            category = label + 1 if category_ids is None else category_ids[label]
            out.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [round(float(v), BOX_DIGITS) for v in box],
                    "score": round(float(score), SCORE_DIGITS),
                }
            )
    return out


def _quiet(fn, *args, **kwargs):
    """pycocotools prints its progress; keep it out of the user's terminal."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def load_ground_truth(ground_truth):
    """A ``pycocotools.coco.COCO`` from an annotation file path or an instances dict."""
    from pycocotools.coco import COCO

    if isinstance(ground_truth, dict):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(ground_truth))  # a copy, as read from its file
        _quiet(coco.createIndex)
        return coco
    try:
        return _quiet(COCO, str(ground_truth))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the COCO annotation file {ground_truth}: {exc}") from exc


def cocoeval(ground_truth, results: list, image_ids) -> dict:
    """Run pycocotools' COCOeval (``iouType="bbox"``, its default parameters) on
    ``results`` (a COCO results list, as read back from ``detections.json``) against
    ``ground_truth`` (an annotation file or dict), over ``image_ids``.

    Returns ``{"stats": (12,) COCOeval.stats, "precision": (T, R, K, A, M), "recall":
    (T, K, A, M)}`` with -1 where COCOeval has nothing to average; K runs over the ground
    truth's categories sorted by id."""
    from pycocotools.cocoeval import COCOeval

    gt = load_ground_truth(ground_truth)
    unknown = sorted({str(r["image_id"]) for r in results} - {str(i) for i in gt.getImgIds()})
    if unknown:
        raise DataError(
            f"detections name image ids {', '.join(unknown[:5])} that the ground truth does not have"
        )
    if results:
        dt = _quiet(gt.loadRes, json.loads(json.dumps(results)))
    else:  # loadRes cannot take an empty list: an empty result set with the same images
        from pycocotools.coco import COCO

        dt = COCO()
        dt.dataset = {**{k: gt.dataset[k] for k in ("images", "categories")}, "annotations": []}
        _quiet(dt.createIndex)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = list(image_ids)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return {"stats": np.asarray(ev.stats), "precision": ev.eval["precision"], "recall": ev.eval["recall"]}
