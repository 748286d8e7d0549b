"""NPURunConfig and the option objects it takes (master signatures and checks)."""
import json
import os

import tensorflow.compat.v1 as tf
from tensorflow.python.distribute import distribute_config

from npu_bridge.estimator.npu import util

# NPURunConfig arguments kept as public attributes; every other NPU argument is stored
# as `_<name>`.
_PUBLIC_ATTRIBUTES = frozenset([
    "iterations_per_loop", "mix_compile_mode", "enable_data_pre_proc",
    "is_tailing_optimization", "horovod_mode", "graph_run_mode", "op_debug_level",
    "enable_scope_fusion_passes", "enable_exception_dump", "topo_sorting_mode",
    "aoe_config_file", "insert_op_file", "stream_sync_timeout", "event_sync_timeout",
    "es_cluster_config"])

# Arguments that go to tf.estimator.RunConfig instead of being stored by NPURunConfig.
_RUN_CONFIG_ARGUMENTS = (
    "model_dir", "tf_random_seed", "save_summary_steps", "save_checkpoints_steps",
    "save_checkpoints_secs", "session_config", "keep_checkpoint_max",
    "keep_checkpoint_every_n_hours", "log_step_count_steps", "train_distribute",
    "eval_distribute")


def _stored_attribute(name):
  """The NPURunConfig attribute that holds argument `name`."""
  return name if name in _PUBLIC_ATTRIBUTES else "_" + name


class ProfilingConfig(object):

  def __init__(self, enable_profiling=False, profiling_options=None):
    self._enable_profiling = enable_profiling
    self._profiling_options = profiling_options


class DumpConfig(object):

  def __init__(self, enable_dump=False, dump_path=None, dump_step=None, dump_mode="output",
               enable_dump_debug=False, dump_debug_mode="all", dump_data="tensor",
               dump_layer=None):
    self._enable_dump = enable_dump
    self._dump_path = dump_path
    self._dump_step = dump_step
    self._dump_mode = dump_mode
    self._enable_dump_debug = enable_dump_debug
    self._dump_debug_mode = dump_debug_mode
    self._dump_data = dump_data
    self._dump_layer = dump_layer


class MemoryConfig(object):

  def __init__(self, atomic_clean_policy=0, static_memory_policy=0,
               memory_optimization_policy=None):
    self._atomic_clean_policy = atomic_clean_policy
    self._static_memory_policy = static_memory_policy
    self._memory_optimization_policy = memory_optimization_policy


class GraphMemoryOptimizeConfig(object):

  def __init__(self, recompute=None, graph_slice=None):
    for name, value in (("recompute", recompute), ("graph_slice", graph_slice)):
      if value not in (None, "auto", "manual"):
        raise ValueError("GraphMemoryOptimizeConfig: %s must be None, 'auto' or 'manual', "
                         "got %r" % (name, value))
    self._recompute = recompute
    self._graph_slice = graph_slice


class ExperimentalConfig(object):

  def __init__(self, logical_device_cluster_deploy_mode="LB", logical_device_id=None,
               model_deploy_mode=None, model_deploy_devicelist=None,
               graph_memory_optimize_config=None, enable_graph_parallel=None,
               graph_parallel_option_path=None, graph_compiler_cache_dir=None,
               resource_config_path=None, accelerate_train_mode=None):
    if (graph_memory_optimize_config is not None and
        not isinstance(graph_memory_optimize_config, GraphMemoryOptimizeConfig)):
      raise ValueError("graph_memory_optimize_config must be a GraphMemoryOptimizeConfig, "
                       "got %r" % (graph_memory_optimize_config,))
    self._logical_device_cluster_deploy_mode = logical_device_cluster_deploy_mode
    self._logical_device_id = logical_device_id
    self._model_deploy_mode = model_deploy_mode
    self._model_deploy_devicelist = model_deploy_devicelist
    self._graph_memory_optimize_config = graph_memory_optimize_config
    self._enable_graph_parallel = enable_graph_parallel
    self._graph_parallel_option_path = graph_parallel_option_path
    self._graph_compiler_cache_dir = graph_compiler_cache_dir
    self._resource_config_path = resource_config_path
    self._accelerate_train_mode = accelerate_train_mode


class DynamicInputConfig(object):

  def __init__(self, input_shape, dynamic_dims, dynamic_node_type):
    self._input_shape = input_shape
    self._dynamic_dims = dynamic_dims
    self._dynamic_node_type = dynamic_node_type


def _check_type(name, value, expected_type, error):
  if value is not None and not isinstance(value, expected_type):
    raise error("NPURunConfig: %s must be a %s, got %r"
                % (name, expected_type.__name__, value))


