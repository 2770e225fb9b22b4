"""``folder``: a folder of class sub-folders (classification), optionally already split."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from cnn_apps.data.sources.base import Source, _tf, register_source
from cnn_apps.data.sources.images import _image_info, decode_image_file
from cnn_apps.data.sources.records import (
    _class_counts,
    select_classes,
    skipped_summary,
    stratified_split,
    stratified_subset,
    subset_seed,
)
from cnn_apps.data.spec import SPLITS, DatasetSpec
from cnn_apps.errors import ConfigError, DataError

log = logging.getLogger("cnn_apps")


def _scan_class_dirs(root: Path) -> dict:
    """``{class name: [files]}`` for the sub-folders of ``root`` (sorted, hidden ones skipped)."""
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
    return out


_SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}


@register_source("folder")
class FolderSource(Source):
    """A folder of class sub-folders (``root/<class>/*.jpg``), or one already split
    into ``train/``, ``val/`` (or ``validation/``) and ``test/``, each holding class
    sub-folders. Missing splits are made by a stratified split of train.
    Files that cannot be decoded, or whose header claims more than ``data.max_image_pixels``
    pixels, are skipped and reported by name; EXIF-turned photos are read upright.

    Every class needs usable training images (in ``train/``, or in the one folder): a class
    sub-folder that is empty, holds only skipped files, or is missing from ``train/`` while
    ``val/`` or ``test/`` has it, is a DataError naming the folder, never a silent class
    with no examples. With ``data.skip_empty_classes: true`` such a class is left out with a
    logged warning (it is not a class; its validation/test images are skipped and named;
    ``spec.extra["empty_classes_left_out"]`` lists it). A class with training images but
    none in ``val/`` or ``test/`` is fine: small splits may miss a class."""

    name = "folder"
    selects_classes = True

    def _root(self) -> Path:
        if not self.data.path:
            raise ConfigError("data.path: set it to the folder of class sub-folders (data.source=folder)")
        root = Path(self.data.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path {root} is not a folder")
        return root

    def _manifest_path(self, fingerprint: str) -> Path:
        return Path(self.data.data_dir) / "folder" / fingerprint / "manifest.csv"

    def prepare(self) -> DatasetSpec:
        root = self._root()
        split_dirs = {}
        for split, names in _SPLIT_DIRS.items():
            for n in names:
                if (root / n).is_dir():
                    split_dirs[split] = root / n
                    break
        if split_dirs and "train" not in split_dirs:
            raise DataError(f"{root} has {', '.join(p.name for p in split_dirs.values())}/ but no train/")
        split_dirs = split_dirs or {"train": root}
        files = {s: _scan_class_dirs(p) for s, p in split_dirs.items()}
        class_names = sorted({c for per_class in files.values() for c in per_class})
        chosen = select_classes(class_names, self.data.classes, f"{self.name} ({root})")
        if chosen is not None:  # data.classes: the other class folders are not read at all
            class_names = [class_names[i] for i in chosen]
            files = {
                s: {c: p for c, p in per_class.items() if c in class_names} for s, per_class in files.items()
            }
        if len(class_names) < 2:
            raise DataError(f"{root}: need at least two class sub-folders, found {class_names or 'none'}")
        skipped, rows = [], {s: [] for s in files}
        for split, per_class in files.items():
            for cls, paths in per_class.items():
                for p in paths:
                    info, reason = _image_info(p, self.data.max_image_pixels)
                    if reason:
                        skipped.append({"file": str(p), "reason": reason})
                    else:
                        rows[split].append((str(p.resolve()), cls, info.orientation))
        if not rows["train"]:
            raise DataError(f"{root}: no readable images in the training folders{skipped_summary(skipped)}")
        empty = self._empty_classes(class_names, rows["train"], split_dirs, files, skipped)
        if empty:
            class_names = [c for c in class_names if c not in empty]
            for split in rows:
                for path, cls, _ in rows[split]:
                    if cls in empty:
                        skipped.append(
                            {
                                "file": path,
                                "reason": f"its class {cls} has no training images and is left out "
                                "(data.skip_empty_classes)",
                            }
                        )
                rows[split] = [r for r in rows[split] if r[1] not in empty]
            if len(class_names) < 2:
                raise DataError(
                    f"{root}: need at least two classes with training images, found {class_names or 'none'} "
                    f"(left out as empty: {', '.join(empty)})"
                )
        index = {c: i for i, c in enumerate(class_names)}
        rows = {s: [(path, index[cls], o) for path, cls, o in r] for s, r in rows.items()}
        rows = self._complete_splits(rows)
        manifest = self._manifest_path(self.config.data_fingerprint())
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["split", "path", "label", "orientation"])
            for split in SPLITS:
                for path, label, orientation in rows.get(split, []):
                    w.writerow([split, path, label, orientation])
        counts = {s: len(rows[s]) for s in SPLITS if rows.get(s)}
        class_counts = {s: _class_counts([r[1] for r in rows[s]], class_names) for s in counts}
        channels = self.data.channels or 3
        return self._spec(
            class_names=class_names,
            image_shape=[None, None, channels],
            counts=counts,
            class_counts=class_counts,
            location=str(manifest.resolve()),
            skipped=skipped,
            name=root.name,
            extra={"empty_classes_left_out": empty} if empty else {},
        )

    def _empty_classes(self, class_names, train_rows, split_dirs, files, skipped) -> list:
        """The classes without a usable training image: a DataError naming their folders, or
        (``data.skip_empty_classes``) their names, each logged as a warning. A class may
        lack validation or test images (small splits); without training images it would be
        a class the model can never predict, counted in every metric."""
        have = {cls for _, cls, _ in train_rows}
        problems = {}
        for cls in class_names:
            if cls in have:
                continue
            folder = split_dirs["train"] / cls
            if cls not in files["train"]:
                elsewhere = ", ".join(str(split_dirs[s] / cls) for s in files if cls in files[s])
                problems[cls] = f"class folder {folder} does not exist (the class comes from {elsewhere})"
            elif not files["train"][cls]:
                problems[cls] = f"class folder {folder} has no images"
            else:
                bad = [s for s in skipped if Path(s["file"]).is_relative_to(folder)]
                problems[cls] = (
                    f"class folder {folder} has no usable images ({len(bad)} skipped, e.g. "
                    f"{Path(bad[0]['file']).name}: {bad[0]['reason']})"
                )
        if not problems:
            return []
        if not self.data.skip_empty_classes:
            raise DataError(
                "; ".join(problems.values()) + ": a class without training images is one the model can "
                "never learn; add images, remove the folder, or set data.skip_empty_classes=true to leave "
                "it out"
            )
        for text in problems.values():
            log.warning("%s: left out, not a class (data.skip_empty_classes)", text)
        return sorted(problems)

    def _complete_splits(self, rows: dict) -> dict:
        fractions = {}
        if "test" not in rows:
            fractions["test"] = self.data.test_fraction
        if "validation" not in rows:
            fractions["validation"] = self.data.val_fraction
        train = rows["train"]
        labels = np.array([r[1] for r in train])
        if fractions:
            parts = stratified_split(labels, fractions, self.data.seed)
            for name in fractions:
                rows[name] = [train[i] for i in parts[name]]
            train = [train[i] for i in parts["rest"]]
            labels = labels[parts["rest"]]
        if self.data.max_train_examples:
            keep = stratified_subset(labels, self.data.max_train_examples, subset_seed(self.data))
            train = [train[i] for i in keep]
        rows["train"] = train
        return rows

    def load(self, spec: DatasetSpec, split: str):
        tf = _tf()
        paths, labels, orientations = [], [], []
        try:
            with open(spec.location, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    if row["split"] == split:
                        paths.append(row["path"])
                        labels.append(int(row["label"]))
                        orientations.append(int(row.get("orientation") or 1))  # none in an old manifest
        except FileNotFoundError as exc:
            raise DataError(f"manifest {spec.location} is gone: run `cnn-apps prepare` again") from exc
        channels = spec.channels
        if any(o != 1 for o in orientations):  # EXIF-turned photos among them: turn those upright

            def decode_turned(path, label, orientation):
                return {"image": decode_image_file(path, channels, orientation), "label": label}

            ds = tf.data.Dataset.from_tensor_slices(
                (paths, np.asarray(labels, np.int64), np.asarray(orientations, np.int32))
            )
            return ds.map(decode_turned, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        def decode(path, label):
            return {"image": decode_image_file(path, channels), "label": label}

        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int64)))
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
