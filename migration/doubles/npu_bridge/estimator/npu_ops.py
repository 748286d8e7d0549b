"""npu_ops: dropout with the adapter's checks (built on tf.nn.dropout), system init/shutdown."""
import numbers

import tensorflow.compat.v1 as tf


def dropout(x, keep_prob, noise_shape=None, seed=None, name=None):
  """Dropout by keep probability; the adapter's DropOutGenMask/DoMask pair on the device."""
  if tf.executing_eagerly():
    raise RuntimeError("npu_ops.dropout() is not compatible with eager execution.")
  x = tf.convert_to_tensor(x, name="x")
  if not x.dtype.is_floating:
    raise ValueError("npu_ops.dropout: x has to be a floating point tensor since it's going to "
                     "be scaled, got a %s tensor instead." % x.dtype.name)
  if isinstance(keep_prob, numbers.Real) and not 0 < keep_prob <= 1:
    raise ValueError("npu_ops.dropout: keep_prob must be a scalar tensor or a float in the "
                     "range (0, 1], got %g" % keep_prob)
  if isinstance(keep_prob, float) and keep_prob == 1.0:
    return x
  return tf.nn.dropout(x, rate=1 - keep_prob, noise_shape=noise_shape, seed=seed, name=name)


def initialize_system(name=None):
  return tf.no_op(name=name)


def shutdown_system(name=None):
  return tf.no_op(name=name)
