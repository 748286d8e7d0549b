"""Opening the NPU through `npu_device`, Huawei's TF 2.x adapter (npu_bridge_api.md §11).

`npu_device.open()` reads `global_options()` when it is called, so every option is set
first; then the device is opened and made the default, and the adapter's TF1-compat mode
(`npu_device.compat.enable_v1()`) lets the Estimator models and ported graph code run as
they are, with a plain tf.estimator.RunConfig (NPURunConfig and NPUEstimator belong to
npu_bridge). Done once per process, by the first RunConfig or session config built.
"""
import json
import os

from absl import logging

_opened = {}  # this process's device: {"device_id": int, "options": NpuOptions}


def _set_options(options, npu_opts):
  """The NpuOptions fields npu_device has, on its global_options(); unset ones left alone."""
  for name in ("precision_mode", "modify_mixlist", "fusion_switch_file",
               "op_compiler_cache_mode", "op_compiler_cache_dir"):
    if getattr(npu_opts, name):
      setattr(options, name, getattr(npu_opts, name))
  options.hcom_parallel = npu_opts.hcom_parallel
  dump = options.dump_config
  if npu_opts.enable_dump:
    dump.enable_dump = True
    dump.dump_step = npu_opts.dump_step
    dump.dump_mode = npu_opts.dump_mode
  if npu_opts.enable_dump_debug:
    dump.enable_dump_debug = True
    dump.dump_debug_mode = npu_opts.dump_debug_mode
  if npu_opts.enable_dump or npu_opts.enable_dump_debug:
    dump.dump_path = npu_opts.dump_path
  if npu_opts.enable_profiling:
    options.profiling_config.enable_profiling = True
    if npu_opts.profiling_options:
      options.profiling_config.profiling_options = npu_opts.profiling_options
  if npu_opts.mix_compile_mode or not npu_opts.enable_data_pre_proc:
    logging.warning("--mix_compile_mode and --enable_data_pre_proc are npu_bridge (TF 1.15) "
                    "options; npu_device has neither")


def open_device(backend, npu_opts):
  """Sets `npu_opts`, opens the device of ASCEND_DEVICE_ID and enters TF1-compat mode, once
  per process; returns the device id."""
  if _opened:
    if _opened["options"] != npu_opts:
      logging.warning("the NPU is already open with other options; these need a new process")
    return _opened["device_id"]
  npu_device = backend.adapter
  _set_options(npu_device.global_options(), npu_opts)
  device_id = int(os.environ.get("ASCEND_DEVICE_ID") or 0)
  npu_device.open(device_id).as_default()
  npu_device.set_npu_loop_size(npu_opts.iterations_per_loop)
  npu_device.compat.enable_v1()
  _opened.update(device_id=device_id, options=npu_opts)
  logging.info("npu_device: device %d open in TF1-compat mode, loop size %d, options %s",
               device_id, npu_opts.iterations_per_loop,
               json.dumps(npu_device.global_options().as_dict(), sort_keys=True))
  return device_id
