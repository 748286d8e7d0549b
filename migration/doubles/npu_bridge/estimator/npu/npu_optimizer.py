"""Distributed optimizer wrappers; at one rank they average over a world of one."""
import tensorflow.compat.v1 as tf

from npu_bridge.estimator.npu import npu_loss_scale_optimizer
from npu_bridge.estimator.npu import util
from npu_bridge.hccl import hccl_ops


def npu_allreduce(values, reduction="mean", fusion=1, fusion_id=-1, group="hccl_world_group"):
  """All-reduces a tensor or a list of them ("mean" = sum / rank size); IndexedSlices are
  all-gathered. A list or tuple in gives a list out."""
  rank_size = util._rank_size_as_int()

  def reduce_one(value):
    if isinstance(value, tf.IndexedSlices):
      gathered_values, gathered_indices = [
          hccl_ops.allgather(part, rank_size, group=group, fusion=fusion, fusion_id=fusion_id)
          for part in (value.values, value.indices)]
      if reduction == "mean":
        gathered_values = gathered_values / rank_size
      return tf.IndexedSlices(gathered_values, gathered_indices, value.dense_shape)
    reduced = hccl_ops.allreduce(value, "sum" if reduction == "mean" else reduction,
                                 fusion=fusion, fusion_id=fusion_id, group=group)
    return reduced / rank_size if reduction == "mean" else reduced

  if isinstance(values, (list, tuple)):
    return [reduce_one(value) for value in values]
  return reduce_one(values)


class NPUDistributedOptimizer(tf.train.Optimizer):
  """Averages gradients over ranks when the rank size is above 1, else passes through."""

  def __init__(self, optimizer, is_weight_update_sharding=False, name=None):
    super(NPUDistributedOptimizer, self).__init__(
        use_locking=False, name=name or "Distributed" + type(optimizer).__name__)
    self._optimizer = optimizer
    self._is_weight_update_sharding = is_weight_update_sharding

  def compute_gradients(self, *args, **kwargs):
    grads_and_vars = self._optimizer.compute_gradients(*args, **kwargs)
    if util._rank_size_as_int() <= 1:
      return grads_and_vars
    return [(None if grad is None else npu_allreduce(grad), var)
            for grad, var in grads_and_vars]

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    """Delegates; the weight-update-sharding path only differs with more than one rank."""
    return self._optimizer.apply_gradients(grads_and_vars, global_step, name)

  def get_slot(self, *args, **kwargs):
    return self._optimizer.get_slot(*args, **kwargs)

  def get_slot_names(self, *args, **kwargs):
    return self._optimizer.get_slot_names(*args, **kwargs)

  def variables(self):
    return self._optimizer.variables()


class NPUOptimizer(tf.train.Optimizer):
  """Distributed averaging and/or loss scaling around `opt`, as the flags ask."""

  def __init__(self, opt, loss_scale_manager=None, is_distributed=False, is_loss_scale=False,
               is_tailing_optimization=False, name=None):
    if is_loss_scale and loss_scale_manager is None:
      raise ValueError("NPUOptimizer: is_loss_scale=True needs a loss_scale_manager")
    super(NPUOptimizer, self).__init__(
        use_locking=False, name=name or "NPUOptimizer" + type(opt).__name__)
    chain = NPUDistributedOptimizer(opt) if is_distributed else opt
    if is_loss_scale:
      chain = npu_loss_scale_optimizer.NPULossScaleOptimizer(
          chain, loss_scale_manager, is_distributed=is_distributed)
    self._optimizer = chain
    self._is_tailing_optimization = is_tailing_optimization

  def compute_gradients(self, *args, **kwargs):
    return self._optimizer.compute_gradients(*args, **kwargs)

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    return self._optimizer.apply_gradients(grads_and_vars, global_step, name)


def npu_distributed_optimizer_wrapper(optimizer):
  """Returns the same optimizer (resolved with keras.optimizers.get if a string).

  The adapter patches its gradient methods to all-reduce when the rank size is above 1;
  the double runs one rank and refuses a larger rank size.
  """
  if isinstance(optimizer, str):
    optimizer = tf.keras.optimizers.get(optimizer)
  util._require_single_rank("npu_distributed_optimizer_wrapper")
  return optimizer
