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


def tfds_mocked() -> bool:
    """True inside ``tfds.testing.mock_data``: TFDS' ``download_and_prepare`` is then its
    no-op and ``as_dataset`` yields fake examples of the real feature schema, so nothing
    needs the data dir or the network."""
    fn = _quiet_tfds().core.DatasetBuilder.download_and_prepare
    return getattr(fn, "__module__", "") == "tensorflow_datasets.testing.mocking"


def _common_length(objects: dict, keys) -> dict:
    """``objects``' ``keys`` cut to their shortest length. Real TFDS records give every
    object feature the same length (a no-op there); TFDS' fake examples
    (``tfds.testing.mock_data``) give each its own random length."""
    tf = _tf()
    n = tf.reduce_min(tf.stack([tf.shape(objects[k], out_type=tf.int32)[0] for k in keys]))
    return {k: objects[k][:n] for k in keys}


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

    Detection: elements are ``image``, ``boxes`` (N, 4) xyxy pixels
    (:func:`tfds_boxes_to_xyxy`), ``labels`` (N,) and ``ignore`` (N,) bool. Objects
    marked ``is_difficult`` (VOC; unless ``data.keep_difficult``, which makes them
    ordinary objects) or ``is_crowd`` (COCO) stay in the data flagged ``ignore``: the
    pipeline leaves them out of the training targets and the evaluation ignores them as
    the VOC devkit and COCOeval do. Prepare counts them per split in ``extra``
    (``difficult_boxes`` or ``crowd_annotations``) and not in the class counts;
    ``images_without_objects`` counts images left with no target. Boxes without area are
    left out of the data, counted in ``extra["left_out_boxes"]``. The unannotated test
    split of ``coco/*`` and ``voc/2012`` is replaced by a slice of train.

    Segmentation: ``oxford_iiit_pet`` (class "pet"; its trimap becomes 0 background,
    1 pet, 255 border, :func:`pet_trimap_to_mask`); class counts are pixels.

    Inside ``tfds.testing.mock_data`` (:func:`tfds_mocked`) nothing is downloaded and
    TFDS' fake examples are read (a mask is resized to its image, object features are
    cut to a common length: real records need neither)."""

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

    def _one_based(self) -> bool:
        """TFDS' ``voc`` boxes are VOC's 1-based pixels over the size (see :func:`tfds_boxes_to_xyxy`)."""
        return self.tfds_name.startswith("voc")

    def _ignore_flag(self, objects):
        """The objects feature that marks ignore regions, and the ``extra`` tally counting
        them: ``is_difficult`` (VOC; None with ``data.keep_difficult``: the tally stays, at 0)
        or ``is_crowd`` (COCO)."""
        if "is_difficult" in objects:
            return (None if self.data.keep_difficult else "is_difficult"), "difficult_boxes"
        if "is_crowd" in objects:
            return "is_crowd", "crowd_annotations"
        return None, None

    def _object_arrays(self, objects):
        """``bbox`` (N, 4) normalized, ``label`` (N,) int64, ``valid`` (N,) bool (the box has
        area in pixels; the others are left out) and ``ignore`` (N,) bool (see the class
        docstring)."""
        tf = _tf()
        flag, _ = self._ignore_flag(objects)
        keys = ["bbox", "label", *([flag] if flag else [])]
        objects = _common_length({k: objects[k] for k in keys}, keys)
        bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4))
        label = tf.cast(objects["label"], tf.int64)
        if self._one_based():  # VOC's inclusive xmin..xmax: xmin == xmax is one pixel wide
            ymin, xmin, ymax, xmax = tf.unstack(bbox, num=4, axis=1)
            valid = (ymax >= ymin) & (xmax >= xmin) & (ymax > 0) & (xmax > 0)
        else:
            valid = (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])
        ignore = tf.cast(objects[flag], tf.bool) if flag else tf.zeros_like(valid)
        return {"bbox": bbox, "label": label, "valid": valid, "ignore": ignore}

    def _ensure_prepared(self, builder):
        if not builder.is_prepared():
            if tfds_mocked():  # nothing to download: mock_data's fake examples need no files
                return
            if not is_online():
                raise DataError(
                    f"TFDS '{self.tfds_name}' is not in {self.data.data_dir} and this machine is "
                    "offline. Fix: prepare it on a machine with internet and copy the data dir, "
                    "or use data.source=folder with local files."
                )
            builder.download_and_prepare()

    def _skip_decoding(self, key: str = "image"):
        """``decoders`` that leave ``key`` encoded (prepare only counts), or None inside
        ``tfds.testing.mock_data``: its encoded fake examples fail on ``Sequence`` features
        (each of their features gets its own random length), its decoded ones do not."""
        if tfds_mocked():
            return None
        return {key: _quiet_tfds().decode.SkipDecoding()}

    def prepare(self) -> DatasetSpec:
        builder = self._builder()
        self._ensure_prepared(builder)
        if self.config.task == "detection":
            return self._prepare_detection(builder)
        if self.config.task == "segmentation":
            return self._prepare_segmentation(builder)
        image_key, label_key = self._keys(builder)
        names = list(builder.info.features[label_key].names)
        shape = list(builder.info.features[image_key].shape)
        if self.data.channels:
            shape[-1] = self.data.channels
        counts, class_counts = {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders=self._skip_decoding(image_key))
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
        objects = self._objects(builder)
        names = list(objects["label"].names)
        _, tally = self._ignore_flag(objects)
        counts, class_counts, empty, ignored, left_out = {}, {}, {}, {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders=self._skip_decoding())
            ds = ds.map(lambda x: self._object_arrays(x["objects"]))
            labels, n, n_empty, n_ignored, dropped = [], 0, 0, 0, 0
            for x in ds.as_numpy_iterator():
                targets = x["label"][x["valid"] & ~x["ignore"]]
                labels.extend(int(v) for v in targets)
                n_empty += int(len(targets) == 0)
                n_ignored += int(np.sum(x["valid"] & x["ignore"]))
                dropped += int(np.sum(~x["valid"]))
                n += 1
            counts[split], empty[split], ignored[split], left_out[split] = n, n_empty, n_ignored, dropped
            class_counts[split] = _class_counts(labels, names)
        extra = {"tfds_name": self.tfds_name, "images_without_objects": empty, "left_out_boxes": left_out}
        if tally:
            extra[tally] = ignored
        channels = self.data.channels or 3
        return self._spec(
            class_names=names,
            image_shape=[None, None, channels],
            counts=counts,
            class_counts=class_counts,
            location=os.path.abspath(self.data.data_dir),
            extra=extra,
            name=self.tfds_name.replace("/", "-"),
        )

    def _prepare_segmentation(self, builder) -> DatasetSpec:
        tf = _tf()
        names, key, convert = self._segmentation()
        counts, class_counts, ignored = {}, {}, {}
        for split, expr in self._split_names(builder).items():
            ds = builder.as_dataset(split=expr, decoders=self._skip_decoding())
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

            def segmentation(x):
                image, mask = x["image"], convert(x[key])
                size = tf.shape(image)[:2]
                mask = tf.cond(  # the image's size in real data; not so in TFDS' fake examples
                    tf.reduce_all(tf.shape(mask)[:2] == size),
                    lambda: mask,
                    lambda: tf.image.resize(mask, size, method="nearest"),
                )
                return {"image": set_channels(image, channels), "mask": mask}

            return ds.map(segmentation)
        if spec.task == "detection":
            self._objects(builder)
            one_based = self._one_based()

            def detection(x):
                image = x["image"]
                objects = self._object_arrays(x["objects"])
                valid = objects["valid"]
                boxes = tfds_boxes_to_xyxy(
                    objects["bbox"], tf.shape(image)[0], tf.shape(image)[1], one_based=one_based
                )
                return {
                    "image": set_channels(image, channels),
                    "boxes": tf.boolean_mask(boxes, valid),
                    "labels": tf.boolean_mask(objects["label"], valid),
                    "ignore": tf.boolean_mask(objects["ignore"], valid),
                }

            return ds.map(detection)
        image_key, label_key = self._keys(builder)
        return ds.map(
            lambda x: {
                "image": set_channels(x[image_key], channels),
                "label": _tf().cast(x[label_key], "int64"),
            }
        )
