"""open()/close(), global_options() and the device-level switches (one device per process).

Double-only inspection hooks: `opened`, `loop_sizes`, `sat_modes` and `default_device()`.
"""
import contextlib
import os

from npu_device import _env
from npu_device import configs

# Double-only: one (device_id, options) pair per open() that opened a device, where
# options is the global_options().as_dict() snapshot taken by that call.
opened = []
# Double-only: every value passed to set_npu_loop_size() / set_device_sat_mode().
loop_sizes = []
sat_modes = []

_GLOBAL_OPTIONS = configs.NpuConfig()
_device = None
_default = None


def global_options():
  """The process-wide NpuConfig; set options before open()."""
  return _GLOBAL_OPTIONS


class NpuDevice(object):
  """The handle open() returns; `options` is the snapshot the device was opened with."""

  def __init__(self, device_id, options):
    self.device_id = device_id
    self.options = options
    self.name = "/job:localhost/replica:0/task:0/device:NPU:%d" % device_id

  def as_default(self):
    """Makes this the default device now; used with `with`, restores the previous one."""
    return _DefaultDevice(self)

  def scope(self):
    """A no-op scope: ops stay where TensorFlow places them (the CPU)."""
    return contextlib.nullcontext(self)


class _DefaultDevice(object):

  def __init__(self, device):
    global _default
    self._device = device
    self._previous = _default
    _default = device

  def __enter__(self):
    return self._device

  def __exit__(self, *unused_exc_info):
    global _default
    _default = self._previous


def default_device():
  """Double-only: the handle made default by as_default(), else None."""
  return _default


def open(device_id=None):  # pylint: disable=redefined-builtin
  """Opens the device with the options set so far; later option changes are not seen.

  A second open() of the open device returns the same handle (options are not re-read);
  another device id raises RuntimeError until close().
  """
  global _device
  if device_id is None:
    device_id = int(os.environ.get("ASCEND_DEVICE_ID") or 0)
  if not isinstance(device_id, int) or isinstance(device_id, bool):
    raise TypeError("device_id must be an int, got %r" % (device_id,))
  if device_id < 0:
    raise ValueError("device_id must be >= 0, got %d" % device_id)
  if _device is not None:
    if device_id != _device.device_id:
      raise RuntimeError("npu_device: device %d is open; one device per process, "
                         "close() it before opening device %d"
                         % (_device.device_id, device_id))
    return _device
  _env.check_cluster()
  options = _GLOBAL_OPTIONS.as_dict()
  _device = NpuDevice(device_id, dict(options))
  opened.append((device_id, options))
  return _device


def close():
  """Closes the open device, if any."""
  global _device, _default
  if _default is _device:
    _default = None
  _device = None


def set_npu_loop_size(loop_size):
  """Records the loop size (a positive int); the double has no device loop."""
  if not isinstance(loop_size, int) or isinstance(loop_size, bool) or loop_size <= 0:
    raise ValueError("loop_size must be a positive int, got %r" % (loop_size,))
  loop_sizes.append(loop_size)


@contextlib.contextmanager
def npu_run_context(options=None):
  """A no-op context."""
  del options
  yield


@contextlib.contextmanager
def keep_dtype_scope():
  """A no-op scope."""
  yield


@contextlib.contextmanager
def npu_recompute_scope():
  """A no-op scope."""
  yield


def set_device_sat_mode(mode):
  """Records `mode`; it changes nothing on CPU."""
  sat_modes.append(mode)


def is_inf_nan_enabled():
  """True: CPU arithmetic overflows to inf/nan whatever set_device_sat_mode() got."""
  return True
