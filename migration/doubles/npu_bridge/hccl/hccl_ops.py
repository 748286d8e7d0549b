"""HCCL collectives for a world of one rank, where each of them returns its input.

One process is one rank here, so above that (RANK_SIZE / CM_WORKER_SIZE > 1) a collective
cannot be computed. It still builds an op of the collective's dtype and shape, which raises
NotImplementedError (tf.errors.UnimplementedError) when it is run: a multi-rank graph (the
averaging of NPUDistributedOptimizer, the broadcast hook) can be built and inspected, and
nothing pretends that HCCL ran.
"""
import tensorflow.compat.v1 as tf

from npu_bridge.estimator.npu import util


def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
  del reduction, fusion, fusion_id, group
  refusal = util._single_rank_refusal("hccl_ops.allreduce")
  if refusal is None:
    return tensor
  tensor = tf.convert_to_tensor(tensor)
  return _fails_when_run(refusal, tensor, tensor.shape)


def allgather(tensor, rank_size, group="hccl_world_group", fusion=0, fusion_id=-1):
  del group, fusion, fusion_id
  refusal = util._single_rank_refusal("hccl_ops.allgather")
  if refusal is None and rank_size == 1:
    return tensor
  tensor = tf.convert_to_tensor(tensor)
  shape = tensor.shape
  if shape.ndims:  # the ranks' tensors concatenated on the first axis
    first = tf.compat.dimension_value(shape[0])
    shape = tf.TensorShape([None if first is None else first * rank_size]).concatenate(
        shape[1:])
  return _fails_when_run(refusal or "hccl_ops.allgather: the npu_bridge test double runs "
                         "one rank, but rank_size is %r" % (rank_size,), tensor, shape)


def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group="hccl_world_group"):
  """`tensor` is a list of tensors, as in the adapter."""
  del root_rank, fusion, fusion_id, group
  refusal = util._single_rank_refusal("hccl_ops.broadcast")
  if refusal is None:
    return list(tensor)
  values = [tf.convert_to_tensor(value) for value in tensor]
  return [_fails_when_run(refusal, value, value.shape) for value in values]


def _fails_when_run(refusal, tensor, shape):
  """A `shape` tensor of `tensor`'s dtype, computed from it, whose run raises `refusal`."""

  def refuse(unused_value):
    raise NotImplementedError(refusal)

  result = tf.py_func(refuse, [tensor], tensor.dtype, stateful=True)
  result.set_shape(shape)
  return result
