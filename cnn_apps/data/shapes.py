"""The embedded synthetic dataset: coloured shapes on a noisy textured background.

One scene generator serves the three tasks:

* ``classification``: one shape per image, label = its class;
* ``detection``: 1..``max_objects`` non-overlapping shapes, boxes + labels;
* ``segmentation``: the same scenes, with a per-pixel mask (0 = background,
  ``k + 1`` = class ``k``).

Colours of shapes and background are drawn independently, so colour says nothing
about the class; rotation, size and position are random. Every example is drawn
from its own generator seeded by ``(seed, split, index)``, so an example does not
depend on how many others were made, and a dataset is reproducible bit for bit.

Boxes are ``xyxy`` in absolute pixels, float32 (the library's canonical format):
pixel ``i`` covers ``[i, i + 1)``, so a shape filling columns 3..7 has
``x1 = 3, x2 = 8``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "star")
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
STRIPE_AMPLITUDE = (10, 30)  # grey levels of the background stripes
NOISE_SIGMA = (4, 14)  # per-pixel Gaussian noise, drawn per image


@dataclass
class Scene:
    """One generated example. Shapes: image (H, W, 3) uint8, boxes (N, 4) float32
    xyxy pixels, labels (N,) int64, mask (H, W) uint8 (0 background, k+1 class k)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "square":
        pts = [
            (
                r * math.cos(angle + math.pi / 4 + k * math.pi / 2),
                r * math.sin(angle + math.pi / 4 + k * math.pi / 2),
            )
            for k in range(4)
        ]
    elif kind == "triangle":
        pts = [
            (r * math.cos(angle + k * 2 * math.pi / 3), r * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(kind)
    return np.array([[cx + x, cy + y] for x, y in pts])


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """A binary (size, size) mask of one shape; sub-pixel accurate via 4 fractional bits."""
    mask = np.zeros((size, size), np.uint8)
    shift = 4
    scale = 1 << shift
    if kind == "circle":
        cv2.circle(
            mask,
            (int(round(cx * scale)), int(round(cy * scale))),
            int(round(r * scale)),
            1,
            thickness=-1,
            lineType=cv2.LINE_8,
            shift=shift,
        )
    else:
        pts = np.round(_polygon(kind, cx, cy, r, angle) * scale).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour blobs plus stripes: texture the model has to ignore."""
    cells = int(rng.integers(3, 7))
    coarse = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.float32)
    bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    period = rng.uniform(4, 12)
    theta = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    bg += (rng.uniform(*STRIPE_AMPLITUDE) * stripes)[..., None]
    return bg


def _colour_far_from(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A random colour at least some distance from the mean of the background it sits on,
    so the shape stays visible (contrast, not hue, carries the signal)."""
    mean = region.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - mean) > 90:
            return colour
    return 255.0 - mean


def _place(rng, size, r_range, boxes):
    """Sample a centre and radius whose bounding square stays inside and clear of ``boxes``."""
    for _ in range(50):
        r = rng.uniform(*r_range) * size
        cx = rng.uniform(r + 1, size - r - 1)
        cy = rng.uniform(r + 1, size - r - 1)
        box = (cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1)
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
            return cx, cy, r, box
    return None


def make_scene(
    seed: int, split: str, index: int, size: int = 64, task: str = "classification", max_objects: int = 4
) -> Scene:
    """Generate example ``index`` of ``split``; the same arguments give the same bytes."""
    if size < 16:
        raise ValueError(f"shapes image size must be at least 16 px, got {size}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    if task == "classification":
        n, r_range = 1, (0.18, 0.38)
    else:
        n, r_range = int(rng.integers(1, max_objects + 1)), (0.08, 0.2)
    placed = []
    boxes, labels = [], []
    for _ in range(n):
        spot = _place(rng, size, r_range, placed)
        if spot is None:
            break
        cx, cy, r, square = spot
        placed.append(square)
        label = int(rng.integers(len(CLASS_NAMES)))
        angle = rng.uniform(0, 2 * math.pi)
        shape = _shape_mask(CLASS_NAMES[label], size, cx, cy, r, angle).astype(bool)
        if not shape.any():
            continue
        image[shape] = _colour_far_from(rng, image[shape])
        mask[shape] = label + 1
        ys, xs = np.nonzero(shape)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(label)
    image += rng.normal(0, rng.uniform(*NOISE_SIGMA), size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return Scene(
        image=image,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        mask=mask,
    )
