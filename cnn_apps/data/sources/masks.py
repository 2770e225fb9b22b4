"""Segmentation from folders of images and masks (``data.source: masks``).

Layout (``data.path: ROOT``)::

    ROOT/images/<name>.jpg        any of .jpg .jpeg .png .bmp .gif; grey or RGBA become data.channels (3)
    ROOT/masks/<name>.png         the same name, PNG
    ROOT/classes.txt              optional: one class name per line, background NOT listed;
                                  line k is mask value k (1-based), value 0 is background
    ROOT/splits/train.txt         optional: one <name> per line; also val.txt (or validation.txt), test.txt

or a Pascal VOC 2012 folder: ``ROOT/JPEGImages/``, ``ROOT/SegmentationClass/`` and
optionally ``ROOT/ImageSets/Segmentation/{train,val,trainval,test}.txt``, with the 20
VOC class names. VOC's ``val`` becomes our test split (unless a ``test.txt`` exists,
then it is validation), and validation is carved from train by ``data.val_fraction``.

Mask values: 0 background, k for the class on line k of ``classes.txt`` (so class k-1 of
``spec.class_names``), 255 ignore ("void": kept as 255, left out of loss and metrics).
Without ``classes.txt`` the classes are ``class1 .. classN``, N the largest value seen.
A mask PNG may be

* single channel (mode ``L``, or 16-bit, or 1-bit): the values are the class ids;
* a palette PNG (mode ``P``, VOC's ``SegmentationClass``): the palette *indices* are the
  class ids (read raw, never converted to colours), 255 the void border;
* RGB(A) in the VOC colour map (:func:`voc_colormap`): colours become ids, (224, 224, 192)
  is void -> 255.

Prepare reads every mask once, checks it, and writes it as a single-channel id PNG with a
manifest under ``data_dir/masks/``; load decodes the images and those id masks with
tf.data. Images may differ in size: the pipeline resizes images bilinearly and masks with
nearest neighbour only, so no new mask values appear. Bad records are skipped and named in
``spec.skipped`` with the reason: a missing or undecodable image or mask, an image over
``data.max_image_pixels`` (checked from its header, before decoding), a mask of another
size than its image, an unknown colour, or a value above the class count other than 255.
A photo with an EXIF orientation is read upright and its mask is taken to be drawn on the
upright image, as annotation tools show it (see :mod:`cnn_apps.data.sources.images`).
Splits: the lists when present, else a seeded split (``test_fraction``, ``val_fraction``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cnn_apps.data.sources.base import Source, _tf, register_source
from cnn_apps.data.sources.images import IMAGE_EXTENSIONS, _image_info, decode_image_file, size_mismatch_hint
from cnn_apps.data.sources.records import _random_split, read_manifest, skipped_summary, write_manifest
from cnn_apps.data.sources.voc import VOC_CLASSES
from cnn_apps.data.spec import SPLITS, DatasetSpec
from cnn_apps.errors import ConfigError, DataError

IGNORE = 255  # mask value of "void" pixels: kept in the data, left out of loss and metrics


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (n, 3) uint8: colour of class id i (0 black, 1 (128, 0, 0),
    ..., 255 (224, 224, 192) the void border). Bit j of i's low three bits goes to the top
    bits of r, g, b in turn (VOC devkit's ``labelcolormap``)."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


_COLOUR_TO_ID = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(voc_colormap())}


def colours_to_ids(rgb: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 VOC colour mask to (H, W) uint8 class ids; DataError naming the
    first colour that is not in the VOC colour map (and where it is)."""
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(key.ravel(), return_inverse=True)
    ids = np.zeros(len(colours), np.uint8)
    for k, colour in enumerate(colours):
        if int(colour) not in _COLOUR_TO_ID:
            y, x = np.argwhere(key == colour)[0]
            raise DataError(
                f"unknown colour {tuple(int(v) for v in rgb[y, x])} at x={x}, y={y}: not in the VOC "
                "colour map (RGB masks must use VOC colours; or save class ids as a one-channel PNG)"
            )
        ids[k] = _COLOUR_TO_ID[int(colour)]
    return ids[inverse].reshape(key.shape)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as (H, W) uint8 class ids (see the module docstring for the modes);
    DataError with the reason when it cannot be used."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA"):
                return colours_to_ids(np.asarray(im.convert("RGB")))
            if mode not in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(
                    f"mask mode {mode} is not supported (use one-channel class ids, a palette PNG "
                    "or VOC colours)"
                )
            values = np.asarray(im)  # P: the palette indices themselves, not their colours
    except DataError:
        raise
    except Exception as exc:  # PIL raises many kinds for a broken file
        raise DataError(f"mask cannot be decoded: {exc}") from exc
    if values.size and int(values.max()) > 255:
        raise DataError(f"mask value {int(values.max())} is above 255 (values are class ids, 255 ignore)")
    return values.astype(np.uint8)


