"""Collectives and wrappers for a world of one rank, where each returns its input.

With a rank size > 1 they raise NotImplementedError (one process is one rank).
"""
from npu_device import _env

_REDUCTIONS = ("mean", "sum", "max", "min", "prod")


def _same_kind(values):
  return list(values) if isinstance(values, (list, tuple)) else values


def all_reduce(values, reduction="mean", fusion=1, fusion_id=-1, group="hccl_world_group"):
  """`values`: a tensor or a list of tensors (a list in gives a list out)."""
  del fusion, fusion_id, group
  if reduction not in _REDUCTIONS:
    raise ValueError("reduction must be one of %r, got %r" % (_REDUCTIONS, reduction))
  _env.require_single_rank("npu_device.distribute.all_reduce")
  return _same_kind(values)


def broadcast(values, root_rank=0, fusion=2, fusion_id=0, group="hccl_world_group"):
  """`values`: a tensor/variable or a list of them (a list in gives a list out)."""
  del root_rank, fusion, fusion_id, group
  _env.require_single_rank("npu_device.distribute.broadcast")
  return _same_kind(values)


def npu_distributed_keras_optimizer_wrapper(optimizer):
  _env.require_single_rank("npu_device.distribute.npu_distributed_keras_optimizer_wrapper")
  return optimizer


def shard_and_rebatch_dataset(dataset, global_bs):
  """One rank: the whole dataset at the global batch size, unchanged."""
  del global_bs
  _env.require_single_rank("npu_device.distribute.shard_and_rebatch_dataset")
  return dataset


def grouping_gradients_apply(apply_func, grads_and_vars):
  """Returns apply_func(grads_and_vars) (the all-reduce of one rank is the identity)."""
  _env.require_single_rank("npu_device.distribute.grouping_gradients_apply")
  return apply_func(grads_and_vars)


def grouping_broadcast(variables):
  _env.require_single_rank("npu_device.distribute.grouping_broadcast")
  return _same_kind(variables)
