"""NPUEstimator (an Estimator that builds the NpuOptimizer session config) and NPUEstimatorSpec."""
import json
import os
import random
import string

import tensorflow.compat.v1 as tf
from tensorflow.python.util import function_utils
from tensorflow_estimator.python.estimator import estimator as estimator_lib

from npu_bridge.estimator.npu import npu_config
from npu_bridge.estimator.npu import npu_hook
from npu_bridge.estimator.npu import util

# Grappler passes NPUEstimator appends to rewrite_options.optimizers.
_GRAPPLER_OPTIMIZERS = ("pruning", "function", "constfold", "shape", "arithmetic", "loop",
                        "dependency", "layout", "GradFusionOptimizer")

# NPURunConfig argument (= parameter_map key) and field type, written even when default.
_ALWAYS_WRITTEN = (
    ("iterations_per_loop", "i"), ("enable_data_pre_proc", "b"),
    ("enable_reduce_precision", "b"), ("mix_compile_mode", "b"), ("hcom_parallel", "b"),
    ("is_tailing_optimization", "b"), ("graph_run_mode", "i"), ("enable_exception_dump", "i"),
    ("enable_small_channel", "i"), ("enable_compress_weight", "b"), ("hcom_multi_mode", "b"),
    ("device_type", "s"), ("stream_sync_timeout", "i"), ("event_sync_timeout", "i"),
    ("external_weight", "b"), ("deterministic", "i"), ("frozen_variable", "b"),
    ("variable_placement", "s"), ("jit_compile", "s"))

# The same, written only when the argument is not None.
_WRITTEN_IF_SET = (
    ("precision_mode", "s"), ("variable_format_optimize", "b"), ("graph_memory_max_size", "s"),
    ("variable_memory_max_size", "s"), ("stream_max_parallel_num", "s"),
    ("op_debug_level", "i"), ("enable_scope_fusion_passes", "s"), ("op_select_implmode", "s"),
    ("optypelist_for_implmode", "s"), ("buffer_optimize", "s"), ("fusion_switch_file", "s"),
    ("compress_weight_conf", "s"), ("op_compiler_cache_mode", "s"),
    ("op_compiler_cache_dir", "s"), ("debug_dir", "s"), ("dynamic_input", "b"),
    ("dynamic_graph_execute_mode", "s"), ("dynamic_inputs_shape_range", "s"),
    ("local_rank_id", "i"), ("local_device_list", "s"), ("session_device_id", "i"),
    ("modify_mixlist", "s"), ("op_precision_mode", "s"), ("soc_config", "s"),
    ("hccl_timeout", "i"), ("op_wait_timeout", "i"), ("op_execute_timeout", "i"),
    ("HCCL_algorithm", "s"), ("customize_dtypes", "s"), ("op_debug_config", "s"),
    ("topo_sorting_mode", "i"), ("aoe_config_file", "s"), ("insert_op_file", "s"),
    ("es_cluster_config", "s"), ("precision_mode_v2", "s"), ("ac_parallel_enable", "s"))

# ExperimentalConfig field -> (parameter_map key, type), written when not None.
_EXPERIMENTAL_KEYS = (
    ("_logical_device_id", "experimental_logical_device_id", "s"),
    ("_model_deploy_mode", "experimental_model_deploy_mode", "s"),
    ("_model_deploy_devicelist", "experimental_model_deploy_devicelist", "s"),
    ("_resource_config_path", "resource_config_path", "s"),
    ("_graph_compiler_cache_dir", "graph_compiler_cache_dir", "s"),
    ("_graph_parallel_option_path", "graph_parallel_option_path", "s"),
    ("_enable_graph_parallel", "enable_graph_parallel", "b"),
    ("_accelerate_train_mode", "experimental_accelerate_train_mode", "s"))

_PRECISION_MODES = ("force_fp32", "allow_fp32_to_fp16", "force_fp16",
                    "must_keep_origin_dtype", "allow_mix_precision", "cube_fp16in_fp32out",
                    "allow_mix_precision_fp16", "allow_mix_precision_bf16",
                    "allow_fp32_to_bf16")
_PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16",
                       "mixed_bfloat16")
_MIXLIST_PRECISION_MODES = ("allow_mix_precision", "allow_mix_precision_fp16",
                            "allow_mix_precision_bf16")
_MIXLIST_PRECISION_MODES_V2 = ("mixed_float16", "mixed_bfloat16")


class NPUEstimatorSpec(tf.estimator.EstimatorSpec):
  """EstimatorSpec plus `host_call`, a (fn, tensors) pair run on the host every step."""

  def __new__(cls, mode, predictions=None, loss=None, train_op=None, eval_metric_ops=None,
              export_outputs=None, training_chief_hooks=None, training_hooks=None,
              scaffold=None, evaluation_hooks=None, prediction_hooks=None, host_call=None):
    if host_call is not None and not (
        isinstance(host_call, (tuple, list)) and len(host_call) == 2 and
        callable(host_call[0]) and isinstance(host_call[1], (tuple, list, dict))):
      raise ValueError("host_call must be a (fn, tensors) pair with tensors a list or a dict, "
                       "got %r" % (host_call,))
    spec = super(NPUEstimatorSpec, cls).__new__(
        cls, mode=mode, predictions=predictions, loss=loss, train_op=train_op,
        eval_metric_ops=eval_metric_ops, export_outputs=export_outputs,
        training_chief_hooks=training_chief_hooks, training_hooks=training_hooks,
        scaffold=scaffold, evaluation_hooks=evaluation_hooks,
        prediction_hooks=prediction_hooks)
    spec._host_call = host_call
    return spec


class NPUEstimator(tf.estimator.Estimator):
  """Estimator with the adapter's construction checks, session config and TRAIN hooks.

  The precision checks of the adapter's C++ layer (precision_mode / precision_mode_v2 values,
  their mutual exclusion, modify_mixlist only with a mixed mode) run when the adapter creates
  a session; this double runs them here, at construction, and raises tf.errors.InternalError.
  The job info comes from the environment only (no job start file).
  """

  def __init__(self, model_fn=None, model_dir=None, config=None, params=None,
               job_start_file="", warm_start_from=None):
    if not isinstance(config, npu_config.NPURunConfig):
      raise ValueError("`config` must be provided with type `NPUConfigs`")
    if model_fn is None:
      raise ValueError("model_fn must be provided to Estimator.")
    estimator_lib._verify_model_fn_args(model_fn, params)
    config._session_config = _npu_session_config(config)
    _check_job_info(job_start_file)
    if model_dir is not None and config.model_dir is not None and model_dir != config.model_dir:
      raise ValueError("model_dir are set both in constructor and NPURunConfig, but with "
                       "different values: %s vs %s" % (model_dir, config.model_dir))
    if model_dir is None and config.model_dir is None:
      model_dir = "./model_dir_" + "".join(
          random.choice(string.ascii_letters + string.digits) for _ in range(10))
      os.makedirs(model_dir)
      tf.logging.warning("Neither model_dir nor config.model_dir is set; using %s", model_dir)
    warm_start_from = (warm_start_from or os.environ.get("LOCAL_CHECKPOINT_DIR") or
                       os.environ.get("RESTORE_FROM") or None)
    super(NPUEstimator, self).__init__(
        model_fn=_npu_model_fn(model_fn), model_dir=model_dir, config=config,
        params={} if params is None else params, warm_start_from=warm_start_from)


def _check_job_info(job_start_file):
  if job_start_file and os.path.isfile(job_start_file):
    raise NotImplementedError("NPUEstimator(job_start_file=%r): the npu_bridge test double "
                              "reads the job info from the environment only" % job_start_file)
  if not os.environ.get("JOB_ID"):
    raise ValueError("Load job info failed, please check whether `JOB_ID` is set in "
                     "environment variable")
  util.get_ranksize()  # raises if RANK_SIZE and CM_WORKER_SIZE are both set


