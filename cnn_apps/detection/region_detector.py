"""The base of R-CNN and SPP-net (:mod:`cnn_apps.detection.rcnn`, :mod:`cnn_apps.detection.sppnet`):
:class:`RegionDetector` (fit / predict / save / load) and :func:`saved_class`.

What it is built from lives next to it:

* :mod:`cnn_apps.detection.region_geometry`: :func:`~cnn_apps.detection.region_geometry.context_window`,
  :func:`~cnn_apps.detection.region_geometry.warp_regions` (a proposal warped with context),
  fine-tuning labels and box deltas
* :mod:`cnn_apps.detection.region_training`:
  :func:`~cnn_apps.detection.region_training.finetune_classifier` (the backbone fine-tuned on
  warped proposals, K + 1 classes), the SVM and box-regressor trainers
* :mod:`cnn_apps.detection.region_head`: :class:`~cnn_apps.detection.region_head.RegionHead`
  (class-specific linear SVMs with hard negative mining, bounding-box ridge regression,
  per-class NMS) and its plain-data save / load

A subclass of :class:`RegionDetector` says how features of boxes are computed
(``_box_features``) and builds its feature model from the fine-tuned classifier
(``_after_finetune``); it registers itself as ``registry.register("region_detector", name)``,
the one name -> class table, where :meth:`RegionDetector.load` finds the class a directory
was saved by (``cnn_apps.builtins`` registers the built-in ones).

A saved directory holds the fine-tuned classifier (``classifier.keras``, loaded in Keras'
safe mode), the config (``region_detector.json``) and the head as plain data, never a
pickle (``region_head.npz`` + ``region_head.json``, see :mod:`cnn_apps.detection.region_head`).
Directories written before held the head as a joblib pickle (``region_head.joblib``);
unpickling can run any code, so :meth:`RegionDetector.load` refuses them unless the user
trusts the source (``cnn-apps --unsafe-load`` or ``CNN_APPS_UNSAFE_LOAD=1``,
:func:`cnn_apps.tracking.unsafe_load`).

Shorthand: N images, S image side, P proposals of an image, K classes, D feature length,
W warp side. Boxes are ``xyxy`` float32 pixels; labels are 0-based classes (the fine-tuned
classifier adds background as its class 0, so class ``k`` is its output ``k + 1``).

Scores are SVM margins (``w . x + b``), not probabilities: they can be negative, and the
evaluator only ranks them. ``score_threshold`` (default -1, the margin's edge) keeps
weak detections, which helps mAP.
"""

from __future__ import annotations

import abc
import inspect
import json
import time
from pathlib import Path

import numpy as np

from cnn_apps import registry
from cnn_apps.classes import check_class_names
from cnn_apps.detection.region_head import HEAD_FILE, RegionHead, _refuse_pickle
from cnn_apps.detection.region_training import finetune_classifier
from cnn_apps.errors import ConfigError

CONFIG_FILE = "region_detector.json"
CLASSIFIER_FILE = "classifier.keras"
LEGACY_HEAD_FILE = "region_head.joblib"  # a pickle: loaded only with --unsafe-load

HEAD_ARGS = tuple(
    p for p in inspect.signature(RegionHead.__init__).parameters if p not in ("self", "num_classes")
)


