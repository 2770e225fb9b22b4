"""``tfds``: any TFDS catalog dataset, for classification, detection (``voc/2007``,
``coco/2017``) and segmentation (``oxford_iiit_pet``); TFDS boxes and trimaps are converted
here, at the edge."""

from __future__ import annotations

import os

import numpy as np

from cnn_apps.config import Config
from cnn_apps.data.sources.base import Source, _quiet_tfds, _tf, register_source
from cnn_apps.data.sources.images import set_channels
from cnn_apps.data.sources.online import is_online
from cnn_apps.data.sources.records import _class_counts
from cnn_apps.data.spec import DatasetSpec
from cnn_apps.errors import ConfigError, DataError


def tfds_boxes_to_xyxy(bbox, height, width, one_based: bool = False):
    """TFDS ``BBoxFeature`` boxes (N, 4), normalized ``ymin, xmin, ymax, xmax``, to
    xyxy pixels (N, 4) float32 for an image of ``height`` x ``width``.

    ``one_based``: the boxes were made from VOC XML as ``xmin / width`` (TFDS'
    ``voc`` builder does so), so ``x1, y1`` are 1-based; subtracting 1 gives the
    same boxes as :func:`voc_box_to_xyxy` on the XML. Works on numpy and tensors.
    """
    tf = _tf()
    bbox = tf.reshape(tf.cast(bbox, tf.float32), (-1, 4))
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(bbox, num=4, axis=1)
    shift = 1.0 if one_based else 0.0
    return tf.stack(
        [tf.maximum(xmin * w - shift, 0.0), tf.maximum(ymin * h - shift, 0.0), xmax * w, ymax * h], 1
    )


# TFDS detection datasets whose test split carries no annotations (images only)
_TFDS_UNLABELED_TEST = ("coco", "voc/2012")


def pet_trimap_to_mask(trimap):
    """oxford_iiit_pet's ``segmentation_mask`` trimap (H, W, 1) (1 pet, 2 background,
    3 border) to our mask (H, W, 1) uint8: 0 background, 1 pet, 255 border (ignored:
    the outline is ambiguous). Works on numpy and tensors."""
    tf = _tf()
    lookup = tf.constant([255, 1, 0, 255], tf.uint8)  # indexed by the trimap value; 0 never occurs
    return tf.gather(lookup, tf.minimum(tf.cast(trimap, tf.int32), 3))


# TFDS segmentation datasets: name -> (class names, mask feature, conversion to our mask)
_TFDS_SEGMENTATION = {"oxford_iiit_pet": (("pet",), "segmentation_mask", pet_trimap_to_mask)}


