"""Session hooks of the adapter; the device-only ones only record their arguments."""
import tensorflow.compat.v1 as tf

from npu_bridge.estimator.npu import util
from npu_bridge.hccl import hccl_ops


class NPUBroadcastGlobalVariablesHook(tf.train.SessionRunHook):
  """Broadcasts the global variables from `root_rank` when the rank size is above 1."""

  def __init__(self, root_rank=None, index=None):
    self._root_rank = root_rank
    self._index = index
    self._broadcast_op = None

  def begin(self):
    if util._rank_size_as_int() > 1:
      variables = tf.global_variables()
      received = hccl_ops.broadcast(variables, self._root_rank)
      self._broadcast_op = tf.group(*[tf.assign(variable, value)
                                      for variable, value in zip(variables, received)])

  def after_create_session(self, session, coord):
    if self._broadcast_op is not None:
      session.run(self._broadcast_op)


class NPUCheckpointSaverHook(tf.train.CheckpointSaverHook):
  """CheckpointSaverHook with the adapter's signature (the adapter only adds logging)."""

  def __init__(self, checkpoint_dir, save_secs=None, save_steps=None, saver=None,
               checkpoint_basename="model.ckpt", scaffold=None, listeners=None):
    super(NPUCheckpointSaverHook, self).__init__(
        checkpoint_dir, save_secs=save_secs, save_steps=save_steps, saver=saver,
        checkpoint_basename=checkpoint_basename, scaffold=scaffold, listeners=listeners)


class SetIterationsVarHook(tf.train.SessionRunHook):
  """Loads the device loop count on the NPU; on CPU each Session.run stays one step."""

  def __init__(self, iterations_per_loop=None):
    self._iterations_per_loop = iterations_per_loop


class NPUOutputTensorHook(tf.train.LoggingTensorHook):
  """Collects the `tensors` values every step and hands the list to `output_fn` every
  `output_every_n_steps` steps and at the end. As in the adapter, the default 0 makes the
  first step fail with a modulo by zero. `dependencies` is stored only (its use is not in
  the reference)."""

  def __init__(self, tensors, dependencies=None, output_fn=None, output_every_n_steps=0):
    super(NPUOutputTensorHook, self).__init__(tensors, every_n_iter=1)
    self._dependencies = dependencies
    self._output_fn = output_fn
    self._output_every_n_steps = output_every_n_steps
    self._outputs = []

  def after_run(self, run_context, run_values):
    self._outputs.append(run_values.results)
    self._iter_count += 1
    if self._iter_count % self._output_every_n_steps == 0:
      self._flush()

  def end(self, session):
    if self._outputs:
      self._flush()

  def _flush(self):
    self._output_fn(self._outputs)
    self._outputs = []


class TellMeStepOrLossHook(tf.train.SessionRunHook):
  """Reports progress on the device; the reference does not describe it, so it records."""

  def __init__(self, step=None, total_step=None, loss=None, final_loss=None):
    self._step = step
    self._total_step = total_step
    self._loss = loss
    self._final_loss = final_loss


class NPUInfeedOutfeedSessionHook(tf.train.SessionRunHook):
  """The host side of an NPUEstimatorSpec host_call: in the double it only initialises and
  flushes the v2 summary writers the host_call created (the outfeed itself is replaced by a
  control dependency, see npu_estimator._run_host_call)."""

  def begin(self):
    from tensorflow.python.ops import summary_ops_v2  # pylint: disable=g-import-not-at-top
    self._init_ops = summary_ops_v2.summary_writer_initializer_op()
    self._flush_op = summary_ops_v2.flush()

  def after_create_session(self, session, coord):
    del coord
    session.run(self._init_ops)

  def end(self, session):
    session.run(self._flush_op)
