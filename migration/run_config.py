"""One run-config builder: NPURunConfig on the NPU, tf.estimator.RunConfig elsewhere.

Both come from the same two option records, `RunOptions` (what every Estimator needs) and
`NpuOptions` (the Ascend options; validated on every backend, applied on the NPU, and mapped
to TensorFlow's own mixed precision off it — see migration.precision).
"""
import collections
import os

import tensorflow.compat.v1 as tf
from absl import logging

from migration import precision
from migration import tf2_adapter
from migration import validation

RunOptions = collections.namedtuple("RunOptions", [
    "model_dir", "save_checkpoints_steps", "save_checkpoints_secs", "keep_checkpoint_max",
    "save_summary_steps", "log_step_count_steps", "tf_random_seed",
    "intra_op_threads", "inter_op_threads"])

NpuOptions = collections.namedtuple("NpuOptions", [
    "precision_mode", "fusion_switch_file", "modify_mixlist", "iterations_per_loop",
    "enable_dump", "dump_path", "dump_step", "dump_mode",
    "enable_dump_debug", "dump_debug_mode",
    "enable_profiling", "profiling_options",
    "hcom_parallel", "enable_data_pre_proc", "mix_compile_mode",
    "op_compiler_cache_mode", "op_compiler_cache_dir"])

NPU_DEFAULTS = NpuOptions(
    precision_mode=None, fusion_switch_file=None, modify_mixlist=None, iterations_per_loop=1,
    enable_dump=False, dump_path=None, dump_step="0", dump_mode="output",
    enable_dump_debug=False, dump_debug_mode="all",
    enable_profiling=False, profiling_options=None,
    hcom_parallel=True, enable_data_pre_proc=True, mix_compile_mode=False,
    op_compiler_cache_mode=None, op_compiler_cache_dir=None)

# What every ModelZoo single-device launch script exports (npu_bridge_api.md §10).
_NPU_ENV_DEFAULTS = (("JOB_ID", "10087"), ("RANK_ID", "0"), ("RANK_SIZE", "1"))


def session_config(run_opts):
  """The ConfigProto every backend starts from (threads, soft placement)."""
  config = tf.ConfigProto(allow_soft_placement=True, log_device_placement=False)
  config.intra_op_parallelism_threads = run_opts.intra_op_threads or 0
  config.inter_op_parallelism_threads = run_opts.inter_op_threads or 0
  return config


def _npu_extra_configs(backend, npu_opts):
  """DumpConfig / ProfilingConfig for NPURunConfig, only for what was asked for."""
  npu_config = backend.npu_module("estimator.npu.npu_config")
  kwargs = {}
  if npu_opts.enable_dump or npu_opts.enable_dump_debug:
    dump = {"dump_path": npu_opts.dump_path}
    if npu_opts.enable_dump:
      dump.update(enable_dump=True, dump_step=npu_opts.dump_step, dump_mode=npu_opts.dump_mode)
    if npu_opts.enable_dump_debug:
      dump.update(enable_dump_debug=True, dump_debug_mode=npu_opts.dump_debug_mode)
    kwargs["dump_config"] = npu_config.DumpConfig(**dump)
  if npu_opts.enable_profiling:
    kwargs["profiling_config"] = npu_config.ProfilingConfig(
        enable_profiling=True, profiling_options=npu_opts.profiling_options)
  return kwargs


def prepare_npu_environment(environ=None):
  """Sets JOB_ID/RANK_ID/RANK_SIZE as the ModelZoo scripts do, keeping values already set."""
  env = os.environ if environ is None else environ
  for key, value in _NPU_ENV_DEFAULTS:
    if key == "RANK_SIZE" and env.get("CM_WORKER_SIZE") is not None:
      continue
    env.setdefault(key, value)


def _log_npu_only_options(backend, npu_opts):
  npu_only = [name for name in ("fusion_switch_file", "modify_mixlist", "enable_dump",
                                "enable_dump_debug", "enable_profiling",
                                "op_compiler_cache_mode", "op_compiler_cache_dir")
              if getattr(npu_opts, name)]
  if npu_only:
    logging.info("%s: validated; they take effect on the NPU only", ", ".join(npu_only))
  if npu_opts.iterations_per_loop > 1:
    logging.info("iterations_per_loop=%d applies on the NPU only; on %s every "
                 "Session.run is one step", npu_opts.iterations_per_loop, backend.device)


