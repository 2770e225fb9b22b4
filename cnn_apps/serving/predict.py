"""Batch prediction: ``cnn-apps predict --model M --input I --output results.jsonl``.

``M`` is an export folder, a ``runs:/`` or ``models:/`` URI or a TF Serving REST URL, each
a :class:`~cnn_apps.serving.predictors.Predictor` with the same interface
(:mod:`cnn_apps.serving.predictors`). ``I`` is an image file, a folder or a glob pattern;
each file is read and checked first (:mod:`cnn_apps.serving.images`): a file that cannot be
read becomes an error record and the others are still predicted. A file the model's own
decoder refuses is isolated by predicting its batch file by file.

Outputs: ``results.jsonl``, one line per input file in input order, and optionally COCO
results JSON (``--coco-json``, detection) and PNG class maps (``--masks``, segmentation);
see :func:`run_predict`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cnn_apps.errors import ConfigError, DataError, ModelError
from cnn_apps.serving.images import ImageFile, list_inputs, read_image
from cnn_apps.serving.predictors import InputRefused, Predictor, open_predictor


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="an export folder (exports/<name> for its newest version, or exports/<name>/<version>), "
        "runs:/<run_id>/model, models:/<name>@<alias> or models:/<name>/<version>, "
        "or a TF Serving REST URL (http://host:8501/v1/models/<name>)",
    )
    p.add_argument(
        "--input", required=True, metavar="INPUT", help="an image file, a folder of images, or a glob"
    )
    p.add_argument(
        "--output", default="results.jsonl", help="one JSON line per file (default: results.jsonl)"
    )
    p.add_argument(
        "--coco-json",
        dest="coco_json",
        metavar="FILE",
        help="detection: also write the detections as COCO results JSON",
    )
    p.add_argument("--masks", metavar="DIR", help="segmentation: also write each class map as a PNG in DIR")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument(
        "--tracking-uri",
        dest="tracking_uri",
        help="for runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else ./mlruns)",
    )
    p.add_argument(
        "--coco-gt",
        dest="coco_gt",
        metavar="FILE",
        help="with --coco-json: a COCO annotations file whose image ids (matched by file_name) and "
        "category ids (matched by name) the results use; without it image_id is the file's "
        "1-based position in the input and category_id is class_id + 1",
    )
    p.add_argument(
        "--metadata",
        metavar="FILE",
        help="for a TF Serving URL: the export's assets.extra/cnn_apps.json (or its export folder), "
        "for the class names and a Fast R-CNN's proposal settings",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per TF Serving request (default: 60)")
    p.add_argument(
        "--max-image-pixels",
        dest="max_image_pixels",
        type=int,
        metavar="N",
        help="refuse an image whose header claims more pixels, before decoding it (a decompression "
        "bomb); default: data.max_image_pixels's default, 89478485; 0: no limit",
    )


# ---------------------------------------------------------------------- records
def _round(value: float, digits: int) -> float:
    return round(float(value), digits)


def make_record(predictor: Predictor, image: ImageFile, raw: dict) -> dict:
    """The results.jsonl line of one predicted image (see :func:`run_predict`)."""
    names = predictor.class_names
    if predictor.task == "classification":
        probabilities = raw["probabilities"]
        class_id = int(np.argmax(probabilities))
        keys = (
            names
            if names is not None and len(names) == len(probabilities)
            else [str(i) for i in range(len(probabilities))]
        )
        class_name = raw.get("class_name") or (names[class_id] if names is not None else str(class_id))
        return {
            "file": image.file,
            "class_name": class_name,
            "class_id": class_id,
            "score": _round(probabilities[class_id], 6),
            "probabilities": {k: _round(p, 6) for k, p in zip(keys, probabilities)},
        }
    if predictor.task == "detection":
        detections = []
        given = raw.get("class_names")
        for j, (box, score, cls) in enumerate(zip(raw["boxes"], raw["scores"], raw["classes"])):
            cls = int(cls)
            name = (
                given[j]
                if given
                else (names[cls] if names is not None and 0 <= cls < len(names) else str(cls))
            )
            detections.append(
                {
                    "box": [_round(v, 3) for v in box],
                    "score": _round(score, 6),
                    "class_id": cls,
                    "class_name": name,
                }
            )
        return {"file": image.file, "width": image.width, "height": image.height, "detections": detections}
    class_map = raw["class_map"]
    seen = raw.get("class_names_seen")
    keys = names if names is not None else seen
    count = len(keys) if keys is not None else int(class_map.max()) + 1
    counts = np.bincount(class_map.ravel(), minlength=count)
    keys = keys if keys is not None else [str(i) for i in range(len(counts))]
    return {
        "file": image.file,
        "width": image.width,
        "height": image.height,
        "class_pixels": {k: int(c) for k, c in zip(keys, counts)},
    }


def _coco_ids(path: str | None):
    """({file_name or basename: image id}, {category name: id}) from a COCO annotations file."""
    if path is None:
        return None, None
    try:
        gt = json.loads(Path(path).read_text())
        images = {str(img["file_name"]): int(img["id"]) for img in gt["images"]}
        categories = {str(cat["name"]): int(cat["id"]) for cat in gt["categories"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"--coco-gt {path}: not a COCO annotations file ({type(exc).__name__}: {exc})"
        ) from exc
    by_name = {}
    for name, image_id in images.items():
        by_name.setdefault(Path(name).name, []).append(image_id)
    images.update({name: ids[0] for name, ids in by_name.items() if len(ids) == 1 and name not in images})
    return images, categories


def _mask_path(folder: Path, file: str, used: set) -> Path:
    """``<stem>.png`` in ``folder``, or ``<name>.png`` when another input already took the stem."""
    path = folder / (Path(file).stem + ".png")
    if path in used:
        path = folder / (Path(file).name + ".png")
    n = 2
    while path in used:
        path = folder / f"{Path(file).stem}-{n}.png"
        n += 1
    used.add(path)
    return path


def _predict_isolating(predictor: Predictor, images: list[ImageFile]) -> list:
    """Raw results (or the :class:`InputRefused` error) per image; a refused batch is split
    until the refused files are alone."""
    try:
        return predictor.predict(images)
    except InputRefused as exc:
        if len(images) == 1:
            return [exc]
        half = len(images) // 2
        return _predict_isolating(predictor, images[:half]) + _predict_isolating(predictor, images[half:])


def run_predict(args) -> int:
    """``cnn-apps predict``: writes ``args.output`` (JSON lines, input order):

    * classification: ``file, class_name, class_id, score, probabilities {name: p}``;
    * detection: ``file, width, height, detections [{box [x1, y1, x2, y2] (pixels of the
      image), score, class_id, class_name}]``;
    * segmentation: ``file, width, height, class_pixels {name: count}`` and ``mask`` (the
      PNG's path) with ``--masks``;
    * a file that could not be predicted: ``file, error``.

    ``--coco-json`` (detection): a COCO results list ``[{image_id, category_id, bbox [x, y, w,
    h], score}]``; ids from ``--coco-gt`` (images by file_name, then by base name; categories
    by name; detections of files or classes it lacks are left out, with a warning), else
    image_id = the file's 1-based position in the input, category_id = class_id + 1.
    ``--masks DIR`` (segmentation): ``DIR/<stem>.png`` per image at its own size, pixel =
    class id (uint8). A progress bar and a summary go to stderr. Returns 0 when at least
    one file was predicted, 1 when every file failed."""
    from tqdm import tqdm

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.coco_gt and not args.coco_json:
        raise ConfigError("--coco-gt only names the ids of --coco-json's results; pass --coco-json FILE too")
    files = list_inputs(args.input)
    coco_images, coco_categories = _coco_ids(args.coco_gt)
    predictor = open_predictor(
        args.model,
        tracking_uri=args.tracking_uri,
        metadata=getattr(args, "metadata", None),
        timeout=getattr(args, "timeout", 60.0),
    )
    if args.coco_json and predictor.task != "detection":
        raise ConfigError(f"--coco-json is for detectors; {predictor.source} is a {predictor.task} model")
    if args.masks and predictor.task != "segmentation":
        raise ConfigError(f"--masks is for segmenters; {predictor.source} is a {predictor.task} model")
    if args.masks and predictor.class_names is not None and len(predictor.class_names) > 256:
        raise ConfigError(f"--masks writes uint8 PNGs: {len(predictor.class_names)} classes do not fit")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    masks = Path(args.masks) if args.masks else None
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
    used_masks: set = set()
    coco, warned = [], set()
    predicted = failed = 0

    def warn(message):
        if message not in warned:
            warned.add(message)
            tqdm.write(f"warning: {message}", file=sys.stderr)

    with (
        open(output, "w") as out,
        tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr, dynamic_ncols=True) as bar,
    ):
        for start in range(0, len(files), args.batch_size):
            batch = files[start : start + args.batch_size]
            slots: list = []  # per file: ImageFile or the error record
            for path in batch:
                try:
                    limit = getattr(args, "max_image_pixels", None)
                    slots.append(read_image(path) if limit is None else read_image(path, max_pixels=limit))
                except DataError as exc:
                    slots.append({"file": str(path), "error": str(exc)})
            images = [s for s in slots if isinstance(s, ImageFile)]
            raws = iter(_predict_isolating(predictor, images) if images else [])
            for position, slot in enumerate(slots, start=start + 1):
                if isinstance(slot, dict):
                    record = slot
                else:
                    raw = next(raws)
                    if isinstance(raw, Exception):
                        record = {"file": slot.file, "error": f"{slot.file}: the model refused it ({raw})"}
                    else:
                        record = make_record(predictor, slot, raw)
                        if masks is not None:
                            mask = _mask_path(masks, slot.file, used_masks)
                            _write_mask(mask, raw["class_map"])
                            record["mask"] = str(mask)
                        if args.coco_json:
                            coco.extend(_coco_results(record, position, coco_images, coco_categories, warn))
                if "error" in record:
                    failed += 1
                    tqdm.write(f"error: {record['error']}", file=sys.stderr)
                else:
                    predicted += 1
                out.write(json.dumps(record) + "\n")
            out.flush()
            bar.update(len(batch))
    if args.coco_json:
        Path(args.coco_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.coco_json).write_text(json.dumps(coco) + "\n")
    print(
        f"predicted {predicted} file{'s' * (predicted != 1)}, {failed} failed (see {output})", file=sys.stderr
    )
    return 0 if predicted else 1


def _write_mask(path: Path, class_map: np.ndarray) -> None:
    import cv2

    if class_map.max(initial=0) > 255 or class_map.min(initial=0) < 0:
        raise ModelError(f"{path}: class ids outside 0..255 do not fit a uint8 PNG")
    if not cv2.imwrite(str(path), class_map.astype(np.uint8)):
        raise DataError(f"cannot write {path}")


def _coco_results(record: dict, position: int, images, categories, warn) -> list[dict]:
    file = record["file"]
    if images is None:
        image_id = position
    else:
        image_id = images.get(file, images.get(Path(file).name))
        if image_id is None:
            warn(
                f"{file} is not an image of --coco-gt (by file_name): "
                "its detections are left out of --coco-json"
            )
            return []
    results = []
    for det in record["detections"]:
        if categories is None:
            category_id = det["class_id"] + 1
        else:
            category_id = categories.get(det["class_name"])
            if category_id is None:
                warn(f"class {det['class_name']!r} is not a category of --coco-gt: left out of --coco-json")
                continue
        x1, y1, x2, y2 = det["box"]
        results.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x1, y1, _round(x2 - x1, 3), _round(y2 - y1, 3)],
                "score": det["score"],
            }
        )
    return results
