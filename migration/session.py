"""Session config for Session-style code (tf.Session / MonitoredTrainingSession scripts).

Through npu_bridge this is the `NpuOptimizer` ConfigProto the Session-style ports build by
hand (npu_bridge_api.md §3.2 and migration_tool.md §5), made by `npu_config_proto` and given
the same options as the Estimator path. Through npu_device it is a plain ConfigProto, the
options going to the device as it opens. Elsewhere it is a plain ConfigProto with
`--precision_mode` mapped to TensorFlow's auto mixed precision.
"""
from tensorflow.core.protobuf import rewriter_config_pb2

from migration import backend as backend_lib
from migration import run_config as run_config_lib
from migration import tf2_adapter
from migration import validation


def session_config(npu_opts=run_config_lib.NPU_DEFAULTS, base=None, backend=None):
  """A ConfigProto for `backend` carrying `npu_opts` (validated first), built on `base`
  (the script's own ConfigProto) when given."""
  backend = backend or backend_lib.current()
  validation.check_npu_options(npu_opts)
  config = run_config_lib.adapt_session_config(base, backend, npu_opts.precision_mode)
  if backend.uses_npu_device:
    tf2_adapter.open_device(backend, npu_opts)
  if not backend.uses_npu_bridge:
    return config
  config = backend.npu_module("npu_init").npu_config_proto(config_proto=config)
  params = next(o for o in config.graph_options.rewrite_options.custom_optimizers
                if o.name == "NpuOptimizer").parameter_map
  params["use_off_line"].b = True
  params["mix_compile_mode"].b = npu_opts.mix_compile_mode
  params["iterations_per_loop"].i = npu_opts.iterations_per_loop
  for name in ("precision_mode", "fusion_switch_file", "modify_mixlist"):
    if getattr(npu_opts, name):
      params[name].s = getattr(npu_opts, name).encode()
  if npu_opts.enable_dump:
    params["enable_dump"].b = True
    params["dump_path"].s = npu_opts.dump_path.encode()
    params["dump_step"].s = npu_opts.dump_step.encode()
    params["dump_mode"].s = npu_opts.dump_mode.encode()
  if npu_opts.enable_dump_debug:
    params["enable_dump_debug"].b = True
    params["dump_path"].s = npu_opts.dump_path.encode()
    params["dump_debug_mode"].s = npu_opts.dump_debug_mode.encode()
  if npu_opts.enable_profiling:
    params["profiling_mode"].b = True
    params["profiling_options"].s = (npu_opts.profiling_options or "").encode()
  config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
  return config
