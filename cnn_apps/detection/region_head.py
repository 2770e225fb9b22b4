"""The class-specific part of R-CNN and SPP-net: :class:`RegionHead` (K linear SVMs with
hard negative mining, K bounding-box ridge regressors, per-class NMS) and how it is saved.

The head is saved as plain data, never a pickle: ``region_head.npz`` (float arrays ``svm_w``
(K, D), ``svm_b`` (K,), ``reg_w`` (K, 4, D), ``reg_b`` (K, 4), read with
``allow_pickle=False``) and ``region_head.json`` (format version, K, D, the feature scale,
the SVM training history). A pickle found under either name is refused before it is read
(:func:`_refuse_pickle`): unpickling can run any code.

Shorthand: P proposals of an image, K classes, D feature length. Boxes are ``xyxy`` float32
pixels; labels are 0-based classes. Scores are SVM margins (``w . x + b``), not
probabilities: they can be negative, and the evaluator only ranks them. ``score_threshold``
(default -1, the margin's edge) keeps weak detections, which helps mAP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnn_apps.detection.proposals import box_iou
from cnn_apps.detection.region_geometry import decode_deltas
from cnn_apps.detection.region_training import train_box_regressor, train_linear_svm
from cnn_apps.errors import ModelError

HEAD_FILE = "region_head.npz"  # the head's arrays (no pickle)
HEAD_META_FILE = "region_head.json"  # its scalars and training history
HEAD_FORMAT, HEAD_FORMAT_VERSION = "cnn_apps.region_head", 1
HEAD_ARRAYS = ("svm_w", "svm_b", "reg_w", "reg_b")


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
        import keras

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
            # TF's op under the TF backend; NumPy elsewhere (JAX on a GPU machine without TF): the
            # graph version would build a (K, P, P) IoU tensor for this NumPy-side head
            implementation="tf" if keras.backend.backend() == "tensorflow" else "numpy",
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
