"""Losses that mean the same on R replicas as on one device (TensorFlow's ``tf.distribute``).

Keras' convention under a ``tf.distribute`` strategy: each replica's loss is its share of the
global loss (a mean over its own examples divided by R, ``keras.losses`` does this itself),
the optimizer sums the replicas' gradients, and the loss tracker multiplies the share by R
again before averaging over replicas. A loss normalized by a *count* that differs from
replica to replica (SSD's matched boxes, the RPN's sampled anchors, the pixels that are not
``ignore_label``) breaks that: the mean of per-replica means is not the global mean.
:func:`replica_share` divides each replica's sum by the count over all replicas instead, so
the shares add up to exactly the single-device loss; :func:`replica_rows` draws random
numbers for the global batch and keeps this replica's rows, so a sampler picks on R
replicas what it picks on one device.

This is the one module that calls ``tf.distribute``. On other backends (JAX's distribution
works on global arrays) and without a strategy everything reduces to the plain formula.
"""

from __future__ import annotations

import keras
from keras import ops


def _tf_context():
    """(replica context or None, replicas of the strategy in scope); (None, 1) off TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        return None, 1
    import tensorflow as tf

    return tf.distribute.get_replica_context(), int(tf.distribute.get_strategy().num_replicas_in_sync)


def num_replicas() -> int:
    """Replicas of the ``tf.distribute`` strategy in scope (1 without one, or off TensorFlow)."""
    return _tf_context()[1]


def replica_share(local_sum, local_count):
    """This replica's share of ``sum / count`` over the global batch: ``local_sum`` divided by
    the ``local_count`` summed over every replica (at least 1). Inside ``strategy.run`` the
    shares of the R replicas add up to the single-device value; elsewhere (one device, or
    Keras' cross-replica symbolic build) it is ``local_sum / local_count / R``, Keras' own
    convention for a per-replica loss."""
    local_sum = ops.cast(local_sum, "float32")
    local_count = ops.cast(ops.stop_gradient(local_count), "float32")
    context, replicas = _tf_context()
    if replicas > 1 and context is not None:
        import tensorflow as tf

        total = context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
        return local_sum / ops.maximum(total, 1.0)
    return local_sum / ops.maximum(local_count, 1.0) / float(replicas)


def global_value(share):
    """A share (:func:`replica_share`) times the replicas: what a ``keras.metrics.Mean``
    tracking it averages, across replicas, to the global value."""
    return share * float(num_replicas())


def scale_for_replicas(value):
    """A per-replica mean (e.g. the kernel penalties, the same on every replica) divided by
    the replicas, as Keras scales its own losses."""
    return value / float(num_replicas())


def replica_rows(draw, local_shape):
    """``draw(shape)`` (a random draw from a seed, e.g. ``keras.random.uniform``) for the
    global batch, sliced to this replica's rows: (B_local, ...) with B_local = ``local_shape[0]``.
    Replica r holds the global batch's rows [r B_local, (r + 1) B_local), as
    ``experimental_distribute_dataset`` splits it, so every example gets the numbers it gets
    on one device (when the global batch divides evenly by R)."""
    context, replicas = _tf_context()
    if replicas <= 1 or context is None:
        return draw(local_shape)
    rows = local_shape[0]
    values = draw((rows * replicas, *local_shape[1:]))
    start = ops.cast(context.replica_id_in_sync_group, "int32") * rows
    return ops.take(values, start + ops.arange(rows), axis=0)
