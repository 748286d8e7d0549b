"""Checkpoints a run can trust: intact, written by this configuration, never NaN.

- `verify(path)` reads every tensor of a checkpoint; TF's reader checks each tensor's
  CRC32C, so a truncated, zeroed or bit-flipped `.data` / `.index` is found before any
  graph is built (reading is fast next to training: the file is read once).
- `newest_intact(model_dir)` walks the model_dir's checkpoints from the newest, naming each
  corrupt one. `set_aside_corrupt(model_dir)` (training only: it holds the model_dir lock)
  moves corrupt checkpoints into `<model_dir>/corrupt/` and points the `checkpoint` state
  file at the newest intact one, so that the Estimator resumes from it.
- `CompatibilityHook` compares, before the session restores anything, the graph's
  variables with the checkpoint's; a variable whose shape differs names itself, both shapes
  and the flags that differ from the run that wrote `flags.json`.
- `FiniteWeightsListener` refuses to save a checkpoint whose weights hold NaN/inf, and
  `DivergenceHook` names the step at which the loss became NaN; the last good checkpoint
  stays the newest.
"""
import json
import os

import tensorflow.compat.v1 as tf
from absl import logging

CORRUPT_FOLDER = "corrupt"
FLAGS_FILE = "flags.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be used (the message is one line naming it)."""


class DivergedError(ValueError):
  """Training produced a non-finite loss or weights (one line: step, checkpoint kept)."""


def verify(path):
  """Raises CheckpointError naming `path` unless every tensor in it reads back intact."""
  try:
    reader = tf.train.NewCheckpointReader(path)
    for name in sorted(reader.get_variable_to_shape_map()):
      reader.get_tensor(name)
  except Exception as error:  # pylint: disable=broad-except  (TF 2 maps C++ statuses to
    # IndexError, RuntimeError, ... rather than OpError: any failure to read is corruption)
    reason = getattr(error, "message", None) or str(error)
    raise CheckpointError("checkpoint %s is corrupt: %s" % (path, reason.splitlines()[0]))


def _state_paths(model_dir):
  """The model_dir's checkpoint prefixes, newest first (from its `checkpoint` file)."""
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return []
  paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  if state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  paths = [p if os.path.isabs(p) else os.path.join(model_dir, p) for p in paths]
  return sorted(set(paths), key=_step, reverse=True)


def _step(path):
  suffix = path.rsplit("-", 1)[-1]
  return int(suffix) if suffix.isdigit() else -1


def newest_intact(model_dir):
  """(newest intact checkpoint or None, [corrupt ones newer than it]), each corrupt one
  logged with its reason."""
  corrupt = []
  for path in _state_paths(model_dir):
    if not tf.gfile.Exists(path + ".index"):
      continue  # deleted by keep_checkpoint_max, or by hand
    try:
      verify(path)
    except CheckpointError as error:
      logging.warning("%s", error)
      corrupt.append(path)
      continue
    return path, corrupt
  return None, corrupt


def set_aside_corrupt(model_dir):
  """Before training resumes: corrupt checkpoints go to `<model_dir>/corrupt/`, and the
  state file names the newest intact one. Raises CheckpointError when none is intact, as
  starting again from step 0 would silently discard the run."""
  intact, corrupt = newest_intact(model_dir)
  if not corrupt:
    return intact
  if intact is None:
    raise CheckpointError(
        "no intact checkpoint in --model_dir=%s (corrupt: %s); move them away to start "
        "from scratch" % (model_dir, ", ".join(os.path.basename(p) for p in corrupt)))
  target = os.path.join(model_dir, CORRUPT_FOLDER)
  tf.gfile.MakeDirs(target)
  for path in corrupt:
    for name in tf.gfile.Glob(path + ".*"):
      tf.gfile.Rename(name, os.path.join(target, os.path.basename(name)), overwrite=True)
  remaining = [p for p in _state_paths(model_dir) if p not in corrupt]
  tf.train.update_checkpoint_state(model_dir, intact,
                                   all_model_checkpoint_paths=sorted(remaining, key=_step))
  logging.warning("resuming from %s, the newest intact checkpoint; the corrupt ones are in %s",
                  intact, target)
  return intact


def write_flags(model_dir, flag_values):
  """Records the flags of the run that starts a model_dir (read by CompatibilityHook)."""
  with tf.gfile.GFile(os.path.join(model_dir, FLAGS_FILE), "w") as out:
    json.dump(flag_values, out, indent=1, sort_keys=True, default=str)


def _differing_flags(model_dir, flag_values):
  path = os.path.join(model_dir, FLAGS_FILE)
  if not tf.gfile.Exists(path):
    return []
  with tf.gfile.GFile(path) as f:
    recorded = json.load(f)
  return ["--%s=%s (now %s)" % (name, recorded[name], value)
          for name, value in sorted(flag_values.items())
          if name in recorded and recorded[name] != json.loads(json.dumps(value, default=str))]


class CompatibilityHook(tf.train.SessionRunHook):
  """Raises CheckpointError in `begin` (after the graph, before any restore) when a
  variable of the graph has another shape in the checkpoint the session will restore.

  `flag_values` are the model's own flags, diffed against the model_dir's flags.json."""

  def __init__(self, checkpoint_path, model_dir, flag_values):
    self._checkpoint_path = checkpoint_path
    self._model_dir = model_dir
    self._flag_values = flag_values

  def begin(self):
    path = self._checkpoint_path or tf.train.latest_checkpoint(self._model_dir)
    if not path:
      return
    saved = tf.train.NewCheckpointReader(path).get_variable_to_shape_map()
    for variable in tf.global_variables():
      name = variable.op.name
      here = variable.shape.as_list()
      if name in saved and saved[name] != here:
        differing = _differing_flags(self._model_dir, self._flag_values)
        raise CheckpointError(
            "checkpoint %s was written by another configuration: variable %s is %s there "
            "and %s here%s" % (path, name, saved[name], here,
                               "; flags that differ from the run that wrote it: " +
                               ", ".join(differing) if differing else
                               "; use a new --model_dir or the flags of that run"))


class FiniteWeightsListener(tf.train.CheckpointSaverListener):
  """Refuses to save weights holding NaN/inf: the last good checkpoint stays the newest."""

  def begin(self):
    self._all_finite = tf.reduce_all([
        tf.reduce_all(tf.is_finite(v)) for v in tf.trainable_variables()
        if v.dtype.base_dtype.is_floating])

  def before_save(self, session, global_step_value):
    if not session.run(self._all_finite):
      raise DivergedError("training diverged: weights hold NaN/inf at step %d; not saved"
                          % global_step_value)


class DivergenceHook(tf.train.SessionRunHook):
  """Keeps the step under way, so that the Estimator's NaN-loss stop (NanTensorHook,
  which names no step) can be reported as a DivergedError naming it."""

  def __init__(self):
    self.step = None

  def begin(self):
    self._global_step = tf.train.get_global_step()

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._global_step)

  def after_run(self, run_context, run_values):
    self.step = run_values.results

  def error(self, model_dir):
    return DivergedError(
        "training diverged: the loss is NaN at step %s; nothing was saved after it, the "
        "newest checkpoint is %s (lower the learning rate, or check the input data)"
        % (self.step, tf.train.latest_checkpoint(model_dir)))
