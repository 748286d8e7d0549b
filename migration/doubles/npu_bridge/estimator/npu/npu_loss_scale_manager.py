"""Loss-scale managers with the adapter's update rule, on plain tf variables (no contrib)."""
import tensorflow.compat.v1 as tf

_MAX_FP32 = 3.4e38


class FixedLossScaleManager(object):

  def __init__(self, loss_scale, enable_overflow_check=True):
    if loss_scale < 1:
      raise ValueError("loss_scale must be at least 1, got %r" % (loss_scale,))
    self._loss_scale = tf.convert_to_tensor(loss_scale, dtype=tf.float32)
    self._enable_overflow_check = enable_overflow_check

  def get_loss_scale(self):
    return self._loss_scale

  def update_loss_scale(self, finite_grads):
    del finite_grads
    return tf.no_op()

  def get_enable_overflow_check(self):
    return self._enable_overflow_check


class ExponentialUpdateLossScaleManager(object):
  """Grows the scale after `incr_every_n_steps` finite steps, shrinks it after
  `decr_every_n_nan_or_inf` overflowing ones (table in npu_bridge_api.md §4.2)."""

  def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2,
               incr_ratio=2, decr_ratio=0.8):
    self._incr_every_n_steps = incr_every_n_steps
    self._decr_every_n_nan_or_inf = decr_every_n_nan_or_inf
    self._incr_ratio = incr_ratio
    self._decr_ratio = decr_ratio
    self._loss_scale = tf.Variable(float(init_loss_scale), name="loss_scale", dtype=tf.float32,
                                   trainable=False)
    self._num_good_steps = tf.Variable(0, name="good_steps", dtype=tf.int32, trainable=False)
    self._num_bad_steps = tf.Variable(0, name="bad_steps", dtype=tf.int32, trainable=False)

  def get_loss_scale(self):
    return self._loss_scale.read_value()

  def update_loss_scale(self, finite_grads):
    scale = self._loss_scale.read_value()
    good_steps = self._num_good_steps.read_value()
    bad_steps = self._num_bad_steps.read_value()
    increase = tf.logical_and(finite_grads, good_steps + 1 >= self._incr_every_n_steps)
    decrease = tf.logical_and(tf.logical_not(finite_grads),
                              bad_steps + 1 >= self._decr_every_n_nan_or_inf)
    new_scale = tf.where(
        tf.logical_and(increase, scale < _MAX_FP32 / self._incr_ratio),
        scale * self._incr_ratio,
        tf.where(decrease, tf.maximum(1.0, scale * self._decr_ratio), scale))
    zero = tf.constant(0, tf.int32)
    new_good_steps = tf.where(tf.logical_and(finite_grads, tf.logical_not(increase)),
                              good_steps + 1, zero)
    new_bad_steps = tf.where(tf.logical_or(increase, decrease), zero,
                             tf.where(finite_grads, bad_steps, bad_steps + 1))
    return tf.group(self._loss_scale.assign(new_scale),
                    self._num_good_steps.assign(new_good_steps),
                    self._num_bad_steps.assign(new_bad_steps))
