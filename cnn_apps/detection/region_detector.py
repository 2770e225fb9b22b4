"""The base of R-CNN and SPP-net (:mod:`cnn_apps.detection.rcnn`, :mod:`cnn_apps.detection.sppnet`):
what both use, and :class:`RegionDetector` (fit / predict / save / load).

* geometry: :func:`context_window`, :func:`warp_regions` (a proposal warped with context)
* :func:`finetune_classifier`: the backbone fine-tuned on warped proposals (K + 1 classes)
* :class:`RegionHead`: class-specific linear SVMs with hard negative mining, bounding-box
  ridge regression, per-class NMS
* :class:`RegionDetector`: a subclass says how features of boxes are computed
  (``_box_features``) and builds its feature model from the fine-tuned classifier
  (``_after_finetune``); it registers itself as ``registry.register("region_detector", name)``,
  the one name -> class table, where :meth:`RegionDetector.load` finds the class a directory
  was saved by (``cnn_apps.builtins`` registers the built-in ones).

A saved directory holds the fine-tuned classifier (``classifier.keras``, loaded in Keras'
safe mode), the config (``region_detector.json``) and the head as plain data, never a
pickle: ``region_head.npz`` (float arrays ``svm_w`` (K, D), ``svm_b`` (K,), ``reg_w``
(K, 4, D), ``reg_b`` (K, 4), read with ``allow_pickle=False``) and ``region_head.json``
(format version, K, D, the feature scale, the SVM training history). Directories written
before held the head as a joblib pickle (``region_head.joblib``); unpickling can run any
code, so :meth:`RegionDetector.load` refuses them unless the user trusts the source
(``cnn-apps --unsafe-load`` or ``CNN_APPS_UNSAFE_LOAD=1``,
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
import warnings
from pathlib import Path

import numpy as np

from cnn_apps import registry
from cnn_apps.classes import check_class_names
from cnn_apps.detection.proposals import box_iou
from cnn_apps.errors import ConfigError, ModelError

CONFIG_FILE = "region_detector.json"
CLASSIFIER_FILE = "classifier.keras"
HEAD_FILE = "region_head.npz"  # the head's arrays (no pickle)
HEAD_META_FILE = "region_head.json"  # its scalars and training history
LEGACY_HEAD_FILE = "region_head.joblib"  # a pickle: loaded only with --unsafe-load
HEAD_FORMAT, HEAD_FORMAT_VERSION = "cnn_apps.region_head", 1
HEAD_ARRAYS = ("svm_w", "svm_b", "reg_w", "reg_b")
PAPER_WARP = 227  # R-CNN's warp size: the 16 px context padding is relative to it


# ------------------------------------------------------------------------------- geometry
def context_window(boxes, warp_size: int, context_padding: float = 16.0) -> np.ndarray:
    """The image window each box is warped from: the box dilated so that, once warped to
    ``warp_size``, exactly ``p = context_padding * warp_size / 227`` pixels of context
    surround it on every side (R-CNN's "p = 16" at its 227 px warp, scaled).
    boxes (P, 4) -> windows (P, 4) xyxy (may reach outside the image)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    p = float(context_padding) * warp_size / PAPER_WARP
    inner = max(warp_size - 2 * p, 1e-6)  # the box occupies the central `inner` pixels
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    dx, dy = p * w / inner, p * h / inner
    return np.stack([boxes[:, 0] - dx, boxes[:, 1] - dy, boxes[:, 2] + dx, boxes[:, 3] + dy], axis=-1)


def warp_regions(image, boxes, warp_size: int, context_padding: float = 16.0) -> np.ndarray:
    """Crop + anisotropic resize of every box (with context) to ``warp_size``, bilinear
    (OpenCV ``warpAffine``); pixels outside the image take the image's mean colour (R-CNN
    fills them with the mean). image (H, W, 3), boxes (P, 4) -> (P, W, W, 3) uint8."""
    import cv2

    image = np.ascontiguousarray(np.asarray(image, np.uint8))
    windows = context_window(boxes, warp_size, context_padding)
    fill = tuple(float(v) for v in image.reshape(-1, image.shape[-1]).mean(0))
    out = np.empty((len(windows), warp_size, warp_size, image.shape[-1]), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(windows):
        sx, sy = (x1 - x0) / warp_size, (y1 - y0) / warp_size
        # output pixel centre u + 0.5 -> image coordinate x0 + (u + 0.5) sx; OpenCV's pixel
        # centres sit at integers, hence the - 0.5 on both sides
        matrix = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
        out[i] = cv2.warpAffine(
            image,
            matrix,
            (warp_size, warp_size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=fill,
        ).reshape(out.shape[1:])
    return out


def assign_labels(proposals, gt_boxes, gt_labels, fg_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Fine-tuning labels: 1 + the class of the best-overlapping object where IoU >= ``fg_iou``,
    else 0 (background). -> (labels (P,) int64, max IoU (P,))."""
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    if len(gt_boxes) == 0:
        return np.zeros(len(proposals), np.int64), np.zeros(len(proposals), np.float32)
    iou = box_iou(proposals, gt_boxes)
    best = iou.argmax(1)
    overlap = iou.max(1)
    labels = np.where(overlap >= fg_iou, np.asarray(gt_labels, np.int64)[best] + 1, 0)
    return labels.astype(np.int64), overlap


def encode_deltas(boxes, proposals) -> np.ndarray:
    """The BoxCoder's (R-CNN) deltas turning ``proposals`` (P, 4) into ``boxes`` (P, 4) -> (P, 4)."""
    from cnn_apps.detection.boxes import BoxCoder

    if len(proposals) == 0:
        return np.zeros((0, 4), np.float32)
    return np.asarray(
        BoxCoder().encode(np.asarray(boxes, np.float32), np.asarray(proposals, np.float32)), np.float32
    )


def decode_deltas(deltas, proposals) -> np.ndarray:
    from cnn_apps.detection.boxes import BoxCoder

    if len(proposals) == 0:
        return np.zeros((0, 4), np.float32)
    return np.asarray(
        BoxCoder().decode(np.asarray(deltas, np.float32), np.asarray(proposals, np.float32)), np.float32
    )


# -------------------------------------------------------------------------- fine-tuning
def finetune_classifier(
    classifier,
    images,
    proposals,
    gt_boxes,
    gt_labels,
    *,
    warp_size: int,
    context_padding: float = 16.0,
    epochs: int = 3,
    batch_size: int = 32,
    fg_fraction: float = 0.25,
    rois_per_image: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
    verbose: int = 0,
) -> dict:
    """Fine-tune ``classifier`` (K + 1 outputs, 0 = background) on warped proposals: IoU >= 0.5
    with an object -> its class, else background; the ground-truth boxes count as foreground
    proposals. Per image at most ``rois_per_image`` foreground and as many background warps
    are kept (uint8); every mini-batch holds ``fg_fraction`` foreground (R-CNN: 32 of 128).
    Returns {"fg_pool", "bg_pool", "train_accuracy", "seconds"}."""
    import keras

    rng = np.random.default_rng(seed)
    fg_x, fg_y, bg_x = [], [], []
    for image, props, boxes, labels in zip(images, proposals, gt_boxes, gt_labels):
        cand = np.concatenate([np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(props, np.float32)])
        lab, _ = assign_labels(cand, boxes, labels)
        fg, bg = np.flatnonzero(lab > 0), np.flatnonzero(lab == 0)
        fg = rng.permutation(fg)[:rois_per_image]
        bg = rng.permutation(bg)[:rois_per_image]
        if len(fg):
            fg_x.append(warp_regions(image, cand[fg], warp_size, context_padding))
            fg_y.append(lab[fg])
        if len(bg):
            bg_x.append(warp_regions(image, cand[bg], warp_size, context_padding))
    if not fg_x or not bg_x:
        raise ConfigError(
            "fine-tuning needs foreground and background proposals: are there ground-truth boxes?"
        )
    fg_x, fg_y, bg_x = np.concatenate(fg_x), np.concatenate(fg_y), np.concatenate(bg_x)

    n_fg = max(1, int(round(batch_size * fg_fraction)))
    n_bg = max(1, batch_size - n_fg)
    steps = max(1, (len(fg_x) + len(bg_x)) // batch_size)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, index):
            f = rng.integers(0, len(fg_x), n_fg)
            b = rng.integers(0, len(bg_x), n_bg)
            x = np.concatenate([fg_x[f], bg_x[b]]).astype(np.float32)
            y = np.concatenate([fg_y[f], np.zeros(n_bg, np.int64)])
            return x, y

    classifier.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = classifier.fit(Batches(), epochs=int(epochs), verbose=verbose) if epochs > 0 else None
    accuracy = float(history.history["accuracy"][-1]) if history else float("nan")
    return {
        "fg_pool": int(len(fg_x)),
        "bg_pool": int(len(bg_x)),
        "train_accuracy": accuracy,
        "seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------- SVMs and box regression
def train_linear_svm(
    positives,
    negatives,
    *,
    c: float = 0.01,
    positive_weight: float = 2.0,
    rounds: int = 2,
    initial_negatives: int = 2000,
    hard_per_round: int = 2000,
    seed: int = 0,
):
    """One class's linear SVM with hard negative mining: train on the positives and a random
    ``initial_negatives`` negatives, score every negative, add up to ``hard_per_round`` of
    the hardest not yet used that violate the margin (score > -1), retrain; ``rounds`` times.
    positives (Np, D), negatives (Nn, D) -> (w (D,), b, history: the negatives used per round)."""
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(seed)
    positives = np.asarray(positives, np.float32)
    negatives = np.asarray(negatives, np.float32)
    dim = positives.shape[1] if positives.ndim == 2 and len(positives) else negatives.shape[1]
    if len(positives) == 0 or len(negatives) == 0:  # nothing to separate: score everything low
        return np.zeros(dim, np.float32), -1.0, [0]
    used = np.zeros(len(negatives), bool)
    used[rng.permutation(len(negatives))[:initial_negatives]] = True
    history = []
    w, b = None, None
    for r in range(int(rounds) + 1):
        x = np.concatenate([positives, negatives[used]])
        y = np.concatenate([np.ones(len(positives)), -np.ones(int(used.sum()))])
        svm = LinearSVC(
            C=c,
            class_weight={1: positive_weight, -1: 1.0},
            intercept_scaling=10.0,
            max_iter=5000,
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on the last digits
            svm.fit(x, y)
        w, b = svm.coef_[0].astype(np.float32), float(svm.intercept_[0])
        history.append(int(used.sum()))
        if r == rounds:
            break
        scores = negatives @ w + b
        hard = np.flatnonzero(~used & (scores > -1.0))
        if len(hard) == 0:
            break
        hard = hard[np.argsort(-scores[hard])][:hard_per_round]
        used[hard] = True
    return w, b, history


def train_box_regressor(features, proposals, targets, alpha: float = 1000.0):
    """Ridge regression from features (M, D) to the deltas that move ``proposals`` (M, 4)
    onto ``targets`` (M, 4) -> (coef (4, D), intercept (4,))."""
    from sklearn.linear_model import Ridge

    features = np.asarray(features, np.float32)
    if len(features) == 0:
        return np.zeros((4, features.shape[1] if features.ndim == 2 else 0), np.float32), np.zeros(
            4, np.float32
        )
    ridge = Ridge(alpha=alpha).fit(features, encode_deltas(targets, proposals))
    return ridge.coef_.astype(np.float32), ridge.intercept_.astype(np.float32)


class RegionHead:
    """The class-specific part of R-CNN and SPP-net: K linear SVMs and K box regressors over
    fixed-length features, then per-class NMS. Features are scaled by one constant so their
    mean L2 norm over the training set is 20 (R-CNN's choice, so that C means the same for
    any feature length).

    ``fit(gt_features, gt_labels, proposal_features, proposal_boxes, proposal_gt)``: lists,
    one entry per image; ``detect(features (P, D), proposals (P, 4), image_size)`` -> dict
    boxes (M, 4), scores (M,), labels (M,) int32 (M <= max_detections, sorted)."""

    def __init__(
        self,
        num_classes: int,
        *,
        svm_c: float = 0.01,
        svm_positive_weight: float = 2.0,
        hard_negative_rounds: int = 2,
        initial_negatives: int = 2000,
        hard_negatives_per_round: int = 2000,
        negative_iou: float = 0.3,
        bbox_iou: float = 0.6,
        bbox_ridge_alpha: float = 1000.0,
        nms_iou: float = 0.3,
        score_threshold: float = -1.0,
        max_detections: int = 100,
        seed: int = 0,
    ):
        self.num_classes = int(num_classes)
        self.svm_c, self.svm_positive_weight = float(svm_c), float(svm_positive_weight)
        self.hard_negative_rounds = int(hard_negative_rounds)
        self.initial_negatives, self.hard_negatives_per_round = (
            int(initial_negatives),
            int(hard_negatives_per_round),
        )
        self.negative_iou, self.bbox_iou, self.bbox_ridge_alpha = (
            float(negative_iou),
            float(bbox_iou),
            float(bbox_ridge_alpha),
        )
        self.nms_iou, self.score_threshold, self.max_detections = (
            float(nms_iou),
            float(score_threshold),
            int(max_detections),
        )
        self.seed = int(seed)
        self.scale = 1.0
        self.svm_w = self.svm_b = self.reg_w = self.reg_b = None
        self.history: dict = {}

    def fit(self, gt_features, gt_boxes, gt_labels, proposal_features, proposal_boxes) -> dict:
        all_feats = [f for f in list(gt_features) + list(proposal_features) if len(f)]
        norms = np.concatenate([np.linalg.norm(f, axis=1) for f in all_feats])
        self.scale = float(20.0 / max(norms.mean(), 1e-9))
        k_all = self.num_classes
        dim = all_feats[0].shape[1]
        pos = [[] for _ in range(k_all)]
        neg = [[] for _ in range(k_all)]
        reg = [([], [], []) for _ in range(k_all)]  # features, proposals, targets
        for gf, gb, gl, pf, pb in zip(gt_features, gt_boxes, gt_labels, proposal_features, proposal_boxes):
            gl = np.asarray(gl, np.int64)
            gf, pf = np.asarray(gf, np.float32) * self.scale, np.asarray(pf, np.float32) * self.scale
            iou = box_iou(pb, gb) if len(gb) else np.zeros((len(pb), 0), np.float32)
            for k in range(k_all):
                mine = gl == k
                pos[k].append(gf[mine])
                top = iou[:, mine].max(1) if mine.any() else np.zeros(len(pb), np.float32)
                neg[k].append(pf[top < self.negative_iou])
                if mine.any():
                    best = iou[:, mine].argmax(1)
                    close = top >= self.bbox_iou
                    reg[k][0].append(np.concatenate([pf[close], gf[mine]]))  # GT boxes regress to themselves
                    reg[k][1].append(np.concatenate([pb[close], gb[mine]]))
                    reg[k][2].append(
                        np.concatenate([np.asarray(gb, np.float32)[mine][best[close]], gb[mine]])
                    )
        self.svm_w = np.zeros((k_all, dim), np.float32)
        self.svm_b = np.zeros(k_all, np.float32)
        self.reg_w = np.zeros((k_all, 4, dim), np.float32)
        self.reg_b = np.zeros((k_all, 4), np.float32)
        history = {}
        for k in range(k_all):
            p = np.concatenate(pos[k]) if pos[k] else np.zeros((0, dim), np.float32)
            n = np.concatenate(neg[k]) if neg[k] else np.zeros((0, dim), np.float32)
            w, b, used = train_linear_svm(
                p,
                n,
                c=self.svm_c,
                positive_weight=self.svm_positive_weight,
                rounds=self.hard_negative_rounds,
                initial_negatives=self.initial_negatives,
                hard_per_round=self.hard_negatives_per_round,
                seed=self.seed + k,
            )
            self.svm_w[k], self.svm_b[k] = w, b
            history[k] = {"positives": int(len(p)), "negatives": int(len(n)), "negatives_used": used}
            if reg[k][0]:
                f, pr, t = (np.concatenate(v) for v in reg[k])
                self.reg_w[k], self.reg_b[k] = train_box_regressor(f, pr, t, self.bbox_ridge_alpha)
                history[k]["regression_examples"] = int(len(f))
        self.history = history
        return history

    def scores(self, features) -> np.ndarray:
        """features (P, D) -> SVM margins (P, K)."""
        return (np.asarray(features, np.float32) * self.scale) @ self.svm_w.T + self.svm_b

    def regress(self, features, proposals) -> np.ndarray:
        """features (P, D), proposals (P, 4) -> class-specific boxes (P, K, 4)."""
        f = np.asarray(features, np.float32) * self.scale
        deltas = np.einsum("pd,kjd->pkj", f, self.reg_w) + self.reg_b  # (P, K, 4)
        proposals = np.asarray(proposals, np.float32)
        anchors = np.repeat(proposals[:, None, :], self.num_classes, axis=1)
        return decode_deltas(deltas.reshape(-1, 4), anchors.reshape(-1, 4)).reshape(-1, self.num_classes, 4)

    def detect(self, features, proposals, image_size) -> dict:
        """Score, regress, clip to the image, per-class NMS (``nms_iou``) with
        :func:`~cnn_apps.detection.nms.batched_nms`: the class-specific boxes are laid out
        as P * K candidates whose score is kept only in their own class column."""
        from cnn_apps.detection.nms import batched_nms

        k_all = self.num_classes
        if len(proposals) == 0:
            return {
                "boxes": np.zeros((0, 4), np.float32),
                "scores": np.zeros(0, np.float32),
                "labels": np.zeros(0, np.int32),
            }
        scores = self.scores(features)  # (P, K)
        boxes = np.clip(self.regress(features, proposals), 0, image_size).reshape(-1, 4)  # (P K, 4)
        own = np.eye(k_all, dtype=bool)[np.tile(np.arange(k_all), len(proposals))]  # (P K, K)
        cand = np.where(own, scores.reshape(-1)[:, None], -1e9).astype(np.float32)
        out = batched_nms(
            boxes[None],
            cand[None],
            max_detections=self.max_detections,
            iou_threshold=self.nms_iou,
            score_threshold=self.score_threshold,
            pre_nms_top_k=len(proposals),
            implementation="tf",
        )
        n = int(np.asarray(out["num_detections"])[0])
        return {
            "boxes": np.asarray(out["boxes"])[0, :n],
            "scores": np.asarray(out["scores"])[0, :n],
            "labels": np.asarray(out["labels"])[0, :n].astype(np.int32),
        }

    def state(self) -> dict:
        return {
            "scale": self.scale,
            "svm_w": self.svm_w,
            "svm_b": self.svm_b,
            "reg_w": self.reg_w,
            "reg_b": self.reg_b,
            "history": self.history,
        }

    def set_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, directory) -> None:
        """Write the fitted head as plain data: :data:`HEAD_FILE` (its float arrays, no
        object arrays, so no pickle) and :data:`HEAD_META_FILE` (JSON scalars and history)."""
        if self.svm_w is None:
            raise ModelError("RegionHead.save before fit: the head has no SVM weights to save")
        directory = Path(directory)
        arrays = {name: np.ascontiguousarray(getattr(self, name), np.float32) for name in HEAD_ARRAYS}
        np.savez(directory / HEAD_FILE, **arrays)
        meta = {
            "format": HEAD_FORMAT,
            "version": HEAD_FORMAT_VERSION,
            "num_classes": self.num_classes,
            "feature_dim": int(arrays["svm_w"].shape[1]),
            "scale": float(self.scale),  # JSON keeps a float's shortest repr: exact round trip
            "history": {str(k): v for k, v in self.history.items()},
        }
        (directory / HEAD_META_FILE).write_text(json.dumps(meta, indent=2))

    def load(self, directory) -> None:
        """Read what :meth:`save` wrote (``allow_pickle=False``), checking the format, the
        class count and the array shapes; a pickled head is refused (see :func:`_refuse_pickle`)."""
        directory = Path(directory)
        path, meta_path = directory / HEAD_FILE, directory / HEAD_META_FILE
        start = _first_bytes(path)
        if start.startswith(PICKLE_PROTOCOL_MARK):
            _refuse_pickle(path, legacy=False)
        if start and not start.startswith(b"PK"):
            raise ModelError(f"{path} is not a NumPy .npz archive (a zip file); it is not loaded")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != HEAD_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {HEAD_FORMAT!r}")
            if int(meta.get("version", 0)) > HEAD_FORMAT_VERSION:
                raise ValueError(
                    f"format version {meta['version']} is newer than this cnn-apps reads "
                    f"({HEAD_FORMAT_VERSION}): upgrade cnn-apps"
                )
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: np.asarray(npz[name]) for name in HEAD_ARRAYS}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"cannot read the region head in {directory}: {exc}") from exc
        k, d = self.num_classes, int(meta["feature_dim"])
        expected = {"svm_w": (k, d), "svm_b": (k,), "reg_w": (k, 4, d), "reg_b": (k, 4)}
        for name, shape in expected.items():
            a = arrays[name]
            if a.shape != shape or a.dtype.kind != "f":
                raise ModelError(
                    f"{path}: {name} is a {a.dtype} array of shape {a.shape}, expected float {shape} "
                    f"({k} classes, {d} features)"
                )
        self.svm_w, self.svm_b, self.reg_w, self.reg_b = (arrays[n].astype(np.float32) for n in HEAD_ARRAYS)
        self.scale = float(meta["scale"])
        self.history = {int(key): value for key, value in meta.get("history", {}).items()}


PICKLE_PROTOCOL_MARK = b"\x80"  # the first byte of a pickle of protocol 2 or later (joblib's too)


def _first_bytes(path, n: int = 4) -> bytes:
    """The first ``n`` bytes of ``path``, b"" when it cannot be read (the error comes later)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _refuse_pickle(path, *, legacy: bool) -> None:
    how = (
        "if you trust where it came from, pass `cnn-apps --unsafe-load ...` (or set "
        "CNN_APPS_UNSAFE_LOAD=1) to load it, and save the detector again to rewrite its head as "
        f"{HEAD_FILE}"
        if legacy
        else "a region head is read only as a NumPy archive, with allow_pickle=False, whatever the flags"
    )
    raise ModelError(
        f"{path} is a pickle (not a NumPy .npz archive); unpickling a file can run any code it "
        f"carries, so it is not loaded: {how}"
    )


HEAD_ARGS = tuple(
    p for p in inspect.signature(RegionHead.__init__).parameters if p not in ("self", "num_classes")
)


# ------------------------------------------------------------------------------ detector
class RegionDetector(abc.ABC):
    """fit / predict / save / load around a fine-tuned :class:`~cnn_apps.classification.ImageClassifier`
    (K + 1 outputs) and a :class:`RegionHead`. Subclasses define ``_box_features(images,
    boxes_list) -> list of (P_i, D)``.

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
        ``region_head.npz`` + ``region_head.json`` (:meth:`RegionHead.save`; no pickle)."""
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
