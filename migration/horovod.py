"""`horovod.tensorflow` for ported scripts: HCCL data parallelism on the NPU.

Huawei's tool maps Horovod to HCCL (migration_tool.md §2.8); `migration.convert` rewrites
`hvd.X` to these. The rank comes from RANK_ID/RANK_SIZE, as the ModelZoo launch scripts
set them. Off the NPU a run is one process: several ranks there need tf.distribute.
"""
import tensorflow.compat.v1 as tf

from migration import compat
from migration import optimizers
from migration import runtime


def init(comm=None):
  del comm
  if not runtime.settings().backend.is_npu and optimizers.rank_size() > 1:
    raise SystemExit("error: RANK_SIZE=%d: Horovod ranks map to NPU devices (HCCL); off the "
                     "NPU run one process or use tf.distribute" % optimizers.rank_size())


def size():
  return compat.rank_size()


def rank():
  return compat.rank_id()


def local_size():
  return compat.rank_size()


def local_rank():
  return compat.rank_id()


def DistributedOptimizer(optimizer, name=None, use_locking=False, device_dense="",  # pylint: disable=invalid-name
                         device_sparse="", compression=None, sparse_as_dense=False,
                         backward_passes_per_step=1, op=None, gradient_predivide_factor=1.0,
                         average_aggregated_gradients=False, num_groups=0, groups=None):
  """Gradients averaged over the NPU devices when several train; the optimizer on one."""
  del name, use_locking, device_dense, device_sparse, compression, sparse_as_dense
  del backward_passes_per_step, op, gradient_predivide_factor, average_aggregated_gradients
  del num_groups, groups
  return optimizers.distributed_optimizer(optimizer, runtime.settings().backend)


def BroadcastGlobalVariablesHook(root_rank, device=""):  # pylint: disable=invalid-name
  """Rank `root_rank`'s initial variables to every NPU device; a no-op hook on one."""
  del device
  backend = runtime.settings().backend
  if compat.rank_size() == 1:
    return tf.train.SessionRunHook()
  if backend.uses_npu_bridge:
    hooks = backend.npu_module("estimator.npu.npu_hook")
    return hooks.NPUBroadcastGlobalVariablesHook(root_rank, compat.rank_id())
  return optimizers.BroadcastVariablesHook(backend.adapter, root_rank)


def allreduce(tensor, average=None, device_dense="", device_sparse="", compression=None,
              op=None, prescale_factor=1.0, postscale_factor=1.0, name=None):
  """HCCL allreduce (mean unless `op` or `average` says sum) over the NPU devices; identity
  on one."""
  del device_dense, device_sparse, compression, prescale_factor, postscale_factor
  if compat.rank_size() == 1:
    return tf.identity(tensor, name=name)
  mean = average if average is not None else op in (None, "Average")
  total = optimizers.all_reduce_sum(tensor, runtime.settings().backend)
  return total / compat.rank_size() if mean else total
