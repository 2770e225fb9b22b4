"""What R-CNN and SPP-net train before their head can detect: the backbone fine-tuned on
warped proposals (:func:`finetune_classifier`, K + 1 classes, 0 = background), one class's
linear SVM with hard negative mining (:func:`train_linear_svm`) and a bounding-box ridge
regressor (:func:`train_box_regressor`). :class:`~cnn_apps.detection.region_head.RegionHead`
trains its K SVMs and regressors with the last two.

Shorthand: N images, P proposals of an image, K classes, D feature length, W warp side.
Boxes are ``xyxy`` float32 pixels; labels are 0-based classes.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from cnn_apps.detection.region_geometry import assign_labels, encode_deltas, warp_regions
from cnn_apps.errors import ConfigError


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