# ------------------------------------------------------------------------------ detector
class RegionDetector(abc.ABC):
    """fit / predict / save / load around a fine-tuned :class:`~cnn_apps.classification.ImageClassifier`
    (K + 1 outputs) and a :class:`~cnn_apps.detection.region_head.RegionHead`. Subclasses
    define ``_box_features(images, boxes_list) -> list of (P_i, D)``.

    ``predict(images)`` -> one dict per image (boxes (M, 4), scores (M,) SVM margins,
    labels (M,) int32, num_detections), and ``last_timings``: proposal / feature / classify
    ms per image of that call."""

    kind = "region"

    def __init__(
        self,
        num_classes: int,
        class_names=None,
        *,
        image_size: int = 96,
        backbone: str = "resnet_mini",
        backbone_args: dict | None = None,
        width: float = 1.0,
        dropout: float = 0.2,
        warp_size: int = 64,
        context_padding: float = 16.0,
        max_proposals: int = 100,
        proposal_mode: str = "fast",
        proposal_scale: float = 1.0,
        finetune_epochs: int = 3,
        finetune_batch_size: int = 32,
        finetune_fg_fraction: float = 0.25,
        finetune_rois_per_image: int = 16,
        finetune_learning_rate: float = 1e-3,
        feature_batch_size: int = 256,
        seed: int = 0,
        **head_args,
    ):
        unknown = sorted(set(head_args) - set(HEAD_ARGS))
        if unknown:
            raise ConfigError(
                f"{type(self).__name__}: unknown arguments {', '.join(unknown)}; "
                f"valid: {', '.join(self.valid_args())}"
            )
        self.num_classes = int(num_classes)
        self.class_names = check_class_names(num_classes, class_names, owner=type(self).__name__)
        self.image_size, self.backbone, self.width, self.dropout = (
            int(image_size),
            backbone,
            float(width),
            float(dropout),
        )
        self.backbone_args = dict(backbone_args or {})
        self.warp_size, self.context_padding = int(warp_size), float(context_padding)
        self.max_proposals, self.proposal_mode, self.proposal_scale = (
            int(max_proposals),
            proposal_mode,
            float(proposal_scale),
        )
        self.finetune_epochs, self.finetune_batch_size = int(finetune_epochs), int(finetune_batch_size)
        self.finetune_fg_fraction, self.finetune_rois_per_image = (
            float(finetune_fg_fraction),
            int(finetune_rois_per_image),
        )
        self.finetune_learning_rate = float(finetune_learning_rate)
        self.feature_batch_size, self.seed = int(feature_batch_size), int(seed)
        self.head_args = dict(head_args)
        self.head = RegionHead(
            self.num_classes, seed=seed, **{k: v for k, v in head_args.items() if k != "seed"}
        )
        self.classifier = None
        self.last_timings: dict = {}
        self.fit_summary: dict = {}

    @classmethod
    def valid_args(cls) -> list[str]:
        own = [
            p
            for c in reversed(cls.__mro__)
            if "__init__" in c.__dict__
            for p in inspect.signature(c.__init__).parameters
            if p not in ("self", "num_classes", "class_names", "head_args", "args", "kwargs")
        ]
        return sorted(set(own) | set(HEAD_ARGS))

    def get_config(self) -> dict:
        config = {
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "image_size": self.image_size,
            "backbone": self.backbone,
            "backbone_args": self.backbone_args,
            "width": self.width,
            "dropout": self.dropout,
            "warp_size": self.warp_size,
            "context_padding": self.context_padding,
            "max_proposals": self.max_proposals,
            "proposal_mode": self.proposal_mode,
            "proposal_scale": self.proposal_scale,
            "finetune_epochs": self.finetune_epochs,
            "finetune_batch_size": self.finetune_batch_size,
            "finetune_fg_fraction": self.finetune_fg_fraction,
            "finetune_rois_per_image": self.finetune_rois_per_image,
            "finetune_learning_rate": self.finetune_learning_rate,
            "feature_batch_size": self.feature_batch_size,
            "seed": self.seed,
        }
        config.update(self.head_args)
        return config

    # -- parts
    def build_classifier(self):
        from cnn_apps.classification.classifier import ImageClassifier

        return ImageClassifier(
            self.num_classes + 1,
            (self.warp_size, self.warp_size, 3),
            backbone=self.backbone,
            width=self.width,
            dropout=self.dropout,
            backbone_args=self.backbone_args,
            class_names=["background", *self.class_names],
        )

    def propose(self, images) -> list[np.ndarray]:
        from cnn_apps.detection.proposals import selective_search

        return [
            selective_search(
                np.asarray(image),
                mode=self.proposal_mode,
                max_proposals=self.max_proposals,
                scale=self.proposal_scale,
                seed=self.seed,
            )
            for image in images
        ]

    @abc.abstractmethod
    def _box_features(self, images, boxes_list) -> list[np.ndarray]:
        """Per image, (P, D) features of its boxes: warped crops (R-CNN) or SPP of the map (SPP-net)."""

    @abc.abstractmethod
    def _after_finetune(self) -> None:
        """Build the feature model ``_box_features`` uses from the fine-tuned ``self.classifier``
        (after fitting and after loading)."""

    # -- fit / predict
    def fit(self, images, boxes, labels, *, proposals=None, classifier=None, verbose: int = 0) -> dict:
        """images (N, S, S, 3) uint8, boxes: N arrays (G_i, 4), labels: N arrays (G_i,) 0-based.
        ``proposals``: precomputed per-image proposals (else selective search here);
        ``classifier``: an already fine-tuned classifier (K + 1 outputs) to reuse (no fine-tuning)."""
        import keras

        keras.utils.set_random_seed(self.seed)
        images = np.asarray(images, np.uint8)
        boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
        labels = [np.asarray(lab, np.int64).reshape(-1) for lab in labels]
        summary = {}
        start = time.perf_counter()
        if proposals is None:
            proposals = self.propose(images)
        summary["proposal_seconds"] = time.perf_counter() - start
        summary["proposals_per_image"] = float(np.mean([len(p) for p in proposals]))
        if classifier is not None:
            self.classifier = classifier
            summary["finetune"] = {"reused": True}
        else:
            self.classifier = self.build_classifier()
            summary["finetune"] = finetune_classifier(
                self.classifier,
                images,
                proposals,
                boxes,
                labels,
                warp_size=self.warp_size,
                context_padding=self.context_padding,
                epochs=self.finetune_epochs,
                batch_size=self.finetune_batch_size,
                fg_fraction=self.finetune_fg_fraction,
                rois_per_image=self.finetune_rois_per_image,
                learning_rate=self.finetune_learning_rate,
                seed=self.seed,
                verbose=verbose,
            )
        self._after_finetune()
        start = time.perf_counter()
        both = self._box_features(
            images,
            [np.concatenate([b, np.asarray(p, np.float32).reshape(-1, 4)]) for b, p in zip(boxes, proposals)],
        )
        gt_feats = [f[: len(b)] for f, b in zip(both, boxes)]
        prop_feats = [f[len(b) :] for f, b in zip(both, boxes)]
        summary["feature_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        summary["svm"] = self.head.fit(gt_feats, boxes, labels, prop_feats, proposals)
        summary["svm_seconds"] = time.perf_counter() - start
        self.fit_summary = summary
        return summary

    def predict(self, images, proposals=None) -> list[dict]:
        if self.classifier is None:
            raise ConfigError(f"{type(self).__name__}.predict before fit or load")
        images = np.asarray(images, np.uint8)
        n = max(len(images), 1)
        start = time.perf_counter()
        if proposals is None:
            proposals = self.propose(images)
        t_prop = time.perf_counter() - start
        start = time.perf_counter()
        feats = self._box_features(images, proposals)
        t_feat = time.perf_counter() - start
        start = time.perf_counter()
        out = []
        for f, p in zip(feats, proposals):
            det = self.head.detect(f, p, self.image_size)
            det["num_detections"] = len(det["scores"])
            out.append(det)
        t_cls = time.perf_counter() - start
        self.last_timings = {
            "proposal_ms": 1000 * t_prop / n,
            "feature_ms": 1000 * t_feat / n,
            "classify_ms": 1000 * t_cls / n,
        }
        return out

    # -- persistence
    def save(self, directory) -> Path:
        """``directory``/: ``classifier.keras``, ``region_detector.json`` and the head as
        ``region_head.npz`` + ``region_head.json``
        (:meth:`~cnn_apps.detection.region_head.RegionHead.save`; no pickle)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.classifier.save(directory / CLASSIFIER_FILE)
        self.head.save(directory)
        (directory / LEGACY_HEAD_FILE).unlink(missing_ok=True)  # an older save's pickled head
        (directory / CONFIG_FILE).write_text(
            json.dumps({"class": type(self).__name__, "config": self.get_config()}, indent=2)
        )
        return directory

    @classmethod
    def load(cls, directory) -> RegionDetector:
        """The detector :meth:`save` wrote, as the class that saved it: a registered region
        detector (import ``cnn_apps.builtins`` to register the built-ins) or ``cls`` itself.

        The head is read from ``region_head.npz`` without unpickling anything. A directory
        with only an old pickled head (``region_head.joblib``) is refused with a
        :class:`~cnn_apps.errors.ModelError` naming it, unless
        :func:`cnn_apps.tracking.unsafe_load` (``--unsafe-load``): then it is unpickled."""
        import keras

        import cnn_apps.classification  # noqa: F401  (registers the custom classes)
        from cnn_apps import tracking

        directory = Path(directory)
        saved = json.loads((directory / CONFIG_FILE).read_text())
        klass = saved_class(saved["class"], cls)
        config = dict(saved["config"])
        model = klass(config.pop("num_classes"), **config)
        legacy = directory / LEGACY_HEAD_FILE
        if (directory / HEAD_FILE).exists() or not legacy.exists():
            model.head.load(directory)
        elif tracking.unsafe_load():
            import joblib

            model.head.set_state(joblib.load(legacy))  # the user trusts this directory's source
        else:
            _refuse_pickle(legacy, legacy=True)
        model.classifier = keras.saving.load_model(directory / CLASSIFIER_FILE, compile=False)
        model._after_finetune()
        return model


def saved_class(class_name: str, default: type | None = None) -> type:
    """The region detector class called ``class_name`` (what :meth:`RegionDetector.save` records):
    one registered as ``region_detector``, else ``default`` when it has that name."""
    for name in registry.names("region_detector"):
        klass = registry.get("region_detector", name)
        if klass.__name__ == class_name:
            return klass
    if default is not None and default.__name__ == class_name:
        return default
    raise ConfigError(
        f"a region detector saved by class {class_name!r}, which is not registered "
        f"(registered: {', '.join(registry.names('region_detector')) or 'none'}); "
        "import its module, or cnn_apps.builtins for the built-in ones"
    )
