"""``folder``: a folder of class sub-folders (classification), optionally already split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cnn_apps.data.sources.base import Source, _tf, register_source
from cnn_apps.data.sources.images import _image_size, decode_image_file
from cnn_apps.data.sources.records import _class_counts, skipped_summary, stratified_split, stratified_subset
from cnn_apps.data.spec import SPLITS, DatasetSpec
from cnn_apps.errors import ConfigError, DataError


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
    Files that cannot be decoded are skipped and reported by name."""

    name = "folder"

    def _root(self) -> Path:
        if not self.data.path:
            raise ConfigError("data.path: set it to the folder of class sub-folders (data.source=folder)")
        root = Path(self.data.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path {root} is not a folder")
        return root

    def _manifest_path(self, fingerprint: str) -> Path:
        return Path(self.data.data_dir) / "folder" / fingerprint / "manifest.csv"

    @staticmethod
    def _check(path: Path):
        """None when ``path`` is an image TensorFlow can decode, else the reason."""
        return _image_size(path)[1]

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
        files = {s: _scan_class_dirs(p) for s, p in split_dirs.items()} or {"train": _scan_class_dirs(root)}
        class_names = sorted({c for per_class in files.values() for c in per_class})
        if len(class_names) < 2:
            raise DataError(f"{root}: need at least two class sub-folders, found {class_names or 'none'}")
        index = {c: i for i, c in enumerate(class_names)}
        skipped, rows = [], {s: [] for s in files}
        for split, per_class in files.items():
            for cls, paths in per_class.items():
                for p in paths:
                    reason = self._check(p)
                    if reason:
                        skipped.append({"file": str(p), "reason": reason})
                    else:
                        rows[split].append((str(p.resolve()), index[cls]))
        if not rows["train"]:
            raise DataError(f"{root}: no readable images in the training folders{skipped_summary(skipped)}")
        rows = self._complete_splits(rows)
        manifest = self._manifest_path(self.config.data_fingerprint())
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["split", "path", "label"])
            for split in SPLITS:
                for path, label in rows.get(split, []):
                    w.writerow([split, path, label])
        counts = {s: len(rows[s]) for s in SPLITS if rows.get(s)}
        class_counts = {s: _class_counts([lab for _, lab in rows[s]], class_names) for s in counts}
        channels = self.data.channels or 3
        return self._spec(
            class_names=class_names,
            image_shape=[None, None, channels],
            counts=counts,
            class_counts=class_counts,
            location=str(manifest.resolve()),
            skipped=skipped,
            name=root.name,
        )

    def _complete_splits(self, rows: dict) -> dict:
        fractions = {}
        if "test" not in rows:
            fractions["test"] = self.data.test_fraction
        if "validation" not in rows:
            fractions["validation"] = self.data.val_fraction
        train = rows["train"]
        labels = np.array([lab for _, lab in train])
        if fractions:
            parts = stratified_split(labels, fractions, self.data.seed)
            for name in fractions:
                rows[name] = [train[i] for i in parts[name]]
            train = [train[i] for i in parts["rest"]]
            labels = labels[parts["rest"]]
        if self.data.max_train_examples:
            keep = stratified_subset(labels, self.data.max_train_examples, self.data.seed)
            train = [train[i] for i in keep]
        rows["train"] = train
        return rows

    def load(self, spec: DatasetSpec, split: str):
        tf = _tf()
        paths, labels = [], []
        try:
            with open(spec.location, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    if row["split"] == split:
                        paths.append(row["path"])
                        labels.append(int(row["label"]))
        except FileNotFoundError as exc:
            raise DataError(f"manifest {spec.location} is gone: run `cnn-apps prepare` again") from exc
        channels = spec.channels

        def decode(path, label):
            return {"image": decode_image_file(path, channels), "label": label}

        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int64)))
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
