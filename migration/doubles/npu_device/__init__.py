"""Test double of Huawei's npu_device (TF 2.x Ascend adapter); see ../README.md."""
import tensorflow as tf

if int(tf.__version__.split(".")[0]) < 2:
  raise ImportError("npu_device needs TensorFlow 2.x (the adapter's tf_adapter_2.x "
                    "package), found TensorFlow %s; use npu_bridge on TF 1.x"
                    % tf.__version__)

# pylint: disable=g-import-not-at-top,redefined-builtin
from npu_device import compat
from npu_device import distribute
from npu_device import train
from npu_device.device import close
from npu_device.device import default_device
from npu_device.device import global_options
from npu_device.device import is_inf_nan_enabled
from npu_device.device import keep_dtype_scope
from npu_device.device import loop_sizes
from npu_device.device import npu_recompute_scope
from npu_device.device import npu_run_context
from npu_device.device import open
from npu_device.device import opened
from npu_device.device import sat_modes
from npu_device.device import set_device_sat_mode
from npu_device.device import set_npu_loop_size