class NPURunConfig(tf.estimator.RunConfig):
  """RunConfig plus every NPU option of the adapter's master branch.

  RunConfig arguments are forwarded (with save_summary_steps=0 and checkpoints every 100
  steps when no interval is given); the NPU arguments are validated and stored as the
  adapter stores them (see _PUBLIC_ATTRIBUTES / _stored_attribute).
  """

  def __init__(self, iterations_per_loop=1, profiling_config=None, model_dir=None,
               tf_random_seed=None, save_summary_steps=0, save_checkpoints_steps=None,
               save_checkpoints_secs=None, session_config=None, keep_checkpoint_max=5,
               keep_checkpoint_every_n_hours=10000, log_step_count_steps=100,
               distribute=None, enable_data_pre_proc=True, precision_mode=None,
               enable_reduce_precision=False, variable_format_optimize=None,
               mix_compile_mode=False, hcom_parallel=True, graph_memory_max_size=None,
               variable_memory_max_size=None, dump_config=None,
               stream_max_parallel_num=None, is_tailing_optimization=False,
               horovod_mode=False, graph_run_mode=1, op_debug_level=None,
               enable_scope_fusion_passes=None, enable_exception_dump=2,
               op_select_implmode=None, optypelist_for_implmode=None,
               dynamic_input_config=None, aoe_mode=None, work_path=None,
               buffer_optimize="l2_optimize", enable_small_channel=0,
               fusion_switch_file=None, enable_compress_weight=False,
               compress_weight_conf=None, op_compiler_cache_mode=None,
               op_compiler_cache_dir=None, debug_dir=None, hcom_multi_mode=False,
               dynamic_input=None, dynamic_graph_execute_mode="dynamic_execute",
               dynamic_inputs_shape_range=None, train_distribute=None,
               eval_distribute=None, local_rank_id=None, local_device_list=None,
               session_device_id=None, distribute_config=None, modify_mixlist=None,
               op_precision_mode=None, device_type="default_device_type",
               soc_config=None, hccl_timeout=None, op_wait_timeout=None,
               op_execute_timeout=None, HCCL_algorithm=None, customize_dtypes=None,
               op_debug_config=None, memory_config=None, experimental_config=None,
               topo_sorting_mode=None, aoe_config_file=None, insert_op_file=None,
               stream_sync_timeout=-1, event_sync_timeout=-1, external_weight=False,
               es_cluster_config=None, deterministic=0, frozen_variable=False,
               variable_placement="Device", jit_compile="auto", precision_mode_v2=None,
               ac_parallel_enable=None):
    arguments = dict(locals())  # taken first, so it holds exactly the parameters
    del arguments["self"]
    util._check_iterations_per_loop(iterations_per_loop)
    _check_type("mix_compile_mode", mix_compile_mode, bool, TypeError)
    if mix_compile_mode and iterations_per_loop != 1:
      raise ValueError("NPURunConfig: iterations_per_loop must be 1 when mix_compile_mode is "
                       "True, got %d" % iterations_per_loop)
    _check_type("dump_config", dump_config, DumpConfig, ValueError)
    _check_type("horovod_mode", horovod_mode, bool, ValueError)
    if not isinstance(graph_run_mode, int) or graph_run_mode not in (0, 1):
      raise ValueError("NPURunConfig: graph_run_mode must be 0 or 1, got %r" % (graph_run_mode,))
    if not isinstance(enable_exception_dump, int) or enable_exception_dump < 0:
      raise ValueError("NPURunConfig: enable_exception_dump must be a non-negative int, got %r"
                       % (enable_exception_dump,))
    _check_type("dynamic_input_config", dynamic_input_config, DynamicInputConfig, ValueError)
    _check_type("experimental_config", experimental_config, ExperimentalConfig, ValueError)
    _check_type("jit_compile", jit_compile, str, TypeError)

    experimental_distribute = None
    if json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster"):
      if (not isinstance(distribute, tf.distribute.experimental.ParameterServerStrategy)
          or not mix_compile_mode):
        raise ValueError('"cluster" and "distribute" must all be set in ps mode')
      experimental_distribute = distribute_config.DistributeConfig(distribute, distribute, None)

    if save_checkpoints_steps is None and save_checkpoints_secs is None:
      arguments["save_checkpoints_steps"] = 100
    super(NPURunConfig, self).__init__(
        experimental_distribute=experimental_distribute,
        **{name: arguments.pop(name) for name in _RUN_CONFIG_ARGUMENTS})
    for name, value in arguments.items():
      setattr(self, _stored_attribute(name), value)
