"""HCCL collectives for a world of one rank, where each of them returns its input."""
from npu_bridge.estimator.npu import util


def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
  del reduction, fusion, fusion_id, group
  util._require_single_rank("hccl_ops.allreduce")
  return tensor


def allgather(tensor, rank_size, group="hccl_world_group", fusion=0, fusion_id=-1):
  del group, fusion, fusion_id
  if rank_size != 1:
    raise NotImplementedError("hccl_ops.allgather: the test double supports rank_size=1, "
                              "got %r" % (rank_size,))
  util._require_single_rank("hccl_ops.allgather")
  return tensor


def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group="hccl_world_group"):
  """`tensor` is a list of tensors, as in the adapter."""
  del root_rank, fusion, fusion_id, group
  util._require_single_rank("hccl_ops.broadcast")
  return list(tensor)