def _npu_model_fn(model_fn):
  """Calls `model_fn` with the arguments it names and adds the NPU hooks to its spec."""
  model_fn_args = function_utils.fn_args(model_fn)

  def npu_model_fn(features, labels, mode, params, config):
    passed = {"labels": labels, "mode": mode, "params": params, "config": config}
    spec = model_fn(features=features, **{name: value for name, value in passed.items()
                                          if name in model_fn_args})
    if mode == tf.estimator.ModeKeys.PREDICT:
      return spec
    if not isinstance(spec, tf.estimator.EstimatorSpec):
      raise RuntimeError("model_fn must return an EstimatorSpec or NPUEstimatorSpec in %s "
                         "mode, got %r" % (mode, spec))
    host_call = getattr(spec, "_host_call", None)
    if mode == tf.estimator.ModeKeys.EVAL:
      if host_call is None:
        return spec
      return _plain_spec(spec, loss=_run_host_call(host_call, spec.loss, spec.loss),
                         evaluation_hooks=[npu_hook.NPUInfeedOutfeedSessionHook()] +
                         list(spec.evaluation_hooks))
    return _add_train_hooks(spec, config, host_call)

  return npu_model_fn


def _add_train_hooks(spec, config, host_call):
  hooks = []
  if util._rank_size_as_int() > 1 and not config.horovod_mode:
    hooks.append(npu_hook.NPUBroadcastGlobalVariablesHook(0, int(os.getenv("RANK_ID", "0"))))
  if config.save_checkpoints_secs or config.save_checkpoints_steps:
    hooks.append(npu_hook.NPUCheckpointSaverHook(
        checkpoint_dir=config.model_dir, save_secs=config.save_checkpoints_secs,
        save_steps=config.save_checkpoints_steps,
        saver=tf.train.Saver(max_to_keep=config.keep_checkpoint_max)))
  loss = spec.loss
  if host_call is not None:
    loss = _run_host_call(host_call, spec.train_op, spec.loss)
    hooks.append(npu_hook.NPUInfeedOutfeedSessionHook())
  train_op = spec.train_op
  if config.iterations_per_loop > 1:
    hooks.append(npu_hook.SetIterationsVarHook(config.iterations_per_loop))
    train_op = tf.group(train_op, name="IterationOp")
  return _plain_spec(spec, loss=loss, train_op=train_op,
                     training_hooks=hooks + list(spec.training_hooks))


def _run_host_call(host_call, after, loss):
  """Builds `fn(tensors)` on values taken after `after`; returns `loss` depending on it, so
  the host call runs every step (the adapter uses an outfeed queue and a dequeue hook)."""
  fn, tensors = host_call
  with tf.control_dependencies([after]):
    if isinstance(tensors, dict):
      outputs = fn(**{key: tf.identity(value) for key, value in tensors.items()})
    else:
      outputs = fn(*[tf.identity(value) for value in tensors])
  with tf.control_dependencies([output for output in tf.nest.flatten(outputs)
                                if output is not None]):
    return tf.identity(loss)


def _plain_spec(spec, **replaced):
  fields = spec._asdict()
  fields.update(replaced)
  return tf.estimator.EstimatorSpec(**fields)


def _npu_session_config(config):
  """The session config of §3.2: grappler list extended, a new NpuOptimizer entry."""
  session_config = config.session_config
  if session_config is None:
    session_config = tf.ConfigProto()
  rewrite_options = session_config.graph_options.rewrite_options
  rewrite_options.optimizers.extend(_GRAPPLER_OPTIMIZERS)
  npu_optimizer = rewrite_options.custom_optimizers.add()
  npu_optimizer.name = "NpuOptimizer"
  _fill_parameter_map(npu_optimizer.parameter_map, config)
  _check_npu_attrs(npu_optimizer.parameter_map)
  return session_config


