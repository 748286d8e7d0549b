"""Ops whose implementation differs on the NPU; model code calls these, never npu_ops."""
import tensorflow.compat.v1 as tf

from migration import backend as backend_lib


def dropout(x, rate, training=True, noise_shape=None, seed=None, name=None):
  """Dropout by drop `rate`: `npu_ops.dropout` through npu_bridge, `tf.nn.dropout` elsewhere.

  `training` may be a Python bool (graph-time switch) or a scalar bool tensor.
  """
  if isinstance(training, bool) and (not training or rate == 0.0):
    return x

  def _drop():
    if backend_lib.current().uses_npu_bridge and noise_shape is None:
      npu_ops = backend_lib.current().npu_module("estimator.npu_ops")
      return npu_ops.dropout(x, keep_prob=1.0 - rate, seed=seed, name=name)
    return tf.nn.dropout(x, rate=rate, noise_shape=noise_shape, seed=seed, name=name)

  if isinstance(training, bool):
    return _drop()
  return tf.cond(training, _drop, lambda: tf.identity(x))


def pointwise_conv2d(x, kernel):
  """A 1x1, stride-1 NHWC convolution: `tf.nn.conv2d(x, kernel, 1, "VALID")`, the same
  values and gradients. On the CPU the gradients are computed as a Conv2D with the
  transposed kernel (input) and a MatMul (kernel) instead of Conv2DBackpropInput and
  Conv2DBackpropFilter, TensorFlow 1.15's generic CPU kernels for any filter size
  (benchmarks/profile_amoeba_net.py: AmoebaNet-D's 1x1 input gradients took up to 4.5x
  their forward convolution). NPU and GPU keep their own gradient kernels."""
  if backend_lib.current().device != "cpu":
    return tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "VALID")
  return _pointwise_conv2d_cpu(x, tf.convert_to_tensor(kernel))


@tf.custom_gradient
def _pointwise_conv2d_cpu(x, kernel):
  def gradients(dy):
    channels_in, channels_out = (tf.compat.dimension_value(d) for d in kernel.shape[2:])
    dx = tf.nn.conv2d(dy, tf.transpose(kernel, [0, 1, 3, 2]), [1, 1, 1, 1], "VALID")
    dkernel = tf.matmul(tf.reshape(x, [-1, channels_in]), tf.reshape(dy, [-1, channels_out]),
                        transpose_a=True)
    return dx, tf.reshape(dkernel, tf.shape(kernel))

  return tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "VALID"), gradients
