"""Typed configuration: dataclasses with defaults, loaded from YAML, overridden by
``--set section.key=value``.

Every section is a dataclass; loading walks the YAML mapping against the
dataclass fields, so an unknown or misspelt key, a value of the wrong type or a
value outside a field's ``choices`` raises :class:`~cnn_apps.errors.ConfigError`
naming the key and listing the valid ones (after TF Model Garden's
``hyperparams``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnn_apps.errors import ConfigError

TASKS = ("classification", "detection", "segmentation", "pretext")
FINETUNE_MODES = ("feature_extraction", "shallow", "fine_tune", "scratch", "copy_blocks")
STUDY_TRANSFER_MODES = ("feature_extraction", "shallow", "fine_tune", "scratch")


def _choice(default, choices, help_text=""):
    return field(default=default, metadata={"choices": tuple(choices), "help": help_text})


@dataclass
class DataConfig:
    """Where the images come from and how a split is made."""

    # shapes: the embedded synthetic dataset; folder: class sub-folders;
    # fashion_mnist: idx files (Debian dataset-fashion-mnist) or TFDS; tfds: any catalog name;
    # voc: a VOC-style folder (detection); coco: a COCO instances JSON (detection);
    # masks: images/ + masks/ folders or a VOC2012 folder (segmentation).
    source: str = _choice(
        "shapes",
        ("shapes", "folder", "fashion_mnist", "tfds", "digits", "opencv_digits", "voc", "coco", "masks"),
    )
    path: str | None = (
        None  # folder root, the idx directory for fashion_mnist, VOC root, COCO JSON, masks root
    )
    image_dir: str | None = (
        None  # coco: folder the JSON's file_name paths are relative to (default: its folder)
    )
    keep_difficult: bool = False  # voc (and TFDS voc/*): keep objects marked difficult in the targets
    tfds_name: str | None = None  # for source=tfds, e.g. "cifar10", "voc/2007", "coco/2017"
    data_dir: str = "./data"  # where prepared datasets live
    image_size: int = 64  # model input side (and the generated side for shapes)
    channels: int | None = None  # None keeps the source's own (3 for shapes, 1 for fashion_mnist)
    train_size: int = 4000  # shapes only: examples per split
    val_size: int = 500  # shapes only: validation examples
    test_size: int = 500  # shapes only: test examples
    max_objects: int = 4  # shapes detection / segmentation: objects per image (1..max)
    val_fraction: float = (
        0.1  # folder / fashion_mnist / tfds / voc / coco / masks: held out of train for validation
    )
    test_fraction: float = 0.1  # folder without a test/ sub-folder, voc and masks without test.txt, coco
    max_train_examples: int | None = None  # use a stratified subset of train
    # classification (fashion_mnist, digits, opencv_digits, folder): keep only these classes, given
    # as indices into the source's class list or as names, in this order; labels become 0..k-1
    # (a split-class transfer study trains on some classes and transfers to the others)
    classes: list[int | str] | None = None
    # the seed of max_train_examples' stratified draw (None: data.seed); a study's seeds vary it
    # while the validation and test splits, drawn with data.seed, stay the same
    subset_seed: int | None = None
    # the seed of the data itself: the shapes images generated, the validation / test hold-out
    # drawn from a source's train split, and (without subset_seed) the max_train_examples subset
    seed: int = 0
    # prepare skips bad records (unreadable images, broken boxes or masks), counts them in the
    # skipped_records metric and names each in skipped_records.csv; false: any bad record fails prepare
    skip_bad_records: bool = True
    # folder/voc/coco/masks: an image whose header claims more pixels than this is skipped and named
    # before it is decoded (a decompression bomb: a small file that decodes to gigabytes). 89,478,485
    # is PIL's own warning threshold (a quarter GiB as RGB, ~9500x9500; a 48 MP phone photo fits);
    # PIL's own guard is off while prepare reads, so this is the one limit. 0 or null: no limit.
    # `cnn-apps predict` has the same default (--max-image-pixels)
    max_image_pixels: int | None = 89_478_485
    # folder: a class sub-folder with no usable training images is an error naming it; true: it is
    # left out (not a class) with a warning, and its validation/test images are skipped
    skip_empty_classes: bool = False

    def __post_init__(self):
        if self.max_image_pixels is not None and self.max_image_pixels < 0:
            raise ConfigError(
                "data.max_image_pixels: a pixel count, or 0 (or null) for no limit, "
                f"got {self.max_image_pixels}"
            )


@dataclass
class AugmentConfig:
    """Training-time augmentation; boxes and masks move with their images."""

    flip: bool = True  # random horizontal flip
    translate: float = 0.1  # random translation, as a fraction of the side (pad-and-crop)
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # zoom factor range, e.g. [0.8, 1.2]
    crop: float = 0.0  # probability of a random crop (resized back to the input size)
    crop_min_fraction: float = 0.6  # the crop window's side is at least this fraction of the image's

    def __post_init__(self):
        if self.translate < 0:
            raise ConfigError(f"augment.translate: must be >= 0, got {self.translate}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(
                f"augment.scale: give [low, high] with 0 < low <= high (e.g. [0.8, 1.2]), got {self.scale}"
            )
        if not 0.0 <= self.crop <= 1.0:
            raise ConfigError(f"augment.crop: a probability in [0, 1], got {self.crop}")
        if not 0.0 < self.crop_min_fraction <= 1.0:
            raise ConfigError(f"augment.crop_min_fraction: must be in (0, 1], got {self.crop_min_fraction}")

    @property
    def active(self) -> bool:
        """True when any augmentation is switched on."""
        return bool(self.flip or self.translate > 0 or list(self.scale) != [1.0, 1.0] or self.crop > 0)


@dataclass
class ModelConfig:
    backbone: str = "resnet_mini"  # a name from `cnn-apps models`
    width: float = 1.0  # filter multiplier: grow it against high bias
    head_units: list[int] = field(default_factory=list)  # hidden dense layers of the head
    backbone_args: dict = field(default_factory=dict)  # extra keyword arguments of the backbone
    # detection / segmentation: the registered model built on the backbone (`cnn-apps models`),
    # e.g. yolo_v1, ssd, ssd300_vgg16, fcn8s, segnet, unet; None means the task's plain classifier.
    architecture: str | None = None
    architecture_args: dict = field(default_factory=dict)  # keyword arguments of that model


@dataclass
class RegularizationConfig:
    """The tools against overfitting, for any backbone and head."""

    l1: float = 0.0  # lambda of the L1 penalty on every conv/dense kernel
    l2: float = 0.0  # lambda of the L2 penalty (the lecture's lambda/2m * ||W||^2, folded in)
    dropout: float = 0.2  # rate; 0 disables
    dropout_placement: str = _choice("dense", ("dense", "conv", "both"))  # head, after conv blocks, both
    batch_norm: bool | None = None  # None: the backbone's own default (ResNets on, VGG/AlexNet off)


@dataclass
class DiagnosisConfig:
    """Bias/variance verdict after each train/finetune run (errors are fractions)."""

    human_error: float | None = None  # human-level or Bayes error; gives avoidable bias
    bias_threshold: float = 0.05  # (avoidable) bias above this: high bias
    variance_threshold: float = 0.05  # validation minus training error above this: high variance
    train_eval_examples: int = 2000  # training examples re-scored in inference mode each epoch


@dataclass
class StudyConfig:
    """`cnn-apps study ...`: what the children vary (all share data and seed)."""

    # regularization: the settings compared, one child run each (none, l1, l2, dropout, batch_norm,
    # batch_norm+dropout, all: the regularization section's strengths switched on one at a time)
    settings: list[str] = field(
        default_factory=lambda: ["none", "l1", "l2", "dropout", "batch_norm", "batch_norm+dropout", "all"]
    )
    # learning-curve: training-set sizes, one child run each on a stratified subset
    train_sizes: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000])
    # depth: the backbones compared, one child run each (plain18/plain34 without shortcuts,
    # resnet18/resnet34 with them)
    depth_models: list[str] = field(default_factory=lambda: ["plain18", "resnet18"])
    # transfer: the modes compared, target examples per class, and the source to learn from
    modes: list[str] = field(default_factory=lambda: list(STUDY_TRANSFER_MODES))
    examples_per_class: list[int] = field(default_factory=list)  # empty: the whole target train split
    source_data: dict = field(default_factory=dict)  # data-section overrides for the source dataset
    source_task: str = _choice("classification", ("classification", "pretext"))
    source_epochs: int = 10  # at most; the source's early stopping (training section) ends it sooner
    # a finished train run (its id, in the same tracking store) as the source instead of training
    # one: rerun or extend a study on the same source; its data and model must be the study's
    source_run: str | None = None
    # each (mode, examples per class) child runs once per seed (training.seed and the target
    # subset's data.subset_seed); the summary gives the mean and spread over them
    seeds: list[int] = field(default_factory=lambda: [0])
    # Yosinski et al.'s layer curve: for each k here, the first k backbone blocks copied frozen from
    # the source (AnB) and from a network trained on the target itself (BnB); empty: no curve
    layer_curve_blocks: list[int] = field(default_factory=list)
    layer_curve_examples: int | None = None  # target examples per class (None: all of its train split)
    # training-section overrides for one mode's children, e.g. {scratch: {epochs: 140,
    # early_stopping_patience: 20}}: at 5 examples per class an epoch is one optimizer step, so
    # patience counted in epochs can stop a network trained from scratch before it learns
    mode_training: dict = field(default_factory=dict)
    # finetune-section overrides for one mode's children, e.g. {fine_tune: {learning_rate: 0.001}}:
    # fine_tune's head phase shares finetune.epochs / learning_rate with feature_extraction's head
    mode_finetune: dict = field(default_factory=dict)
    # detectors (the speed ladder): detector config files trained and timed on the same images
    detectors: list[str] = field(default_factory=list)
    # segmenters: segmenter config files trained and evaluated on the same images
    segmenters: list[str] = field(default_factory=list)


@dataclass
class TrainingConfig:
    epochs: int = 12  # at most: early stopping may end training sooner
    batch_size: int = 64  # the global batch: split over the replicas when distributed
    optimizer: str = _choice("adam", ("adam", "adamw", "sgd"))
    learning_rate: float = 1e-3  # the peak rate: after any warm-up, before the schedule's decay
    weight_decay: float = 0.0  # decoupled (adamw) or L2-style for sgd; see issue on regularization
    momentum: float = 0.9  # sgd only
    lr_schedule: str = _choice("cosine", ("cosine", "constant", "plateau"))
    warmup_epochs: int = 0  # cosine only: a linear warm-up from a tenth of learning_rate over these epochs
    early_stopping_patience: int = 4  # epochs without val_loss improvement; 0 disables
    cache: bool = True  # cache decoded images in memory when they fit
    seed: int = 0  # initial weights, shuffling, augmentation and dropout
    # a backup every epoch under <checkpoint_dir>/<run_id>/, for `cnn-apps train --resume RUN_ID`
    checkpoint_dir: str = "checkpoints"
    # where and how training runs (cnn_apps/training/distribute.py): batch_size is the global batch
    distribution: str = _choice("none", ("none", "mirrored", "multi_worker"))
    lr_scaling: str = _choice("none", ("none", "linear"))  # linear: learning_rate x replicas
    mixed_precision: str = _choice("none", ("none", "mixed_float16", "mixed_bfloat16"))
    jit_compile: bool | None = None  # None: Keras' "auto"; XLA was slower on the 2-core CPU


@dataclass
class FinetuneConfig:
    """Transfer learning (``cnn-apps finetune``): where the knowledge comes from and how it is used."""

    mode: str = _choice("fine_tune", FINETUNE_MODES)
    # run: --from-run RUN_ID or from_uri; weights: a weights file; imagenet: keras.applications
    source: str = _choice("run", ("run", "weights", "imagenet"))
    from_uri: str | None = None  # runs:/<id>/model or models:/<name>@<alias> (instead of --from-run)
    weights: str | None = None  # .weights.h5 of model.backbone, or a .keras classifier/backbone
    epochs: int = 5  # the head's epochs (feature_extraction; phase 1 of fine_tune)
    learning_rate: float = 1e-3  # the head's learning rate (feature_extraction; phase 1 of fine_tune)
    unfreeze_blocks: int = 2  # fine_tune phase 2: the backbone's top N blocks train (BN stays frozen)
    fine_tune_epochs: int = 10  # fine_tune phase 2: epochs with the top unfreeze_blocks blocks training
    fine_tune_learning_rate: float = 1e-4  # phase 2's rate: small, so as not to wreck the copied features
    # fine_tune: the backbone's top N blocks start from random weights instead of the source's and
    # train with the head in phase 1, the blocks below frozen (the top blocks are the most specific to
    # the source's classes: Yosinski et al. 2014); 0 copies every block
    reinit_blocks: int = 0
    shallow_model: str = _choice("logistic", ("logistic", "linear_svm"))
    shallow_c: float = 1.0  # inverse regularization strength of the shallow model
    # copy_blocks: the source's first N backbone blocks, frozen; the rest starts from random weights
    # and trains with the new head (training.epochs, training.learning_rate)
    copied_blocks: int = 1


@dataclass
class EvaluateConfig:
    batch_size: int = 64  # images per batch of the test pass
    speed_batches: int = 10  # batches timed for test_images_per_s (after one warm-up batch)
    # detection and segmentation: score in the original images' pixels (boxes mapped back through
    # the pipeline's resize, class scores resized to each original mask before the argmax) or
    # in the model's input pixels
    resolution: str = _choice("source", ("source", "model"))


@dataclass
class ExportConfig:
    dir: str = "exports"  # exports/<name>/<version>/ (TF Serving layout)
    name: str | None = None  # defaults to the top-level `name`
    register: bool = True  # register in the MLflow model registry with alias `latest`
    tolerance: float = 1e-4  # max |SavedModel - Keras| allowed by the self-check


@dataclass
class DetectionConfig:
    """Post-processing of detectors (inside the model graph and the export)."""

    score_threshold: float = 0.05  # detections below this score are dropped (VOC/COCO evaluation practice)
    iou_threshold: float = 0.5  # per-class NMS overlap
    max_detections: int = 100  # fixed, padded output size per image
    pre_nms_top_k: int = 400  # candidates per class kept before NMS
    nms: str = _choice("auto", ("auto", "tf", "portable"))  # auto: TF's op under TensorFlow, else keras.ops


@dataclass
class SegmentationConfig:
    """Semantic segmentation: which mask value means "no label"."""

    ignore_label: int = 255  # mask pixels with this value count in neither the loss nor the metrics

    def __post_init__(self):
        if not 0 <= self.ignore_label <= 255:
            raise ConfigError(f"segmentation.ignore_label: a mask value in 0..255, got {self.ignore_label}")


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLFLOW_TRACKING_URI wins; default sqlite:///./mlruns/mlflow.db
    experiment: str | None = None  # defaults to the task name


@dataclass
class Config:
    """A whole experiment: one YAML file in ``pipelines/configs/``."""

    # the model's name when exported and registered (exports/<name>/<version>/, models:/<name>),
    # unless export.name is set
    name: str = "shapes-classifier"
    task: str = _choice("classification", TASKS)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, masked: bool = False) -> str:
        """The config as YAML; ``masked``: with secrets as ``***`` (:func:`mask_secrets`)."""
        values = self.to_dict()
        return yaml.safe_dump(mask_secrets(values) if masked else values, sort_keys=False)

    def flat(self) -> dict:
        """``{"training.epochs": 12, ...}``: the shape MLflow params take."""
        return flatten(self.to_dict())

    def data_fingerprint(self) -> str:
        """A short hash of everything that changes the prepared data (not its location)."""
        relevant = {k: v for k, v in dataclasses.asdict(self.data).items() if k != "data_dir"}
        relevant["task"] = self.task
        if relevant["source"] in ("folder", "voc", "coco", "masks") and relevant["path"]:
            relevant["path"] = os.path.abspath(relevant["path"])
        if relevant.get("image_dir"):
            relevant["image_dir"] = os.path.abspath(relevant["image_dir"])
        for key, default in (
            ("image_dir", None),
            ("keep_difficult", False),
            ("skip_bad_records", True),
            ("max_image_pixels", DataConfig.max_image_pixels),
            ("skip_empty_classes", False),
            ("classes", None),
            ("subset_seed", None),
        ):
            if relevant.get(key) == default:  # fields added later: defaults keep older fingerprints
                relevant.pop(key, None)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------- secrets
SECRET_KEY = re.compile(r"(^|[._])(password|passwd|token|secret|api_?key|access_?key|key)$", re.IGNORECASE)
URI_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.IGNORECASE
)


def mask_secrets(values: dict) -> dict:
    """``values`` (``key: value``, flat or nested) with secrets replaced by ``***``: the value of
    a key that looks like one (password, token, secret, key) and the password inside a URI
    (``postgresql://user:***@host/db``). For logged params, the logged config and printed configs."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = mask_secrets(value)
        elif SECRET_KEY.search(str(key)) and value not in (None, ""):
            out[key] = "***"
        elif isinstance(value, str):
            out[key] = URI_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------- loading
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float only."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-5 as a string: accept it
            with contextlib.suppress(ValueError):
                return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(tp) or (Any,)
            return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    else:  # pragma: no cover - a field type this loader does not know
        raise ConfigError(f"{where}: unsupported field type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, values: Any, where: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(_unknown_key_message(path, key, list(fields)))
        value = _coerce(value, hints[key], path)
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}")
        kwargs[key] = value
    return cls(**kwargs)


def _unknown_key_message(path: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{path}'.{hint} Valid keys here: {', '.join(valid)}"


def from_dict(values: dict | None) -> Config:
    return _build(Config, values or {}, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.epochs=3"`` -> (["training", "epochs"], 3); values are YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str] | None) -> dict:
    """Apply ``--set`` overrides to a raw mapping (validated afterwards by :func:`from_dict`)."""
    values = json.loads(json.dumps(values or {}))  # deep copy of plain data
    for text in overrides or []:
        keys, value = parse_override(text)
        node, cls, where = values, Config, ""
        for i, key in enumerate(keys):
            fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
            path = f"{where}.{key}" if where else key
            if cls is not None and key not in fields:
                raise ConfigError(_unknown_key_message(path, key, list(fields)))
            last = i == len(keys) - 1
            if last:
                node[key] = value
            else:
                tp = typing.get_type_hints(cls)[key] if cls else dict
                cls = tp if dataclasses.is_dataclass(tp) else None
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
            where = path
    return values


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML experiment file (or the defaults when ``path`` is None) and apply overrides."""
    values: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                values = yaml.safe_load(fh) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    try:
        return from_dict(apply_overrides(values, overrides))
    except ConfigError as exc:
        where = f" (in {path})" if path else ""
        raise ConfigError(f"{exc}{where}") from None