def pixel_counts(hist: np.ndarray, class_names: list) -> dict:
    """``{"background": n, name: n, ...}`` from a value histogram (mask value k+1 is class k)."""
    names = ["background", *class_names]
    return {n: int(hist[i]) for i, n in enumerate(names)}


def _read_list(path: Path) -> list:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@register_source("masks")
class MaskFolderSource(Source):
    """Image and mask folders (or a VOC 2012 folder) for segmentation; see the module docstring."""

    name = "masks"
    tasks = ("segmentation",)

    # ------------------------------------------------------------------ layout
    def _layout(self) -> dict:
        if not self.data.path:
            raise ConfigError(
                "data.path: set it to the folder holding images/ and masks/ (or a VOC2012 folder "
                "with JPEGImages/ and SegmentationClass/) (data.source=masks)"
            )
        root = Path(self.data.path).expanduser()
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
            return {
                "root": root,
                "images": root / "JPEGImages",
                "masks": root / "SegmentationClass",
                "voc": True,
            }
        if not (root / "images").is_dir() or not (root / "masks").is_dir():
            raise DataError(
                f"data.path {root} has no images/ and masks/ folders (nor VOC's JPEGImages/ and "
                "SegmentationClass/): see cnn_apps.data.sources.masks for the layout"
            )
        return {"root": root, "images": root / "images", "masks": root / "masks", "voc": False}

    def _class_names(self, root: Path, voc: bool):
        """The names from classes.txt, VOC's 20, or None (named by the largest value later)."""
        path = root / "classes.txt"
        if not path.is_file():
            return list(VOC_CLASSES) if voc else None
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        while names and not names[-1]:
            names.pop()
        for k, n in enumerate(names, 1):
            if not n:
                raise DataError(f"{path}: line {k} is empty (line k names mask value k)")
            if k == 1 and n.lower() in ("background", "_background_", "__background__"):
                raise DataError(
                    f"{path}: line 1 is '{n}': list only the classes (mask value 0 is background, "
                    "line k is value k)"
                )
        if not names or len(names) >= IGNORE:
            raise DataError(f"{path}: give 1 to 254 class names, one a line, found {len(names)}")
        if len(set(names)) != len(names):
            raise DataError(f"{path}: class names repeat")
        return names

    def _split_lists(self, layout: dict) -> dict | None:
        """``{split: [names]}`` from the split lists, or None when there are none."""
        root = layout["root"]
        if layout["voc"]:
            folder = root / "ImageSets" / "Segmentation"
            sets = {
                n: _read_list(folder / f"{n}.txt")
                for n in ("train", "val", "trainval", "test")
                if (folder / f"{n}.txt").is_file()
            }
            if not sets:
                return None
            if "train" not in sets and "trainval" in sets:
                val = set(sets.get("val", []))
                sets["train"] = [n for n in sets["trainval"] if n not in val]
            # VOC's test masks are not public: its val is our test, unless a test list exists
            out = {"train": sets.get("train"), "test": sets.get("test", sets.get("val"))}
            if "test" in sets and "val" in sets:
                out["validation"] = sets["val"]
        else:
            folder = root / "splits"
            names = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
            out = {}
            for split, files in names.items():
                for f in files:
                    if (folder / f"{f}.txt").is_file():
                        out[split] = _read_list(folder / f"{f}.txt")
                        break
            if not out:
                return None
        if out.get("train") is None:
            raise DataError(f"{folder} has split lists but no train.txt")
        return {s: v for s, v in out.items() if v is not None}

    # ------------------------------------------------------------------ prepare
    def _manifest_path(self, root: Path) -> Path:
        key = hashlib.sha256(f"{self.config.data_fingerprint()}:{root.resolve()}".encode()).hexdigest()[:12]
        return Path(self.data.data_dir) / self.name / key / "manifest.json"

    def prepare(self) -> DatasetSpec:
        layout = self._layout()
        root, image_dir, mask_dir = layout["root"], layout["images"], layout["masks"]
        skipped = []
        images = {}  # name -> image file
        for f in sorted(p for p in image_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(
                    {
                        "file": str(f),
                        "reason": f"not an image file (extension {f.suffix or 'none'}; "
                        f"use {', '.join(IMAGE_EXTENSIONS)})",
                    }
                )
            elif f.stem in images:
                skipped.append(
                    {"file": str(f), "reason": f"another image has the same name ({images[f.stem].name})"}
                )
            else:
                images[f.stem] = f
        lists = self._split_lists(layout)
        listed = lists is not None
        if lists is None:  # every image (VOC: every mask; most VOC images have none)
            stems = sorted(p.stem for p in mask_dir.glob("*.png")) if layout["voc"] else sorted(images)
            lists = {"train": stems}
            if not layout["voc"]:
                skipped += [
                    {"file": str(p), "reason": f"no image named {p.stem} in {image_dir.name}/"}
                    for p in sorted(mask_dir.glob("*.png"))
                    if p.stem not in images
                ]
        manifest = self._manifest_path(root)
        out_dir = manifest.parent / "masks"
        out_dir.mkdir(parents=True, exist_ok=True)
        records = {}
        for split, stems in lists.items():
            records[split] = []
            for stem in stems:
                image = images.get(stem)
                if image is None:
                    why = f"listed for {split}" if listed else f"its mask is {mask_dir.name}/{stem}.png"
                    skipped.append({"file": str(image_dir / stem), "reason": f"image not found ({why})"})
                    continue
                rec, bad = self._record(stem, image, mask_dir, out_dir, self.data.max_image_pixels)
                if bad:
                    skipped.append(bad)
                else:
                    records[split].append(rec)
        class_names = self._class_names(root, layout["voc"])
        named_by = "classes.txt" if (root / "classes.txt").is_file() else "VOC" if layout["voc"] else None
        if class_names is None:
            top = max(
                (int(np.flatnonzero(r["hist"][:IGNORE]).max(initial=0)) for v in records.values() for r in v),
                default=0,
            )
            if top == 0 and any(records.values()):
                raise DataError(
                    f"{mask_dir}: the masks hold no class pixels (only 0 background and 255 "
                    "ignore); write ROOT/classes.txt to name the classes"
                )
            class_names = [f"class{k}" for k in range(1, top + 1)]
        k = len(class_names)
        for split, recs in records.items():
            kept = []
            for rec in recs:
                above = np.flatnonzero(rec["hist"][k + 1 : IGNORE])
                if above.size:
                    skipped.append(
                        {
                            "file": rec["source_mask"],
                            "reason": f"mask value {k + 1 + above[0]} is above "
                            f"the {k} classes of {named_by} (values: 0 background, 1..{k}, 255 ignore)",
                        }
                    )
                else:
                    kept.append(rec)
            records[split] = kept
        if not records.get("train"):
            raise DataError(f"{root}: no usable training images with masks{skipped_summary(skipped)}")
        records = self._complete_splits(records)
        splits = {s: records[s] for s in SPLITS if records.get(s)}
        hists = {s: np.sum([r.pop("hist") for r in v], axis=0) for s, v in splits.items()}
        write_manifest(manifest, self.name, root, class_names, splits)
        channels = self.data.channels or 3
        return self._spec(
            class_names=class_names,
            image_shape=[None, None, channels],
            counts={s: len(v) for s, v in splits.items()},
            class_counts={s: pixel_counts(h, class_names) for s, h in hists.items()},
            location=str(manifest.resolve()),
            skipped=skipped,
            name=root.name or self.name,
            extra={
                "layout": "voc" if layout["voc"] else "images+masks",
                "ignored_pixels": {s: int(h[IGNORE]) for s, h in hists.items()},
            },
        )

    @staticmethod
    def _record(stem: str, image: Path, mask_dir: Path, out_dir: Path, max_pixels=None):
        """``(record, None)`` or ``(None, {"file", "reason"})`` for one image; the record's
        mask is written to ``out_dir`` as one-channel ids. An EXIF-turned photo's mask is
        taken to be drawn on the upright image (as annotation tools show it); the record
        keeps the orientation, and load turns the image, never the mask."""
        info, reason = _image_info(image, max_pixels)
        if reason:
            return None, {"file": str(image), "reason": reason}
        size = info.size
        mask_path = mask_dir / f"{stem}.png"
        if not mask_path.is_file():
            return None, {
                "file": str(image),
                "reason": f"mask not found (expected {mask_dir.name}/{stem}.png)",
            }
        try:
            ids = read_mask(mask_path)
        except DataError as exc:
            return None, {"file": str(mask_path), "reason": str(exc)}
        if (ids.shape[1], ids.shape[0]) != size:
            return None, {
                "file": str(mask_path),
                "reason": f"mask is {ids.shape[1]}x{ids.shape[0]}, its image "
                f"{image.name} is {size[0]}x{size[1]}"
                + size_mismatch_hint(info, (ids.shape[1], ids.shape[0])),
            }
        from PIL import Image

        out = out_dir / f"{stem}.png"
        Image.fromarray(ids).save(out)  # (H, W) uint8: mode L
        record = {
            "path": str(image.resolve()),
            "mask": str(out.resolve()),
            "source_mask": str(mask_path),
            "width": size[0],
            "height": size[1],
            "hist": np.bincount(ids.ravel(), minlength=256),
        }
        if info.orientation != 1:
            record["orientation"] = info.orientation
        return record, None

    def _complete_splits(self, records: dict) -> dict:
        fractions = {}
        if "test" not in records:
            fractions["test"] = self.data.test_fraction
        if "validation" not in records:
            fractions["validation"] = self.data.val_fraction
        train = records["train"]
        if fractions:
            parts = _random_split(train, fractions, self.data.seed)
            records.update({name: parts[name] for name in fractions})
            train = parts["rest"]
        if self.data.max_train_examples and self.data.max_train_examples < len(train):
            keep = np.random.default_rng(self.data.seed).permutation(len(train))[
                : self.data.max_train_examples
            ]
            train = [train[i] for i in sorted(keep)]
        records["train"] = train
        return records

    # ------------------------------------------------------------------ load
    def load(self, spec: DatasetSpec, split: str):
        tf = _tf()
        manifest = read_manifest(spec.location)
        records = manifest["splits"].get(split, [])
        channels = spec.channels
        slices = {  # typed even when the split is empty
            "path": tf.constant([r["path"] for r in records], tf.string),
            "mask": tf.constant([r["mask"] for r in records], tf.string),
        }
        if any(r.get("orientation", 1) != 1 for r in records):  # EXIF-turned photos: turned upright
            slices["orientation"] = tf.constant([r.get("orientation", 1) for r in records], tf.int32)
        ds = tf.data.Dataset.from_tensor_slices(slices)

        def decode(x):
            image = decode_image_file(x["path"], channels, x.get("orientation"))
            mask = tf.io.decode_png(tf.io.read_file(x["mask"]), channels=1)  # written by prepare: ids
            return {"image": image, "mask": mask}

        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
