"""Batch normalization that runs TensorFlow's fused kernel where it can.

Keras 3's ``BatchNormalization`` computes the batch moments and the normalization as separate
ops; on a CPU that made it about 40% of ResNet-50's float32 training step and 2x slower than
TensorFlow's fused kernel (3.3x in bfloat16; ``benchmarks/batch_norm.py``). tf.keras 2 called
the fused kernel; :class:`FusedBatchNormalization` does again, with Keras 3's semantics:

* the same weights (gamma, beta, moving mean and variance), config and saved format, so a
  model built with it loads its weights from one built with ``keras.layers.BatchNormalization``
  and the other way round;
* the moving variance is updated with the *biased* batch variance, as Keras 3 does (the fused
  kernel returns the Bessel-corrected one, which tf.keras 2 used; it is scaled back here);
* inputs in bfloat16 or float16 stay in that type through the kernel, with float32 statistics.

Everything the fused kernel cannot do falls back to Keras' own code, with identical results:
another backend (JAX, PyTorch: the portable models), inputs that are not (B, H, W, C) with the
channels last, a mask, ``synchronized=True`` (statistics over all replicas), batch renormalization,
and an epsilon below the kernel's floor of 1.001e-5 (cuDNN's; TensorFlow raises smaller ones).
"""

from __future__ import annotations

import keras

FUSED_MIN_EPSILON = 1.001e-5  # tf.nn.fused_batch_norm raises any smaller epsilon to this
FUSED_DTYPES = ("float32", "bfloat16", "float16")


@keras.saving.register_keras_serializable(package="cnn_apps")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` (same arguments) that calls TensorFlow's fused batch
    norm kernel on channels-last 4-D inputs under the TensorFlow backend."""

    def _fuses(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (3, -1)
            and not self.synchronized
            and not getattr(self, "renorm", False)
            and self.epsilon >= FUSED_MIN_EPSILON
            and keras.backend.standardize_dtype(inputs.dtype) in FUSED_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fuses(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            outputs, mean, corrected = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            # the kernel's variance is Bessel-corrected (n / (n - 1)); Keras 3 keeps the biased one
            n = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)
            variance = corrected * tf.math.divide_no_nan(n - 1.0, n)
            mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                is_training=False,
            )
        return tf.cast(outputs, self.compute_dtype)


# Keras' .keras format files each layer's weights under its class name ("batch_normalization_3"),
# not its registered name: our layer keeps Keras' name, so models saved with either class load
# into the other (a model saved before the backbones used this layer among them)
FusedBatchNormalization.__name__ = keras.layers.BatchNormalization.__name__