def _fill_parameter_map(parameter_map, config):

  def argument(name):
    return getattr(config, npu_config._stored_attribute(name))

  def put(key, kind, value):
    if value is None:
      return
    if kind == "s":
      parameter_map[key].s = tf.compat.as_bytes(str(value))
    elif kind == "b":
      parameter_map[key].b = bool(value)
    else:
      parameter_map[key].i = int(value)

  for name, kind in _ALWAYS_WRITTEN + _WRITTEN_IF_SET:
    put(name, kind, argument(name))
  put("use_off_line", "b", True)
  put("min_group_size", "b", 1)
  task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
  put("job", "s", task.get("type", "localhost"))
  put("task_index", "i", task.get("index", 0))

  profiling = argument("profiling_config")
  if profiling is not None:
    put("profiling_mode", "b", profiling._enable_profiling)
    if profiling._enable_profiling:
      put("profiling_options", "s", profiling._profiling_options or "")

  dump = argument("dump_config")
  put("enable_dump", "b", dump is not None and dump._enable_dump)
  put("enable_dump_debug", "b", dump is not None and dump._enable_dump_debug)
  if dump is not None:
    for field in ("dump_path", "dump_step", "dump_mode", "dump_debug_mode", "dump_data",
                  "dump_layer"):
      put(field, "s", getattr(dump, "_" + field))

  dynamic = argument("dynamic_input_config")
  if dynamic is not None and None not in (dynamic._input_shape, dynamic._dynamic_dims,
                                          dynamic._dynamic_node_type):
    put("input_shape", "s", dynamic._input_shape)
    put("dynamic_dims", "s", dynamic._dynamic_dims)
    put("dynamic_node_type", "i", dynamic._dynamic_node_type)

  if argument("aoe_mode") is not None:
    put("aoe_mode", "s", argument("aoe_mode"))
    put("work_path", "s", argument("work_path") or "./")
    put("distribute_config", "s", argument("distribute_config"))

  memory = argument("memory_config")
  if memory is not None:
    put("atomic_clean_policy", "i", memory._atomic_clean_policy)
    put("static_memory_policy", "i", memory._static_memory_policy)
    put("memory_optimization_policy", "s", memory._memory_optimization_policy)

  experimental = argument("experimental_config")
  put("experimental_logical_device_cluster_deploy_mode", "s",
      "LB" if experimental is None else experimental._logical_device_cluster_deploy_mode)
  if experimental is not None:
    for field, key, kind in _EXPERIMENTAL_KEYS:
      put(key, kind, getattr(experimental, field))
    if experimental._graph_memory_optimize_config is not None:
      put("graph_slice", "s", experimental._graph_memory_optimize_config._graph_slice)


def _check_npu_attrs(parameter_map):
  """The precision checks of the adapter's npu_attrs.cc (run there at session creation)."""

  def value(key):
    return parameter_map[key].s.decode() if key in parameter_map else None

  precision_mode = value("precision_mode")
  precision_mode_v2 = value("precision_mode_v2")
  if precision_mode is not None and precision_mode_v2 is not None:
    raise tf.errors.InternalError(
        None, None, "precision_mode and precision_mode_v2 can not be assigned at the same time")
  if precision_mode is not None and precision_mode not in _PRECISION_MODES:
    raise tf.errors.InternalError(None, None, "precision_mode %r is not one of %s"
                                  % (precision_mode, ", ".join(_PRECISION_MODES)))
  if precision_mode_v2 is not None and precision_mode_v2 not in _PRECISION_MODES_V2:
    raise tf.errors.InternalError(None, None, "precision_mode_v2 %r is not one of %s"
                                  % (precision_mode_v2, ", ".join(_PRECISION_MODES_V2)))
  if (value("modify_mixlist") is not None and
      precision_mode not in _MIXLIST_PRECISION_MODES and
      precision_mode_v2 not in _MIXLIST_PRECISION_MODES_V2):
    raise tf.errors.InternalError(
        None, None, "modify_mixlist is only valid with precision_mode in %s or "
        "precision_mode_v2 in %s, got precision_mode=%r, precision_mode_v2=%r"
        % (_MIXLIST_PRECISION_MODES, _MIXLIST_PRECISION_MODES_V2, precision_mode,
           precision_mode_v2))
