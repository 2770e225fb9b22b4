"""Data sources: where images come from, turned into one shape of tf.data element.

Every source has ``prepare() -> DatasetSpec`` (build or scan once, count, report
bad records) and ``load(spec, split) -> tf.data.Dataset``; the element dicts per task
are described in :mod:`cnn_apps.data.sources.base`, which also holds the ``Source``
base class, ``@register_source`` and :func:`get_source`.

Sources (``data.source``), one module each:

* ``shapes`` (:mod:`.shapes`): the embedded synthetic dataset, all tasks, built as a
  TFDS dataset in ``data_dir``;
* ``folder`` (:mod:`.folder`): class sub-folders of image files, optionally already
  split into ``train/``, ``val/``, ``test/``;
* ``fashion_mnist`` (:mod:`.fashion_mnist`): Fashion-MNIST's idx files, else TFDS when
  online;
* ``tfds`` (:mod:`.tfds`): any TFDS catalog name, when online or already in
  ``data_dir``; ``voc/2007``, ``coco/2017`` for detection, ``oxford_iiit_pet`` for
  segmentation;
* ``digits`` and ``opencv_digits`` (:mod:`.digits`): scikit-learn's 8x8 digits and
  OpenCV's 20x20 ``digits.png``;
* ``voc`` (:mod:`.voc`): for detection, a VOC-style folder of XML annotations;
* ``coco`` (:mod:`.coco`): for detection, a COCO instances JSON;
* ``masks`` (:mod:`.masks`): for segmentation, image and mask folders or a VOC2012
  folder.

Shared helpers: :mod:`.images` (which image files the pipeline can decode, decoding
them), :mod:`.records` (splits, class counts, skipped records, manifests),
:mod:`.online` (whether TFDS can download), and :mod:`.detection_manifest` (the base of
``voc`` and ``coco``).

Box formats are converted once, at the edge: VOC XML is 1-based inclusive
(:func:`voc_box_to_xyxy`), COCO JSON is ``xywh`` (:func:`coco_box_to_xyxy`), TFDS
is normalized ``yxyx`` (:func:`tfds_boxes_to_xyxy`).
"""

# Importing each source module registers it, in this order: the order of SOURCES, which
# get_source's error lists (fashion_mnist imports tfds, so tfds comes first).
# isort: off
from cnn_apps.data.sources.base import SOURCES, Source, get_source, register_source
from cnn_apps.data.sources.shapes import ShapesSource
from cnn_apps.data.sources.folder import FolderSource
from cnn_apps.data.sources.tfds import TfdsSource, pet_trimap_to_mask, tfds_boxes_to_xyxy
from cnn_apps.data.sources.fashion_mnist import FASHION_MNIST_DIR, FashionMnistSource, read_idx
from cnn_apps.data.sources.digits import OPENCV_DIGITS_PATH, DigitsSource, OpenCvDigitsSource
from cnn_apps.data.sources.voc import VOC_CLASSES, VocSource, voc_box_to_xyxy
from cnn_apps.data.sources.coco import CocoSource, coco_box_to_xyxy
from cnn_apps.data.sources.masks import MaskFolderSource

# isort: on
from cnn_apps.data.sources.images import IMAGE_EXTENSIONS, decode_image_file
from cnn_apps.data.sources.online import is_online
from cnn_apps.data.sources.records import read_manifest, skipped_summary, stratified_split

__all__ = [
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "OPENCV_DIGITS_PATH",
    "SOURCES",
    "VOC_CLASSES",
    "CocoSource",
    "DigitsSource",
    "FashionMnistSource",
    "FolderSource",
    "MaskFolderSource",
    "OpenCvDigitsSource",
    "ShapesSource",
    "Source",
    "TfdsSource",
    "VocSource",
    "coco_box_to_xyxy",
    "decode_image_file",
    "get_source",
    "is_online",
    "pet_trimap_to_mask",
    "read_idx",
    "read_manifest",
    "register_source",
    "skipped_summary",
    "stratified_split",
    "tfds_boxes_to_xyxy",
    "voc_box_to_xyxy",
]
