"""Backend selection: which device the run uses and, on an Ascend NPU, through which adapter.

`--device=auto` picks the NPU when an Ascend adapter imports, a GPU when TensorFlow sees
one, else the CPU. The adapter follows the TensorFlow stack: `npu_bridge` on TF 1.15,
`npu_device` on TF 2.x (looked for first there; `npu_bridge` is taken only where no
`npu_device` is found, as with this project's test double). Everything NPU-specific
elsewhere asks `Backend.is_npu`, and `uses_npu_bridge` / `uses_npu_device` where the two
adapters differ.
"""
import importlib
import os

import tensorflow.compat.v1 as tf
from absl import logging

DEVICES = ("auto", "npu", "gpu", "cpu")
TF1 = tf.__version__.startswith("1.")
# The adapter packages of this stack, in the order they are looked for, and a module each
# that must import for the adapter to count as present.
ADAPTERS = (("npu_bridge", "npu_bridge.estimator.npu.npu_config"),) if TF1 else (
    ("npu_device", "npu_device"), ("npu_bridge", "npu_bridge.estimator.npu.npu_config"))


class BackendError(ValueError):
  """A device was requested that this machine cannot provide."""


class Backend(object):
  """The resolved device, plus the adapter package (npu_bridge or npu_device) on the NPU."""

  def __init__(self, device, adapter=None):
    self.device = device
    self.adapter = adapter

  @property
  def is_npu(self):
    return self.device == "npu"

  @property
  def is_gpu(self):
    return self.device == "gpu"

  @property
  def uses_npu_bridge(self):
    return self.is_npu and self.adapter.__name__ == "npu_bridge"

  @property
  def uses_npu_device(self):
    return self.is_npu and self.adapter.__name__ == "npu_device"

  def npu_module(self, name):
    """Imports `npu_bridge.<name>`; only meaningful when `uses_npu_bridge`."""
    return importlib.import_module("npu_bridge." + name)

  def __repr__(self):
    if self.is_npu:
      return "Backend(npu via %s)" % self.adapter.__name__
    return "Backend(%s)" % self.device


def npu_adapter():
  """The Ascend adapter package importable on this stack, or None."""
  for package, probe in ADAPTERS:
    try:
      importlib.import_module(probe)
    except ImportError:
      continue
    return importlib.import_module(package)
  return None


def gpu_available():
  try:
    return bool(tf.config.experimental.list_physical_devices("GPU"))
  except AttributeError:  # pragma: no cover - very old TF
    return tf.test.is_gpu_available()


def select_backend(device="auto"):
  """Resolves `--device` to a Backend, or raises BackendError with one clear line."""
  if device not in DEVICES:
    raise BackendError("--device=%s is not one of %s" % (device, "|".join(DEVICES)))
  adapter = npu_adapter() if device in ("auto", "npu") else None
  if device == "auto":
    device = "npu" if adapter else "gpu" if gpu_available() else "cpu"
  if device == "npu":
    if adapter is None:
      raise BackendError(
          "--device=npu needs Huawei's %s, which is not importable here; use --device=auto, "
          "cpu or gpu" % ("npu_bridge (TF 1.15 + CANN)" if TF1 else
                          "npu_device (the TF 2.x adapter from CANN)"))
    logging.info("NPU through %s, device id %s (ASCEND_DEVICE_ID)", adapter.__name__,
                 os.environ.get("ASCEND_DEVICE_ID", "0"))
    return Backend("npu", adapter)
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
