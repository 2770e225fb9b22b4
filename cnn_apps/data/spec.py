"""What a prepared dataset is, as the prepare stage hands it to later stages.

``prepare`` writes a :class:`DatasetSpec` as ``dataset.json`` into its MLflow run;
``train`` reads it back from ``--from-run`` and asks the same source to load the
splits. The spec never holds pixels, only where they are and what they contain.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from cnn_apps.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass
class DatasetSpec:
    source: str  # shapes | folder | fashion_mnist | tfds | digits | opencv_digits | voc | coco | masks
    task: str
    fingerprint: str  # Config.data_fingerprint(): same settings, same data
    class_names: list
    image_shape: list  # native [H, W, C]; H, W are None when images vary in size
    counts: dict  # split -> examples
    class_counts: dict  # split -> {class name -> examples} (classification) or boxes (detection)
    location: str  # where the source keeps the prepared data
    data: dict = field(default_factory=dict)  # the data config that made it
    skipped: list = field(default_factory=list)  # [{"file": ..., "reason": ...}] records left out
    extra: dict = field(default_factory=dict)  # source-specific, e.g. the TFDS config name
    name: str | None = None  # a short dataset name for run names, e.g. "shapes"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.image_shape[-1])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "dataset.json") -> DatasetSpec:
        try:
            values = json.loads(text)
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where} is not a dataset spec written by `cnn-apps prepare`: {exc}") from exc