@register_source("tfds")
class TfdsSource(Source):
    """Any TFDS catalog dataset with (image, label) supervised keys, e.g. ``cifar10``;
    for detection, one with ``objects/bbox`` and ``objects/label`` (``voc/2007``,
    ``coco/2017``). Downloads into ``data_dir`` when online; fails at once, with the
    fix, when offline.

    Detection: boxes become xyxy pixels in the map (:func:`tfds_boxes_to_xyxy`);
    objects marked ``is_difficult`` (VOC; unless ``data.keep_difficult``) or
    ``is_crowd`` (COCO) and boxes without area are left out of the targets, and
    prepare counts them per split in ``extra`` (``left_out_boxes``).

    Segmentation: ``oxford_iiit_pet`` (class "pet"; its trimap becomes 0 background,
    1 pet, 255 border, :func:`pet_trimap_to_mask`); class counts are pixels."""

    name = "tfds"
    tasks = ("classification", "detection", "segmentation")

    def __init__(self, config: Config, tfds_name: str | None = None):
        super().__init__(config)
        self.tfds_name = tfds_name or config.data.tfds_name
        if not self.tfds_name:
            example = "voc/2007" if config.task == "detection" else "cifar10"
            raise ConfigError(
                f"data.tfds_name: name a TFDS catalog dataset, e.g. {example} (data.source=tfds)"
            )
        if config.task == "segmentation" and self.tfds_name.split(":")[0] not in _TFDS_SEGMENTATION:
            raise ConfigError(
                f"data.tfds_name: '{self.tfds_name}' is not a TFDS segmentation dataset this source "
                f"knows ({', '.join(_TFDS_SEGMENTATION)}); for your own masks use data.source=masks"
            )

    def _segmentation(self):
        """(class names, mask feature, conversion) of a TFDS segmentation dataset."""
        return _TFDS_SEGMENTATION[self.tfds_name.split(":")[0]]

    def _builder(self):
        tfds = _quiet_tfds()
        try:
            return tfds.builder(self.tfds_name, data_dir=self.data.data_dir)
        except Exception as exc:  # DatasetNotFoundError and friends
            raise DataError(f"TFDS has no dataset '{self.tfds_name}': {exc}".splitlines()[0]) from exc

    def _split_names(self, builder) -> dict:
        have = set(builder.info.splits.keys())
        if self.config.task == "detection" and self.tfds_name.startswith(_TFDS_UNLABELED_TEST):
            have.discard("test")  # no annotations there: carve test out of train instead
        val_pct = int(round(self.data.val_fraction * 100))
        test_pct = int(round(self.data.test_fraction * 100))
        out = {"train": "train"}
        if "test" not in have:
            out["test"] = f"train[:{test_pct}%]"
            out["train"] = f"train[{test_pct}%:]"
        else:
            out["test"] = "test"
        if "validation" in have:
            out["validation"] = "validation"
        else:
            lo = test_pct if "test" not in have else 0
            out["validation"] = f"train[{lo}%:{lo + val_pct}%]"
            out["train"] = f"train[{lo + val_pct}%:]"
        return out

    def _keys(self, builder):
        keys = builder.info.supervised_keys
        if not keys or len(keys) != 2:
            raise DataError(f"TFDS '{self.tfds_name}' has no (image, label) supervised keys")
        return keys

    def _objects(self, builder):
        """The detection features' ``objects`` dict; a DataError when there is none."""
        features = builder.info.features
        if "objects" not in features or not {"bbox", "label"} <= set(features["objects"].keys()):
            raise DataError(
                f"TFDS '{self.tfds_name}' has no objects/bbox and objects/label features: "
                "it is not a detection dataset (try voc/2007 or coco/2017)"
            )
        return features["objects"]

    def _keep(self, objects):
        """Boolean (N,) of the objects that become targets (see the class docstring)."""
        tf = _tf()
        bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4))
        keep = (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])
        if "is_difficult" in objects and not self.data.keep_difficult:
            keep &= tf.logical_not(tf.cast(objects["is_difficult"], tf.bool))
        if "is_crowd" in objects:
            keep &= tf.logical_not(tf.cast(objects["is_crowd"], tf.bool))
        return keep

    def _ensure_prepared(self, builder):
        if not builder.is_prepared():
            if not is_online():
                raise DataError(
                    f"TFDS '{self.tfds_name}' is not in {self.data.data_dir} and this machine is "
                    "offline. Fix: prepare it on a machine with internet and copy the data dir, "
                    "or use data.source=folder with local files."
                )
            builder.download_and_prepare()

    def prepare(self) -> DatasetSpec:
        builder = self._builder()
        self._ensure_prepared(builder)
        if self.config.task == "detection":
            return self._prepare_detection(builder)
        if self.config.task == "segmentation":
            return self._prepare_segmentation(builder)
        tfds = _quiet_tfds()
        image_key, label_key = self._keys(builder)
        names = list(builder.info.features[label_key].names)
        shape = list(builder.info.features[image_key].shape)
        if self.data.channels:
            shape[-1] = self.data.channels
        counts, class_counts = {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders={image_key: tfds.decode.SkipDecoding()})
            labels = [int(x[label_key]) for x in ds.as_numpy_iterator()]
            counts[split] = len(labels)
            class_counts[split] = _class_counts(labels, names)
        return self._spec(
            class_names=names,
            image_shape=shape,
            counts=counts,
            class_counts=class_counts,
            location=os.path.abspath(self.data.data_dir),
            extra={"tfds_name": self.tfds_name},
            name=self.tfds_name,
        )

    def _prepare_detection(self, builder) -> DatasetSpec:
        tfds = _quiet_tfds()
        names = list(self._objects(builder)["label"].names)
        counts, class_counts, empty, left_out = {}, {}, {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders={"image": tfds.decode.SkipDecoding()})
            ds = ds.map(lambda x: {"labels": x["objects"]["label"], "keep": self._keep(x["objects"])})
            labels, n, dropped = [], 0, 0
            for x in ds.as_numpy_iterator():
                kept = x["labels"][x["keep"]]
                labels.extend(int(v) for v in kept)
                empty[split] = empty.get(split, 0) + int(len(kept) == 0)
                dropped += int(len(x["keep"]) - len(kept))
                n += 1
            counts[split], left_out[split] = n, dropped
            class_counts[split] = _class_counts(labels, names)
        channels = self.data.channels or 3
        return self._spec(
            class_names=names,
            image_shape=[None, None, channels],
            counts=counts,
            class_counts=class_counts,
            location=os.path.abspath(self.data.data_dir),
            extra={"tfds_name": self.tfds_name, "images_without_objects": empty, "left_out_boxes": left_out},
            name=self.tfds_name.replace("/", "-"),
        )

    def _prepare_segmentation(self, builder) -> DatasetSpec:
        tfds, tf = _quiet_tfds(), _tf()
        names, key, convert = self._segmentation()
        counts, class_counts, ignored = {}, {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders={"image": tfds.decode.SkipDecoding()})
            ds = ds.map(
                lambda x: tf.math.bincount(
                    tf.cast(convert(x[key]), tf.int32), minlength=256, maxlength=256, dtype=tf.int64
                )
            )
            pixels, n = np.zeros(256, np.int64), 0
            for hist in ds.as_numpy_iterator():
                pixels, n = pixels + hist, n + 1
            counts[split], ignored[split] = n, int(pixels[255])
            class_counts[split] = {c: int(p) for c, p in zip(["background", *names], pixels)}
        channels = self.data.channels or 3
        return self._spec(
            class_names=list(names),
            image_shape=[None, None, channels],
            counts=counts,
            class_counts=class_counts,
            location=os.path.abspath(self.data.data_dir),
            extra={"tfds_name": self.tfds_name, "ignored_pixels": ignored},
            name=self.tfds_name,
        )

    def load(self, spec: DatasetSpec, split: str):
        builder = self._builder()
        tf = _tf()
        ds = builder.as_dataset(split=self._split_names(builder)[split], shuffle_files=False)
        channels = spec.channels
        if spec.task == "segmentation":
            _, key, convert = self._segmentation()
            return ds.map(lambda x: {"image": set_channels(x["image"], channels), "mask": convert(x[key])})
        if spec.task == "detection":
            self._objects(builder)
            one_based = self.tfds_name.startswith("voc")

            def convert(x):
                image = x["image"]
                keep = self._keep(x["objects"])
                boxes = tfds_boxes_to_xyxy(
                    x["objects"]["bbox"], tf.shape(image)[0], tf.shape(image)[1], one_based=one_based
                )
                return {
                    "image": set_channels(image, channels),
                    "boxes": tf.boolean_mask(boxes, keep),
                    "labels": tf.boolean_mask(tf.cast(x["objects"]["label"], tf.int64), keep),
                }

            return ds.map(convert)
        image_key, label_key = self._keys(builder)
        return ds.map(
            lambda x: {
                "image": set_channels(x[image_key], channels),
                "label": _tf().cast(x[label_key], "int64"),
            }
        )
