"""Backend selection: which device the run uses and whether npu_bridge is present.

`--device=auto` picks the NPU when `npu_bridge` imports, a GPU when TensorFlow sees one,
else the CPU. Everything NPU-specific elsewhere in the project asks `Backend.is_npu`.
"""
import importlib

import tensorflow.compat.v1 as tf

DEVICES = ("auto", "npu", "gpu", "cpu")


class BackendError(ValueError):
  """A device was requested that this machine cannot provide."""


class Backend(object):
  """The resolved device, plus the npu_bridge modules when running on the NPU."""

  def __init__(self, device, npu_bridge=None):
    self.device = device
    self.npu_bridge = npu_bridge

  @property
  def is_npu(self):
    return self.device == "npu"

  @property
  def is_gpu(self):
    return self.device == "gpu"

  def npu_module(self, name):
    """Imports `npu_bridge.<name>`; only meaningful on the NPU backend."""
    return importlib.import_module("npu_bridge." + name)

  def __repr__(self):
    return "Backend(%s)" % self.device


def npu_bridge_available():
  try:
    importlib.import_module("npu_bridge.estimator.npu.npu_config")
    return True
  except ImportError:
    return False


def gpu_available():
  try:
    return bool(tf.config.experimental.list_physical_devices("GPU"))
  except AttributeError:  # pragma: no cover - very old TF
    return tf.test.is_gpu_available()


def select_backend(device="auto"):
  """Resolves `--device` to a Backend, or raises BackendError with one clear line."""
  if device not in DEVICES:
    raise BackendError("--device=%s is not one of %s" % (device, "|".join(DEVICES)))
  if device == "auto":
    if npu_bridge_available():
      device = "npu"
    elif gpu_available():
      device = "gpu"
    else:
      device = "cpu"
  if device == "npu":
    if not npu_bridge_available():
      raise BackendError(
          "--device=npu needs Huawei's npu_bridge (TF 1.15 + CANN), which is not importable "
          "here; use --device=auto, cpu or gpu")
    return Backend("npu", importlib.import_module("npu_bridge"))
  if device == "gpu" and not gpu_available():
    raise BackendError("--device=gpu but TensorFlow sees no GPU; use --device=auto or cpu")
  return Backend(device)


_active = Backend("cpu")


def activate(backend):
  """Makes `backend` the one model code sees through `current()` (set by the run loop)."""
  global _active
  _active = backend
  return backend


def current():
  return _active
