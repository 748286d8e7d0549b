"""Rank size and the cluster variables that open() needs."""
import os

# Either set is enough for open() when the rank size is > 1 (npu_bridge_api.md §11.1).
RANK_TABLE_VARIABLES = ("RANK_TABLE_FILE", "RANK_ID")
CM_VARIABLES = ("CM_CHIEF_IP", "CM_CHIEF_PORT", "CM_CHIEF_DEVICE", "CM_WORKER_IP")


def rank_size():
  """`RANK_SIZE`, else `CM_WORKER_SIZE`, else 1 (an int)."""
  rank = os.environ.get("RANK_SIZE")
  workers = os.environ.get("CM_WORKER_SIZE")
  if rank is not None and workers is not None:
    raise ValueError("RANK_SIZE and CM_WORKER_SIZE cannot be set at the same time")
  value = rank or workers or "1"
  try:
    return int(value)
  except ValueError:
    raise ValueError("the rank size (RANK_SIZE / CM_WORKER_SIZE) must be an integer, "
                     "got %r" % value) from None


def check_cluster():
  """With more than one rank, requires a rank table or the CM_* variables."""
  size = rank_size()
  if size <= 1:
    return
  for names in (RANK_TABLE_VARIABLES, CM_VARIABLES):
    if all(os.environ.get(name) for name in names):
      return
  raise ValueError("rank size is %d: set %s, or %s" % (
      size, " and ".join(RANK_TABLE_VARIABLES), ", ".join(CM_VARIABLES)))


def require_single_rank(what):
  """The double runs one process as one rank; refuse to fake a larger world."""
  size = rank_size()
  if size > 1:
    raise NotImplementedError(
        "%s: the npu_device test double runs one rank, but the rank size is %d "
        "(RANK_SIZE / CM_WORKER_SIZE)" % (what, size))
