"""enable_v1(): switch the process to TF1-compat mode."""
import os

import tensorflow as tf

from npu_device import device

# Double-only: the device id enable_v1() put in ASCEND_DEVICE_ID (None: none opened),
# one entry per call.
enable_v1_calls = []


def enable_v1():
  """Sets ASCEND_DEVICE_ID to the first opened device and disables TF2 behaviour."""
  device_id = device.opened[0][0] if device.opened else None
  if device_id is not None:
    os.environ["ASCEND_DEVICE_ID"] = str(device_id)
  tf.compat.v1.disable_v2_behavior()
  enable_v1_calls.append(device_id)
