"""Rank size and the session-mode loop helper."""
import os

import tensorflow.compat.v1 as tf


def get_ranksize():
  """`RANK_SIZE`, else `CM_WORKER_SIZE`, else "1" (a string, as the adapter returns it)."""
  rank_size = os.environ.get("RANK_SIZE")
  worker_size = os.environ.get("CM_WORKER_SIZE")
  if rank_size is not None and worker_size is not None:
    raise ValueError("RANK_SIZE and CM_WORKER_SIZE cannot be set at the same time")
  return rank_size or worker_size or "1"


def _rank_size_as_int():
  """The rank size as the hooks read it: a non-numeric value counts as 1."""
  rank_size = get_ranksize()
  return int(rank_size) if rank_size.isdigit() else 1


def _single_rank_refusal(what):
  """Why `what` cannot run here, or None at one rank: the double runs one process as one
  rank and does not fake a larger world."""
  rank_size = _rank_size_as_int()
  if rank_size <= 1:
    return None
  return ("%s: the npu_bridge test double runs one rank, but the rank size is %d "
          "(RANK_SIZE / CM_WORKER_SIZE)" % (what, rank_size))


def _require_single_rank(what):
  refusal = _single_rank_refusal(what)
  if refusal:
    raise NotImplementedError(refusal)


def _check_iterations_per_loop(iterations_per_loop):
  if not isinstance(iterations_per_loop, int):
    raise TypeError("iterations_per_loop must be an int, got %r" % (iterations_per_loop,))
  if iterations_per_loop <= 0:
    raise ValueError("iterations_per_loop must be positive, got %d" % iterations_per_loop)


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
  """Session-mode loop offload; on CPU each run stays one step, so only the op changes."""
  del sess  # the adapter loads the loop variables through it
  if not isinstance(train_op, tf.Operation):
    raise ValueError("train_op must be a tf.Operation, got %r" % (train_op,))
  _check_iterations_per_loop(iterations_per_loop)
  if iterations_per_loop == 1:
    return train_op
  return tf.group(train_op, name="IterationOp")
