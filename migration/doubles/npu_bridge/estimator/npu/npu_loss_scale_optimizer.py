"""NPULossScaleOptimizer: scale the loss, unscale the gradients, skip overflowing steps."""
import tensorflow.compat.v1 as tf

from npu_bridge.estimator.npu import npu_loss_scale_manager
from npu_bridge.hccl import hccl_ops


class NPULossScaleOptimizer(tf.train.Optimizer):
  """On overflow the wrapped apply_gradients, including its global_step increment, is
  skipped; the manager is updated every step. Finiteness is tested with tf.math.is_finite
  (the adapter reads the device float status instead)."""

  def __init__(self, opt, loss_scale_manager, is_distributed=False):
    super(NPULossScaleOptimizer, self).__init__(use_locking=False, name="LossScaleOptimizer")
    self._opt = opt
    self._loss_scale_manager = loss_scale_manager
    self._is_distributed = is_distributed

  def __getattr__(self, name):
    if name == "_opt":  # not yet set: avoid recursing while constructing
      raise AttributeError(name)
    return getattr(self._opt, name)

  def compute_gradients(self, loss, var_list=None, gate_gradients=tf.train.Optimizer.GATE_OP,
                        aggregation_method=None, colocate_gradients_with_ops=False,
                        grad_loss=None):
    loss_scale = self._loss_scale_manager.get_loss_scale()
    grads_and_vars = self._opt.compute_gradients(
        loss * tf.cast(loss_scale, loss.dtype), var_list=var_list,
        gate_gradients=gate_gradients, aggregation_method=aggregation_method,
        colocate_gradients_with_ops=colocate_gradients_with_ops, grad_loss=grad_loss)
    return [(_unscale(grad, loss_scale), var) for grad, var in grads_and_vars]

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    grads_and_vars = list(grads_and_vars)
    manager = self._loss_scale_manager
    if (isinstance(manager, npu_loss_scale_manager.FixedLossScaleManager) and
        not manager.get_enable_overflow_check()):
      finite = tf.constant(True)
    else:
      overflow_count = tf.add_n([
          tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(grad)), tf.float32))
          for grad in _dense_values(grads_and_vars)])
      if self._is_distributed:
        overflow_count = hccl_ops.allreduce(overflow_count, "sum", fusion=0)
      finite = tf.equal(overflow_count, 0.0)
    apply_op = tf.cond(finite,
                       lambda: self._opt.apply_gradients(grads_and_vars, global_step, name),
                       tf.no_op)
    return tf.group(apply_op, manager.update_loss_scale(finite))


def _unscale(grad, loss_scale):
  if grad is None:
    return None
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(_unscale(grad.values, loss_scale), grad.indices, grad.dense_shape)
  return grad * tf.cast(1.0 / loss_scale, grad.dtype)


def _dense_values(grads_and_vars):
  return [grad.values if isinstance(grad, tf.IndexedSlices) else grad
          for grad, _ in grads_and_vars if grad is not None]
