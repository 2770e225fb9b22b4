"""``voc``: a Pascal VOC-style folder of XML annotations (detection); VOC's 1-based
inclusive boxes are converted here, at the edge (:func:`voc_box_to_xyxy`)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from cnn_apps.data.sources.base import register_source
from cnn_apps.data.sources.detection_manifest import _clip_box, _DetectionManifestSource
from cnn_apps.data.sources.images import IMAGE_EXTENSIONS, _image_info, size_mismatch_hint
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.errors import ConfigError, DataError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_VOC_SETS = {"train": "train", "val": "validation", "test": "test"}  # ImageSets/Main/<name>.txt -> split


def voc_box_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> list:
    """VOC XML ``bndbox`` (1-based, inclusive: a box covering pixels 1..3 has
    ``xmin=1, xmax=3``) to our xyxy pixels (0-based edges: ``x1 = xmin - 1``,
    ``x2 = xmax``), so that ``x2 - x1`` is the width in pixels."""
    return [float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax)]


@register_source("voc")
class VocSource(_DetectionManifestSource):
    """A Pascal VOC-style folder: ``root/Annotations/<id>.xml``, ``root/JPEGImages/``,
    and optionally ``root/ImageSets/Main/{train,val,trainval,test}.txt``.

    * Boxes: the XML's 1-based inclusive ``xmin..xmax`` become xyxy pixels with
      ``x1 = xmin - 1, x2 = xmax`` (and so for y; :func:`voc_box_to_xyxy`).
    * Classes: the sorted ``name`` values of the objects; the 20 VOC classes (in
      their usual, alphabetical, order) when all names are VOC classes and the
      folder is named like ``VOC2007`` or all 20 occur, so labels match real VOC.
    * ``difficult`` objects stay in the data flagged ``ignore`` (unless
      ``data.keep_difficult``, which makes them ordinary objects): the pipeline leaves them
      out of the training targets and the evaluation ignores them as the VOC devkit does
      (a detection on one is neither a true nor a false positive). They are counted per
      split in ``extra["difficult_boxes"]`` and not in the class counts.
    * Splits: ``train.txt``, ``val.txt``, ``test.txt`` when present (``trainval.txt``
      minus ``val.txt`` is train when ``train.txt`` is missing); else a seeded split.
    """

    name = "voc"

    def _root(self) -> Path:
        if not self.data.path:
            raise ConfigError(
                "data.path: set it to the VOC folder holding Annotations/ and JPEGImages/ (data.source=voc)"
            )
        root = Path(self.data.path).expanduser()
        if not (root / "Annotations").is_dir():
            raise DataError(
                f"data.path {root} has no Annotations/ folder: not a VOC-style folder "
                "(Annotations/*.xml, JPEGImages/*.jpg)"
            )
        return root

    @staticmethod
    def _read_set(path: Path) -> list:
        ids = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.append(line.split()[0])
        return ids

    def _split_ids(self, root: Path) -> dict:
        main = root / "ImageSets" / "Main"
        sets = {
            n: self._read_set(main / f"{n}.txt")
            for n in ("train", "val", "trainval", "test")
            if (main / f"{n}.txt").is_file()
        }
        if not sets:
            return {"train": sorted(p.stem for p in (root / "Annotations").glob("*.xml"))}
        ids = {_VOC_SETS[n]: v for n, v in sets.items() if n in _VOC_SETS}
        if "train" not in ids and "trainval" in sets:
            val = set(ids.get("validation", []))
            ids["train"] = [i for i in sets["trainval"] if i not in val]
        if "train" not in ids:
            raise DataError(
                f"{main} has {', '.join(f'{n}.txt' for n in sets)} but no train.txt or trainval.txt"
            )
        return ids

    def _image_path(self, root: Path, image_id: str, filename: str | None) -> Path:
        folder = root / "JPEGImages"
        if filename and (folder / filename).is_file():
            return folder / filename
        for ext in IMAGE_EXTENSIONS:
            if (folder / f"{image_id}{ext}").is_file():
                return folder / f"{image_id}{ext}"
        return folder / (filename or f"{image_id}.jpg")  # missing: reported by the caller

    @staticmethod
    def parse_xml(path: Path) -> dict:
        """One VOC annotation: ``filename``, ``width``, ``height`` (None when absent) and
        ``objects`` [{``name``, ``difficult``, ``box`` (xyxy pixels) or ``error``}].
        Raises DataError when the file is not VOC XML."""
        try:
            if path.stat().st_size == 0:
                raise DataError("empty file (0 bytes): not VOC XML; remove it or write its <annotation>")
            tree = ET.parse(path)
        except (ET.ParseError, OSError) as exc:
            raise DataError(f"not valid XML: {exc}") from exc
        ann = tree.getroot()
        if ann.tag != "annotation":
            raise DataError(f"root element is <{ann.tag}>, not <annotation>")

        def number(node, tag):
            text = node.findtext(tag)
            if text is None or not text.strip():
                raise ValueError(f"no <{tag}>")
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"<{tag}> {text.strip()!r} is not a number") from None

        size = ann.find("size")
        try:
            width, height = (
                (int(number(size, "width")), int(number(size, "height")))
                if size is not None
                else (None, None)
            )
        except (ValueError, OverflowError) as exc:
            raise DataError(f"bad <size>: {exc}") from exc
        objects = []
        for k, obj in enumerate(ann.findall("object")):
            name = (obj.findtext("name") or "").strip()
            item = {"name": name, "difficult": (obj.findtext("difficult") or "0").strip() == "1", "index": k}
            box = obj.find("bndbox")
            try:
                if not name:
                    raise ValueError("no <name>")
                if box is None:
                    raise ValueError("no <bndbox>")
                raw = [number(box, t) for t in ("xmin", "ymin", "xmax", "ymax")]
                item["raw"] = raw
                item["box"] = voc_box_to_xyxy(*raw)
            except ValueError as exc:
                item["error"] = str(exc)
            objects.append(item)
        return {
            "filename": (ann.findtext("filename") or "").strip() or None,
            "width": width or None,
            "height": height or None,
            "objects": objects,
        }

    def prepare(self) -> DatasetSpec:
        root = self._root()
        ids = self._split_ids(root)
        skipped, parsed = [], {}
        for split, split_ids in ids.items():
            parsed[split] = []
            for image_id in split_ids:
                xml_path = root / "Annotations" / f"{image_id}.xml"
                if not xml_path.is_file():
                    skipped.append(
                        {
                            "file": str(xml_path),
                            "reason": f"annotation file not found (listed in ImageSets/Main for {split})",
                        }
                    )
                    continue
                try:
                    ann = self.parse_xml(xml_path)
                except DataError as exc:
                    skipped.append({"file": str(xml_path), "reason": str(exc)})
                    continue
                image_path = self._image_path(root, image_id, ann["filename"])
                info, reason = _image_info(image_path, self.data.max_image_pixels)
                if reason:
                    skipped.append(
                        {"file": str(image_path), "reason": f"{reason} (annotation {xml_path.name})"}
                    )
                    continue
                size = info.size  # upright: an EXIF-turned photo's boxes are drawn on it upright
                if ann["width"] and (ann["width"], ann["height"]) != size:
                    skipped.append(
                        {
                            "file": str(xml_path),
                            "reason": f"<size> {ann['width']}x{ann['height']} "
                            f"differs from the image's {size[0]}x{size[1]} ({image_path.name})"
                            + size_mismatch_hint(info, (ann["width"], ann["height"])),
                        }
                    )
                    continue
                parsed[split].append((xml_path, image_path, info, ann))
        found = sorted(
            {o["name"] for v in parsed.values() for *_, ann in v for o in ann["objects"] if "error" not in o}
        )
        class_names = found
        if (
            found
            and set(found) <= set(VOC_CLASSES)
            and (len(found) == len(VOC_CLASSES) or re.fullmatch(r"VOC\d{4}", root.name))
        ):
            class_names = list(VOC_CLASSES)
        index = {c: i for i, c in enumerate(class_names)}
        records = {}
        for split, items in parsed.items():
            records[split] = []
            for xml_path, image_path, info, ann in items:
                w, h = info.size
                rec = {
                    "path": str(image_path.resolve()),
                    "width": w,
                    "height": h,
                    "boxes": [],
                    "labels": [],
                    "ignore": [],
                    "image_id": image_path.stem,
                }
                if info.orientation != 1:  # the pipeline turns the image upright, not the boxes
                    rec["orientation"] = info.orientation
                for o in ann["objects"]:
                    where = f"object {o['index']} ({o['name'] or 'no name'})"
                    if "error" in o:
                        skipped.append({"file": str(xml_path), "reason": f"{where}: {o['error']}"})
                        continue
                    box, reason = _clip_box(o["box"], w, h)
                    if reason:
                        xmin, ymin, xmax, ymax = o["raw"]
                        skipped.append(
                            {
                                "file": str(xml_path),
                                "reason": f"{where}: {reason} "
                                f"(xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g})",
                            }
                        )
                        continue
                    rec["boxes"].append(box)
                    rec["labels"].append(index[o["name"]])
                    rec["ignore"].append(bool(o["difficult"] and not self.data.keep_difficult))
                records[split].append(rec)
        if not class_names:
            raise DataError(f"{root}: no objects with a name in any annotation (see the skipped records)")
        return self._finish(
            root,
            records,
            class_names,
            skipped,
            {},
            name=root.name or "voc",
            tally={"difficult_boxes": lambda rec: sum(rec["ignore"])},
        )