def adapt_session_config(base, backend, precision_mode):
  """A copy of `base` (a ConfigProto, or None for a new one) fit for `backend`.

  Off the NPU, `precision_mode` becomes TensorFlow's auto mixed precision. Both that
  rewrite and npu_bridge's NpuOptimizer are grappler passes, so a config that turns
  grappler off (`disable_meta_optimizer`, common in TPU scripts) has it turned back on
  when either is needed, with a log line.
  """
  config = tf.ConfigProto()
  if base is not None:
    config.CopyFrom(base)
  else:
    config.allow_soft_placement = True
  rewrite = config.graph_options.rewrite_options
  mixed_precision = not backend.is_npu and precision_mode in precision.REDUCED_PRECISION_MODES
  if (backend.uses_npu_bridge or mixed_precision) and rewrite.disable_meta_optimizer:
    rewrite.disable_meta_optimizer = False
    logging.info("session_config had disable_meta_optimizer=True; turned off because %s "
                 "runs as a grappler pass", "the NpuOptimizer" if backend.is_npu
                 else "auto mixed precision (precision_mode=%s)" % precision_mode)
  if not backend.is_npu:
    precision.apply_to_session_config(config, backend, precision_mode)
  return config


# What NPURunConfig forwards to tf.estimator.RunConfig (npu_bridge_api.md §2.1).
_FORWARDED_TO_NPU_RUN_CONFIG = (
    "model_dir", "tf_random_seed", "save_summary_steps", "save_checkpoints_steps",
    "save_checkpoints_secs", "keep_checkpoint_max", "keep_checkpoint_every_n_hours",
    "log_step_count_steps", "train_distribute", "eval_distribute")


def to_backend(config, backend, npu_opts=NPU_DEFAULTS):
  """Any tf.estimator.RunConfig (a TPU RunConfig included) -> the RunConfig of `backend`
  with the same settings: NPURunConfig carrying `npu_opts` through npu_bridge (an
  NPURunConfig is kept as it is); through npu_device the same config, the options set on
  the device as it opens; elsewhere the same config with precision applied to its session.
  Validates `npu_opts` first."""
  validation.check_npu_options(npu_opts)
  if backend.uses_npu_bridge and isinstance(
      config, backend.npu_module("estimator.npu.npu_config").NPURunConfig):
    return config
  session = adapt_session_config(config.session_config, backend, npu_opts.precision_mode)
  if not backend.uses_npu_bridge:
    if backend.uses_npu_device:
      tf2_adapter.open_device(backend, npu_opts)
    else:
      _log_npu_only_options(backend, npu_opts)
    if session == (config.session_config or tf.ConfigProto(allow_soft_placement=True)):
      return config
    return config.replace(session_config=session)

  prepare_npu_environment()
  validation.check_environment()
  npu_config = backend.npu_module("estimator.npu.npu_config")
  kwargs = {name: getattr(config, name) for name in _FORWARDED_TO_NPU_RUN_CONFIG}
  kwargs.update(
      session_config=session,
      iterations_per_loop=npu_opts.iterations_per_loop,
      hcom_parallel=npu_opts.hcom_parallel,
      enable_data_pre_proc=npu_opts.enable_data_pre_proc,
      mix_compile_mode=npu_opts.mix_compile_mode)
  for name in ("precision_mode", "fusion_switch_file", "modify_mixlist",
               "op_compiler_cache_mode", "op_compiler_cache_dir"):
    if getattr(npu_opts, name):
      kwargs[name] = getattr(npu_opts, name)
  kwargs.update(_npu_extra_configs(backend, npu_opts))
  return npu_config.NPURunConfig(**kwargs)


def build_run_config(backend, run_opts, npu_opts=NPU_DEFAULTS, train_distribute=None):
  """The RunConfig for `backend` from the run loop's options (see `to_backend`), training
  with the tf.distribute strategy `train_distribute` if given (it reads TF_CONFIG)."""
  # Every option but the thread counts (they go into the session config) is a RunConfig
  # argument of the same name.
  options = {name: value for name, value in run_opts._asdict().items()
             if name not in ("intra_op_threads", "inter_op_threads")}
  config = tf.estimator.RunConfig(session_config=session_config(run_opts),
                                  train_distribute=train_distribute, **options)
  return to_backend(config, backend, npu_opts)
