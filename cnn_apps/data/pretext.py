"""A pretext task: labels that cost nothing, made from the images themselves.

Rotation prediction (Gidaris et al., 2018): every image is shown at 0, 90, 180 and
270 degrees and the label is the rotation. A backbone that learns to tell them apart
has to recognise the objects' shapes and orientation, and becomes a source of
features for transfer learning like any labelled pre-training.
"""

from __future__ import annotations

import tensorflow as tf

ROTATION_CLASSES = ["rot0", "rot90", "rot180", "rot270"]


def rotation_examples(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Each (square) image -> 4 examples ``{"image": rot90^k(image), "label": k}``, k = 0..3.

    Images must be square already (rotating a non-square image changes its shape):
    resize first. The source's own label is dropped.
    """

    def four(ex):
        image = ex["image"]
        rotated = tf.stack([tf.image.rot90(image, k) for k in range(4)])
        return tf.data.Dataset.from_tensor_slices({"image": rotated, "label": tf.range(4, dtype=tf.int64)})

    return ds.flat_map(four)
