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
