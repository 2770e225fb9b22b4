"""``coco``: a COCO instances JSON (detection); COCO's ``xywh`` boxes are converted here,
at the edge (:func:`coco_box_to_xyxy`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cnn_apps.data.sources.base import register_source
from cnn_apps.data.sources.detection_manifest import _clip_box, _DetectionManifestSource
from cnn_apps.data.sources.images import _image_info, size_mismatch_hint
from cnn_apps.data.sources.records import read_manifest
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.errors import ConfigError, DataError


def coco_box_to_xyxy(x: float, y: float, w: float, h: float) -> list:
    """COCO ``bbox`` ``[x, y, width, height]`` (0-based pixel edges) to xyxy pixels."""
    return [float(x), float(y), float(x) + float(w), float(y) + float(h)]


@register_source("coco")
class CocoSource(_DetectionManifestSource):
    """A COCO instances JSON (``data.path``) with images under ``data.image_dir``
    (default: the JSON's folder), joined with each image's ``file_name``.

    * Boxes: COCO ``[x, y, width, height]`` become xyxy pixels (:func:`coco_box_to_xyxy`).
    * Labels: category ids, sorted, mapped to 0..K-1; class names are the
      categories' names in that order (``extra["category_ids"]`` keeps the ids).
    * ``iscrowd`` annotations stay in the data flagged ``ignore``: the pipeline leaves them
      out of the training targets and the evaluation treats them as COCOeval does (a
      detection on a crowd region is neither a true nor a false positive). They are counted
      per split in ``extra["crowd_annotations"]`` and not in the class counts. Images
      without annotations are kept (valid empty samples).
    * Each record keeps its COCO ``image_id``; evaluated at the source resolution, the
      COCO metrics are pycocotools' on the original annotation file
      (:meth:`coco_ground_truth`).
    * Splits: one JSON is split by seed into train / validation (``val_fraction``) /
      test (``test_fraction``) images.
    """

    name = "coco"

    def _json_path(self) -> Path:
        if not self.data.path:
            raise ConfigError(
                "data.path: set it to a COCO instances JSON, e.g. "
                "annotations/instances_val2017.json (data.source=coco)"
            )
        path = Path(self.data.path).expanduser()
        if not path.is_file():
            raise DataError(f"data.path {path} is not a file: give the COCO annotation JSON")
        return path

    def prepare(self) -> DatasetSpec:
        path = self._json_path()
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes): give a COCO instances JSON")
        try:
            coco = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(coco, dict):
            raise DataError(
                f"{path}: not a COCO instances file (the top level is a {type(coco).__name__}, not an "
                "object with images, annotations and categories lists)"
            )
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)]
        if missing:
            raise DataError(f"{path}: not a COCO instances file (no {', '.join(missing)} list)")
        image_dir = Path(self.data.image_dir).expanduser() if self.data.image_dir else path.parent
        categories = self._categories(path, coco["categories"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        class_names = [str(c["name"]) for c in categories]
        skipped, images, known_images = [], {}, set()
        for k, im in enumerate(coco["images"]):
            im_id = im.get("id") if isinstance(im, dict) else None
            where = f"images[{k}]" + (f" (id {im_id})" if _is_id(im_id) else "")
            problem = None
            if not isinstance(im, dict):
                problem = f"is a {type(im).__name__}, not an object with id and file_name"
            elif not _is_id(im_id):
                problem = f"id {im_id!r} is not an integer or string"
            elif im_id in known_images:
                problem = f"id {im_id} appears again (the first one is kept)"
            elif not isinstance(im.get("file_name"), str) or not im["file_name"].strip():
                problem = f"file_name {im.get('file_name')!r} is not a file name"
            if problem:
                skipped.append({"file": str(path), "reason": f"{where}: {problem}"})
                continue
            known_images.add(im_id)
            file = image_dir / im["file_name"]
            info, reason = _image_info(file, self.data.max_image_pixels)
            if reason:
                skipped.append({"file": str(file), "reason": f"{reason} (image id {im_id})"})
                continue
            size = info.size  # upright: an EXIF-turned photo's boxes are drawn on it upright
            declared = (im.get("width"), im.get("height"))
            if all(v is not None for v in declared):
                if not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in declared
                ):
                    skipped.append(
                        {
                            "file": str(path),
                            "reason": f"{where}: width {declared[0]!r} and height "
                            f"{declared[1]!r} are not numbers",
                        }
                    )
                    continue
                if tuple(int(v) for v in declared) != size:
                    skipped.append(
                        {
                            "file": str(file),
                            "reason": f"{path.name} says {declared[0]}x{declared[1]}, "
                            f"the image is {size[0]}x{size[1]} (image id {im_id})"
                            + size_mismatch_hint(info, tuple(int(v) for v in declared)),
                        }
                    )
                    continue
            images[im_id] = {
                "path": str(file.resolve()),
                "width": size[0],
                "height": size[1],
                "boxes": [],
                "labels": [],
                "ignore": [],
                "image_id": im_id,
            }
            if info.orientation != 1:  # the pipeline turns the image upright, not the boxes
                images[im_id]["orientation"] = info.orientation
        for k, ann in enumerate(coco["annotations"]):
            if not isinstance(ann, dict):
                skipped.append(
                    {
                        "file": str(path),
                        "reason": f"annotations[{k}] is a {type(ann).__name__}, not an "
                        "object with image_id, category_id and bbox",
                    }
                )
                continue
            where = f"annotation {ann.get('id')}" if _is_id(ann.get("id")) else f"annotations[{k}]"
            image_id = ann.get("image_id")
            rec = images.get(image_id) if _is_id(image_id) else None
            if rec is None:
                if not _is_id(image_id) or image_id not in known_images:
                    skipped.append(
                        {"file": str(path), "reason": f"{where}: image_id {image_id!r} is not in images"}
                    )
                continue  # its image was skipped already, and named
            category = ann.get("category_id")
            if not _is_id(category) or category not in index:
                skipped.append(
                    {
                        "file": str(path),
                        "reason": f"{where}: category_id {category!r} "
                        f"is not in categories (ids {', '.join(str(c) for c in index)})",
                    }
                )
                continue
            bbox = ann.get("bbox")
            if (
                not isinstance(bbox, list)
                or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
            ):
                skipped.append(
                    {"file": str(path), "reason": f"{where}: bbox {bbox!r} is not [x, y, w, h] numbers"}
                )
                continue
            box, reason = _clip_box(coco_box_to_xyxy(*bbox), rec["width"], rec["height"])
            if reason:
                skipped.append({"file": rec["path"], "reason": f"{where}: {reason} (bbox {bbox})"})
                continue
            rec["boxes"].append(box)
            rec["labels"].append(index[category])
            rec["ignore"].append(bool(ann.get("iscrowd")))
        records = {"train": list(images.values())}  # in the JSON's order
        return self._finish(
            path,
            records,
            class_names,
            skipped,
            {"category_ids": [c["id"] for c in categories]},
            name=path.stem,
            tally={"crowd_annotations": lambda rec: sum(rec["ignore"])},
        )

    def coco_ground_truth(self, spec: DatasetSpec, split: str) -> dict | None:
        """What pycocotools needs to score ``split`` against the original annotation file:
        ``{"annotation_file", "image_ids" (in load order), "category_ids" (label k -> id)}``;
        None for a manifest written before image ids were kept (prepare again)."""
        manifest = read_manifest(spec.location)
        records = manifest["splits"].get(split, [])
        if any("image_id" not in r for r in records):
            return None
        return {
            "annotation_file": manifest["root"],
            "image_ids": [r["image_id"] for r in records],
            "category_ids": list(spec.extra["category_ids"]),
        }

    @staticmethod
    def _categories(path: Path, categories: list) -> list:
        """The categories sorted by id; a DataError naming the first bad entry (they are the
        class list, so one bad entry is not skipped)."""
        if not categories:
            raise DataError(f"{path}: the categories list is empty")
        seen = set()
        for k, c in enumerate(categories):
            if not isinstance(c, dict):
                raise DataError(
                    f"{path}: categories[{k}] is a {type(c).__name__}, not an object with id and name"
                )
            if not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
                raise DataError(f"{path}: categories[{k}] has id {c.get('id')!r}: category ids are integers")
            if c["id"] in seen:
                raise DataError(f"{path}: categories[{k}]: id {c['id']} appears twice")
            if not isinstance(c.get("name"), str) or not c["name"].strip():
                raise DataError(f"{path}: categories[{k}] (id {c['id']}) has no name")
            seen.add(c["id"])
        return sorted(categories, key=lambda c: c["id"])


def _is_id(value) -> bool:
    """A COCO id: an integer (or a string, as some exporters write them), never a bool or list."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)
