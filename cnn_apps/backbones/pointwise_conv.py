"""A convolution whose 1x1 kernel gradient is a matrix product in bfloat16.

A 1x1 convolution at stride 1 is a matrix product over the pixels: its kernel gradient is
``x^T dy`` with ``x`` as a (pixels, in-channels) matrix and ``dy`` as (pixels, out-channels).
TensorFlow 2.21 on a CPU computes it with oneDNN's bfloat16 backward-weights convolution, which
on an AMX CPU runs no faster than float32 (ResNet-50's 1x1 kernel gradients were about a third of
its bfloat16 training step, 1.2x faster than float32 where its forward pass was 3.5x); oneDNN's
bfloat16 matrix product of the same numbers is 2-3x faster (``benchmarks/pointwise_conv.py``).

:class:`MatmulGradConv2D` is ``keras.layers.Conv2D`` (same arguments, weights, config and saved
format) that computes that kernel gradient as a matrix product when all of these hold: the
TensorFlow backend, bfloat16 inputs and kernel (Keras' ``mixed_bfloat16`` policy), a 1x1 kernel
at stride 1 without dilation or groups, channels last. The forward pass and the input gradient
stay TensorFlow's convolution kernels. Anything else (float32, where the two cost the same,
larger kernels, strides, JAX or PyTorch) is Keras' own code.
"""

from __future__ import annotations

import keras


def _pointwise_conv_with_matmul_kernel_grad(inputs, kernel):
    """``conv2d(inputs, kernel)`` for a (1, 1, C, F) kernel at stride 1 on (B, H, W, C) inputs,
    with the kernel gradient as a matrix product; TensorFlow tensors in and out."""
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, w):
        y = tf.nn.conv2d(x, w, strides=1, padding="VALID")

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=[1, 1, 1, 1], padding="VALID"
            )
            channels, filters = w.shape[2], w.shape[3]
            dw = tf.matmul(tf.reshape(x, (-1, channels)), tf.reshape(dy, (-1, filters)), transpose_a=True)
            return dx, tf.reshape(dw, (1, 1, channels, filters))

        return y, grad

    # a tensor, not the variable: the custom gradient then gives the kernel's gradient to Keras
    return conv(inputs, tf.convert_to_tensor(kernel, dtype=inputs.dtype))


@keras.saving.register_keras_serializable(package="cnn_apps")
class MatmulGradConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` (same arguments) whose 1x1, stride-1 kernel gradient is a
    matrix product in bfloat16 under the TensorFlow backend (see the module docstring)."""

    def _matmul_grad(self, inputs, kernel) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and self.data_format == "channels_last"
            and tuple(self.kernel_size) == (1, 1)
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and len(inputs.shape) == 4
            and keras.backend.standardize_dtype(inputs.dtype) == "bfloat16"
            and keras.backend.standardize_dtype(kernel.dtype) == "bfloat16"
        )

    def convolution_op(self, inputs, kernel):
        if not self._matmul_grad(inputs, kernel):
            return super().convolution_op(inputs, kernel)
        return _pointwise_conv_with_matmul_kernel_grad(inputs, kernel)


# Keras' .keras format files each layer's weights under its class name ("conv2d_3"), not its
# registered name: our layer keeps Keras' name, so models saved with either class load into the
# other (every model saved before the ResNets used this layer among them)
MatmulGradConv2D.__name__ = keras.layers.Conv2D.__name__
