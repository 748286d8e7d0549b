"""What keeps a run's work safe: a graceful stop on SIGTERM/Ctrl-C, one trainer per model_dir.

- `GracefulStop`: while it is active, SIGTERM (what schedulers and preemption send) and
  SIGINT (Ctrl-C) ask the run to stop instead of killing it. Training stops after the
  step under way, and the Estimator saves a checkpoint at that step as it closes; an
  evaluation under way is abandoned (its partial figures are never reported). The run loop
  then raises `Interrupted`, prints its final metrics line marked `"interrupted"` and exits
  with 128 + the signal number, as a shell reports a killed process. A second signal of
  the same kind kills at once.
- `TrainingLock`: an exclusive lock on `<model_dir>/.training.lock` (flock: the kernel
  frees it when the holder dies, so a stale lock is simply taken over). A second trainer
  in the same folder stops with one line; evaluation takes no lock and runs alongside.
"""
import datetime
import fcntl
import json
import os
import signal
import socket

import tensorflow.compat.v1 as tf
from absl import logging

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """The run was asked to stop by a signal; `exit_code` is 128 + its number."""

  def __init__(self, signum):
    super(Interrupted, self).__init__(signal.Signals(signum).name)
    self.signal_name = signal.Signals(signum).name
    self.exit_code = 128 + signum


class _StopHook(tf.train.SessionRunHook):
  """Ends the Estimator's loop after the step under way once a signal has arrived."""

  def __init__(self, stop):
    self._stop = stop

  def after_run(self, run_context, run_values):
    del run_values
    if self._stop.signum is not None:
      run_context.request_stop()


class GracefulStop(object):
  """A context in which SIGTERM and SIGINT request a stop (see the module docstring)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum == signum:  # asked twice: stop now
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    self.signum = signum
    logging.warning("%s received: stopping after the step under way (again to kill now)",
                    signal.Signals(signum).name)

  def hook(self):
    return _StopHook(self)

  def check(self):
    """Raises Interrupted if a signal has arrived."""
    if self.signum is not None:
      raise Interrupted(self.signum)

  def __enter__(self):
    for signum in _SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class LockedError(ValueError):
  """Another live process trains in this model_dir (the message is one line)."""


def _describe(holder):
  """The lock file's JSON as words."""
  try:
    return "process %(pid)s on %(host)s (since %(since)s)" % json.loads(holder)
  except (ValueError, KeyError, TypeError):
    return "another process"


class TrainingLock(object):
  """An exclusive flock on `<model_dir>/.training.lock` while the block runs."""

  def __init__(self, model_dir):
    self.path = os.path.join(model_dir, ".training.lock")
    self._file = None

  def __enter__(self):
    self._file = open(self.path, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      holder = _describe(self._file.read())
      self._file.close()
      raise LockedError("--model_dir=%s is being trained by %s; use another --model_dir, or "
                        "stop that run first (evaluation may run alongside)"
                        % (os.path.dirname(self.path), holder))
    self._file.seek(0)
    previous = self._file.read()
    if previous.strip():
      logging.info("taking over the training lock of %s, which has ended",
                   _describe(previous))
    self._file.seek(0)
    self._file.truncate()
    self._file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.datetime.now().isoformat(
                                     timespec="seconds")}))
    self._file.flush()
    return self

  def __exit__(self, *exc_info):
    self._file.seek(0)
    self._file.truncate()
    self._file.close()  # closing releases the flock
