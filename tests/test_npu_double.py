"""The npu_bridge test double (migration/doubles) enforces the adapter's documented rules.

Reference: ../shared/reference/npu_bridge_api.md (master) and migration_tool.md §6.
"""
import importlib
import inspect
import json

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorflow.python.eager import context

TRAIN = tf.estimator.ModeKeys.TRAIN
EVAL = tf.estimator.ModeKeys.EVAL

# NPURunConfig.__init__ of the adapter's master branch, in order (npu_bridge_api.md §2.1).
MASTER_RUN_CONFIG_DEFAULTS = [
    ("iterations_per_loop", 1), ("profiling_config", None), ("model_dir", None),
    ("tf_random_seed", None), ("save_summary_steps", 0), ("save_checkpoints_steps", None),
    ("save_checkpoints_secs", None), ("session_config", None), ("keep_checkpoint_max", 5),
    ("keep_checkpoint_every_n_hours", 10000), ("log_step_count_steps", 100),
    ("distribute", None), ("enable_data_pre_proc", True), ("precision_mode", None),
    ("enable_reduce_precision", False), ("variable_format_optimize", None),
    ("mix_compile_mode", False), ("hcom_parallel", True), ("graph_memory_max_size", None),
    ("variable_memory_max_size", None), ("dump_config", None),
    ("stream_max_parallel_num", None), ("is_tailing_optimization", False),
    ("horovod_mode", False), ("graph_run_mode", 1), ("op_debug_level", None),
    ("enable_scope_fusion_passes", None), ("enable_exception_dump", 2),
    ("op_select_implmode", None), ("optypelist_for_implmode", None),
    ("dynamic_input_config", None), ("aoe_mode", None), ("work_path", None),
    ("buffer_optimize", "l2_optimize"), ("enable_small_channel", 0),
    ("fusion_switch_file", None), ("enable_compress_weight", False),
    ("compress_weight_conf", None), ("op_compiler_cache_mode", None),
    ("op_compiler_cache_dir", None), ("debug_dir", None), ("hcom_multi_mode", False),
    ("dynamic_input", None), ("dynamic_graph_execute_mode", "dynamic_execute"),
    ("dynamic_inputs_shape_range", None), ("train_distribute", None),
    ("eval_distribute", None), ("local_rank_id", None), ("local_device_list", None),
    ("session_device_id", None), ("distribute_config", None), ("modify_mixlist", None),
    ("op_precision_mode", None), ("device_type", "default_device_type"),
    ("soc_config", None), ("hccl_timeout", None), ("op_wait_timeout", None),
    ("op_execute_timeout", None), ("HCCL_algorithm", None), ("customize_dtypes", None),
    ("op_debug_config", None), ("memory_config", None), ("experimental_config", None),
    ("topo_sorting_mode", None), ("aoe_config_file", None), ("insert_op_file", None),
    ("stream_sync_timeout", -1), ("event_sync_timeout", -1), ("external_weight", False),
    ("es_cluster_config", None), ("deterministic", 0), ("frozen_variable", False),
    ("variable_placement", "Device"), ("jit_compile", "auto"), ("precision_mode_v2", None),
    ("ac_parallel_enable", None)]

# parameter_map entries written for every config (§2.1 "always", §2.3, §2.5, §3.2).
ALWAYS_WRITTEN_DEFAULTS = {
    "iterations_per_loop": ("i", 1), "enable_data_pre_proc": ("b", True),
    "enable_reduce_precision": ("b", False), "mix_compile_mode": ("b", False),
    "hcom_parallel": ("b", True), "is_tailing_optimization": ("b", False),
    "graph_run_mode": ("i", 1), "enable_exception_dump": ("i", 2),
    "enable_small_channel": ("i", 0), "enable_compress_weight": ("b", False),
    "hcom_multi_mode": ("b", False), "device_type": ("s", b"default_device_type"),
    "stream_sync_timeout": ("i", -1), "event_sync_timeout": ("i", -1),
    "external_weight": ("b", False), "deterministic": ("i", 0),
    "frozen_variable": ("b", False), "variable_placement": ("s", b"Device"),
    "jit_compile": ("s", b"auto"), "use_off_line": ("b", True), "min_group_size": ("b", True),
    "job": ("s", b"localhost"), "task_index": ("i", 0), "enable_dump": ("b", False),
    "enable_dump_debug": ("b", False),
    "experimental_logical_device_cluster_deploy_mode": ("s", b"LB"),
    # "if set" keys whose defaults are not None
    "buffer_optimize": ("s", b"l2_optimize"),
    "dynamic_graph_execute_mode": ("s", b"dynamic_execute")}


@pytest.fixture
def npu(npu_bridge_on_path):
  """The double's npu_init module (the double on sys.path, no NPU environment)."""
  del npu_bridge_on_path
  return importlib.import_module("npu_bridge.npu_init")


@pytest.fixture
def job_env(monkeypatch):
  monkeypatch.setenv("JOB_ID", "10087")


def _parameter_map(session_config):
  entries = [custom for custom in session_config.graph_options.rewrite_options.custom_optimizers
             if custom.name == "NpuOptimizer"]
  assert len(entries) == 1
  return {key: (value.WhichOneof("value"), getattr(value, value.WhichOneof("value")))
          for key, value in entries[0].parameter_map.items()}


def _linear_model_fn(features, labels, mode, params):
  weights = tf.get_variable("w", [2, 1], initializer=tf.zeros_initializer())
  predictions = tf.matmul(features["x"], weights)
  loss = tf.losses.mean_squared_error(labels, predictions)
  train_op = tf.train.GradientDescentOptimizer(params.get("lr", 0.1)).minimize(
      loss, tf.train.get_or_create_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def _input_fn():
  x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  y = np.array([[1.0], [2.0]], np.float32)
  return tf.data.Dataset.from_tensors(({"x": x}, y)).repeat()


def _train_spec(estimator):
  """The spec the estimator's wrapped model_fn returns in TRAIN mode."""
  with tf.Graph().as_default():
    features, labels = tf.data.make_one_shot_iterator(_input_fn()).get_next()
    return estimator.model_fn(features, labels, TRAIN, estimator.config)


# --- import paths and signatures -----------------------------------------------------


@pytest.mark.parametrize("module, names", [
    ("npu_bridge.estimator.npu.npu_config",
     "NPURunConfig ProfilingConfig DumpConfig MemoryConfig ExperimentalConfig "
     "GraphMemoryOptimizeConfig DynamicInputConfig"),
    ("npu_bridge.estimator.npu.npu_estimator", "NPUEstimator NPUEstimatorSpec"),
    ("npu_bridge.estimator.npu.npu_optimizer",
     "NPUDistributedOptimizer NPUOptimizer npu_distributed_optimizer_wrapper npu_allreduce"),
    ("npu_bridge.estimator.npu.npu_loss_scale_optimizer", "NPULossScaleOptimizer"),
    ("npu_bridge.estimator.npu.npu_loss_scale_manager",
     "FixedLossScaleManager ExponentialUpdateLossScaleManager"),
    ("npu_bridge.estimator.npu.npu_hook",
     "NPUCheckpointSaverHook NPUOutputTensorHook NPUBroadcastGlobalVariablesHook "
     "SetIterationsVarHook TellMeStepOrLossHook"),
    ("npu_bridge.estimator.npu.util", "get_ranksize set_iteration_per_loop"),
    ("npu_bridge.estimator.npu_ops", "dropout initialize_system shutdown_system"),
    ("npu_bridge.hccl.hccl_ops", "allreduce allgather broadcast"),
    ("npu_bridge.npu_init",
     "npu_config_proto npu_graph_options npu_optimizer_options npu_run_config_init "
     "npu_hooks_append init_resource shutdown_resource close_session get_npu_rank_id "
     "get_npu_local_rank_id get_npu_rank_size get_npu_local_rank_size NpuEmptyHook "
     "npu_tf_optimizer experimental_options NPURunConfig NPUEstimator NPUEstimatorSpec "
     "NPULossScaleOptimizer FixedLossScaleManager npu_ops util hccl_ops RewriterConfig "
     "config_pb2 rewriter_config_pb2 session session_run_hook tf os"),
])
def test_documented_import_paths(npu, module, names):
  imported = importlib.import_module(module)
  assert [name for name in names.split() if not hasattr(imported, name)] == []


def test_star_import_leaves_out_what_the_adapter_leaves_out(npu):
  star = {}
  exec("from npu_bridge.npu_init import *", star)  # pylint: disable=exec-used
  assert "ExperimentalConfig" not in star and "GraphMemoryOptimizeConfig" not in star
  assert "NPURunConfig" in star


def test_npu_run_config_has_the_master_parameter_list_and_defaults(npu):
  parameters = list(inspect.signature(npu.NPURunConfig.__init__).parameters.values())[1:]
  assert [(p.name, p.default) for p in parameters] == MASTER_RUN_CONFIG_DEFAULTS
  assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in parameters)


@pytest.mark.parametrize("make", [
    lambda npu: npu.NPURunConfig(precision="force_fp16"),
    lambda npu: npu.DumpConfig(dump_dir="/tmp"),
    lambda npu: npu.ProfilingConfig(options="x"),
    lambda npu: npu.NPUEstimator(model_fn=_linear_model_fn, config=npu.NPURunConfig(),
                                 use_tpu=False),
    lambda npu: npu.NPULossScaleOptimizer(tf.train.GradientDescentOptimizer(0.1),
                                          npu.FixedLossScaleManager(2.0), distributed=True),
    lambda npu: npu.FixedLossScaleManager(loss_scale=2.0, overflow_check=False),
    lambda npu: npu.NPUDistributedOptimizer(tf.train.GradientDescentOptimizer(0.1), sharding=1),
    lambda npu: npu.npu_ops.dropout(tf.ones([2]), keep_prob=0.5, rate=0.5),
    lambda npu: npu.NPUCheckpointSaverHook("/tmp", save_steps=1, save_graph_def=False),
])
def test_unknown_keyword_arguments_raise_type_error(npu, job_env, make):
  with tf.Graph().as_default():
    with pytest.raises(TypeError, match="unexpected keyword argument"):
      make(npu)


# --- NPURunConfig -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(iterations_per_loop=2.0), TypeError, "iterations_per_loop"),
    (dict(iterations_per_loop=0), ValueError, "iterations_per_loop"),
    (dict(mix_compile_mode="True"), TypeError, "mix_compile_mode"),
    (dict(mix_compile_mode=True, iterations_per_loop=2), ValueError, "iterations_per_loop"),
    (dict(dump_config={"enable_dump": True}), ValueError, "dump_config"),
    (dict(horovod_mode=1), ValueError, "horovod_mode"),
    (dict(graph_run_mode=2), ValueError, "graph_run_mode"),
    (dict(graph_run_mode="1"), ValueError, "graph_run_mode"),
    (dict(enable_exception_dump=-1), ValueError, "enable_exception_dump"),
    (dict(jit_compile=True), TypeError, "jit_compile"),
    (dict(experimental_config={"logical_device_id": "0"}), ValueError, "experimental_config"),
    (dict(dynamic_input_config=[1, 2]), ValueError, "dynamic_input_config"),
])
def test_npu_run_config_rejects(npu, kwargs, error, message):
  with pytest.raises(error, match=message):
    npu.NPURunConfig(**kwargs)


def test_option_objects_check_their_arguments(npu):
  npu_config = importlib.import_module("npu_bridge.estimator.npu.npu_config")
  with pytest.raises(ValueError, match="recompute"):
    npu_config.GraphMemoryOptimizeConfig(recompute="always")
  with pytest.raises(ValueError, match="graph_memory_optimize_config"):
    npu_config.ExperimentalConfig(graph_memory_optimize_config="auto")


def test_ps_mode_needs_parameter_server_strategy_and_mix_compile(npu, monkeypatch):
  monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:2222"]},
                                              "task": {"type": "worker", "index": 0}}))
  with pytest.raises(ValueError, match='"cluster" and "distribute" must all be set in ps mode'):
    npu.NPURunConfig(mix_compile_mode=True)


def test_npu_run_config_forwards_run_config_args_and_stores_the_rest(npu):
  dump = npu.DumpConfig(enable_dump=True)
  profiling = npu.ProfilingConfig(enable_profiling=True)
  config = npu.NPURunConfig(
      model_dir="/tmp/m", tf_random_seed=7, keep_checkpoint_max=3, log_step_count_steps=10,
      precision_mode="allow_mix_precision", dump_config=dump, fusion_switch_file="f.cfg",
      modify_mixlist="ops.json", profiling_config=profiling, hcom_parallel=False,
      iterations_per_loop=4, graph_run_mode=0, enable_exception_dump=1, stream_sync_timeout=5)
  assert isinstance(config, tf.estimator.RunConfig)
  assert (config.model_dir, config.tf_random_seed, config.keep_checkpoint_max,
          config.log_step_count_steps) == ("/tmp/m", 7, 3, 10)
  assert config.save_summary_steps == 0
  assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (100, None)
  assert (config._precision_mode, config._dump_config, config._fusion_switch_file,
          config._modify_mixlist, config._profiling_config, config._hcom_parallel) == (
              "allow_mix_precision", dump, "f.cfg", "ops.json", profiling, False)
  assert (config.iterations_per_loop, config.graph_run_mode, config.enable_exception_dump,
          config.stream_sync_timeout, config.mix_compile_mode, config.horovod_mode) == (
              4, 0, 1, 5, False, False)
  assert not hasattr(config, "precision_mode")


def test_checkpoint_default_only_when_no_interval_is_given(npu):
  by_secs = npu.NPURunConfig(save_checkpoints_secs=60)
  assert (by_secs.save_checkpoints_steps, by_secs.save_checkpoints_secs) == (None, 60)
  by_steps = npu.NPURunConfig(save_checkpoints_steps=7)
  assert (by_steps.save_checkpoints_steps, by_steps.save_checkpoints_secs) == (7, None)


# --- NPUEstimator construction ------------------------------------------------------------


@pytest.mark.parametrize("config", [None, tf.estimator.RunConfig()])
def test_estimator_needs_npu_run_config(npu, job_env, config):
  with pytest.raises(ValueError, match="`config` must be provided with type `NPUConfigs`"):
    npu.NPUEstimator(model_fn=_linear_model_fn, config=config)


def test_estimator_needs_job_id(npu, tmp_path):
  with pytest.raises(ValueError, match="Load job info failed, please check whether `JOB_ID` is "
                                       "set in environment variable"):
    npu.NPUEstimator(model_fn=_linear_model_fn, config=npu.NPURunConfig(model_dir=str(tmp_path)))


def test_estimator_rejects_rank_size_and_cm_worker_size_together(npu, job_env, monkeypatch,
                                                                 tmp_path):
  monkeypatch.setenv("RANK_SIZE", "1")
  monkeypatch.setenv("CM_WORKER_SIZE", "1")
  with pytest.raises(ValueError, match="RANK_SIZE and CM_WORKER_SIZE"):
    npu.NPUEstimator(model_fn=_linear_model_fn, config=npu.NPURunConfig(model_dir=str(tmp_path)))


def test_estimator_model_dir_must_agree(npu, job_env, tmp_path):
  with pytest.raises(ValueError, match="model_dir"):
    npu.NPUEstimator(model_fn=_linear_model_fn, model_dir=str(tmp_path / "a"),
                     config=npu.NPURunConfig(model_dir=str(tmp_path / "b")))


def test_estimator_params_none_becomes_empty_dict(npu, job_env, tmp_path):
  estimator = npu.NPUEstimator(model_fn=_linear_model_fn,
                               config=npu.NPURunConfig(model_dir=str(tmp_path)))
  assert estimator.params == {}


@pytest.mark.parametrize("kwargs, message", [
    (dict(precision_mode="mixed_float16"), "precision_mode 'mixed_float16' is not one of"),
    (dict(precision_mode_v2="allow_mix_precision"), "precision_mode_v2 'allow_mix_precision'"),
    (dict(precision_mode="force_fp16", precision_mode_v2="fp16"),
     "can not be assigned at the same time"),
    (dict(precision_mode="force_fp16", modify_mixlist="ops.json"), "modify_mixlist"),
    (dict(modify_mixlist="ops.json"), "modify_mixlist"),
])
def test_estimator_runs_the_cpp_precision_checks(npu, job_env, tmp_path, kwargs, message):
  config = npu.NPURunConfig(model_dir=str(tmp_path), **kwargs)
  with pytest.raises(tf.errors.InternalError, match=message):
    npu.NPUEstimator(model_fn=_linear_model_fn, config=config)


@pytest.mark.parametrize("kwargs", [
    dict(precision_mode="allow_mix_precision_bf16", modify_mixlist="ops.json"),
    dict(precision_mode_v2="mixed_float16", modify_mixlist="ops.json"),
    dict(precision_mode="must_keep_origin_dtype"),
])
def test_estimator_accepts_valid_precision_settings(npu, job_env, tmp_path, kwargs):
  npu.NPUEstimator(model_fn=_linear_model_fn,
                   config=npu.NPURunConfig(model_dir=str(tmp_path), **kwargs))


# --- session config ----------------------------------------------------------------------


def test_session_config_parameter_map_for_a_debug_config(npu, job_env, tmp_path):
  config = npu.NPURunConfig(
      model_dir=str(tmp_path), iterations_per_loop=10, precision_mode="allow_mix_precision",
      fusion_switch_file="/cfg/fusion_switch.cfg", modify_mixlist="/cfg/ops_info.json",
      dump_config=npu.DumpConfig(enable_dump=True, dump_path="/tmp/dump", dump_step="0|5",
                                 dump_mode="all"),
      profiling_config=npu.ProfilingConfig(enable_profiling=True,
                                           profiling_options='{"output":"/tmp/prof"}'))
  estimator = npu.NPUEstimator(model_fn=_linear_model_fn, config=config)
  session_config = estimator.config.session_config
  expected = dict(ALWAYS_WRITTEN_DEFAULTS)
  expected.update({
      "iterations_per_loop": ("i", 10), "precision_mode": ("s", b"allow_mix_precision"),
      "fusion_switch_file": ("s", b"/cfg/fusion_switch.cfg"),
      "modify_mixlist": ("s", b"/cfg/ops_info.json"),
      "enable_dump": ("b", True), "dump_path": ("s", b"/tmp/dump"), "dump_step": ("s", b"0|5"),
      "dump_mode": ("s", b"all"), "dump_debug_mode": ("s", b"all"), "dump_data": ("s", b"tensor"),
      "profiling_mode": ("b", True), "profiling_options": ("s", b'{"output":"/tmp/prof"}')})
  assert _parameter_map(session_config) == expected
  assert list(session_config.graph_options.rewrite_options.optimizers) == [
      "pruning", "function", "constfold", "shape", "arithmetic", "loop", "dependency", "layout",
      "GradFusionOptimizer"]


def test_session_config_parameter_map_defaults_and_if_set_rules(npu, job_env, tmp_path):
  estimator = npu.NPUEstimator(model_fn=_linear_model_fn,
                               config=npu.NPURunConfig(model_dir=str(tmp_path)))
  assert _parameter_map(estimator.config.session_config) == ALWAYS_WRITTEN_DEFAULTS
  config = npu.NPURunConfig(
      model_dir=str(tmp_path), graph_memory_max_size=123, op_debug_level=2, aoe_mode="2",
      profiling_config=npu.ProfilingConfig(), memory_config=npu.MemoryConfig(),
      dynamic_input_config=npu.DynamicInputConfig("x:-1,3", "1;2", 0))
  parameter_map = _parameter_map(
      npu.NPUEstimator(model_fn=_linear_model_fn, config=config).config.session_config)
  assert {key: parameter_map[key] for key in set(parameter_map) - set(ALWAYS_WRITTEN_DEFAULTS)} == {
      "graph_memory_max_size": ("s", b"123"), "op_debug_level": ("i", 2),
      "aoe_mode": ("s", b"2"), "work_path": ("s", b"./"), "profiling_mode": ("b", False),
      "atomic_clean_policy": ("i", 0), "static_memory_policy": ("i", 0),
      "input_shape": ("s", b"x:-1,3"), "dynamic_dims": ("s", b"1;2"),
      "dynamic_node_type": ("i", 0)}


def test_npu_config_proto_and_run_config_init(npu):
  proto = npu.npu_config_proto(npu.npu_config_proto())
  rewrite_options = proto.graph_options.rewrite_options
  assert [custom.name for custom in rewrite_options.custom_optimizers] == ["NpuOptimizer"]
  assert rewrite_options.memory_optimization == npu.RewriterConfig.OFF
  assert rewrite_options.remapping == npu.RewriterConfig.OFF
  assert proto.allow_soft_placement and not proto.log_device_placement
  assert proto.graph_options.optimizer_options.global_jit_level == (
      npu.config_pb2.OptimizerOptions.OFF)
  run_config = npu.npu_run_config_init()
  assert type(run_config) is tf.estimator.RunConfig
  assert run_config.session_config.graph_options.rewrite_options.custom_optimizers[0].name == (
      "NpuOptimizer")
  hooks = npu.npu_hooks_append()
  assert [type(hook) for hook in hooks] == [npu.NPUBroadcastGlobalVariablesHook]


# --- model_fn wrapper and hooks ----------------------------------------------------------


def test_model_fn_wrapper_passes_only_the_arguments_it_names(npu, job_env, tmp_path):
  seen = {}

  def model_fn(features, labels, config):
    seen["config"] = config
    return _linear_model_fn(features, labels, TRAIN, {})

  estimator = npu.NPUEstimator(model_fn=model_fn, config=npu.NPURunConfig(model_dir=str(tmp_path)))
  _train_spec(estimator)
  assert isinstance(seen["config"], npu.NPURunConfig)


def test_train_spec_must_be_an_estimator_spec(npu, job_env, tmp_path):
  estimator = npu.NPUEstimator(model_fn=lambda features, labels: {"loss": 0.0},
                               config=npu.NPURunConfig(model_dir=str(tmp_path)))
  with pytest.raises(RuntimeError, match="EstimatorSpec"):
    _train_spec(estimator)


def test_train_hooks_for_checkpoints_and_iterations_per_loop(npu, job_env, tmp_path):
  user_hook = tf.train.StepCounterHook(every_n_steps=1)

  def model_fn(features, labels, mode, params):
    return _linear_model_fn(features, labels, mode, params)._replace(training_hooks=[user_hook])

  looped = npu.NPUEstimator(
      model_fn=model_fn, config=npu.NPURunConfig(model_dir=str(tmp_path), iterations_per_loop=5))
  spec = _train_spec(looped)
  assert [type(hook) for hook in spec.training_hooks] == [
      npu.NPUCheckpointSaverHook, npu.SetIterationsVarHook, tf.train.StepCounterHook]
  assert spec.training_hooks[1]._iterations_per_loop == 5
  assert spec.train_op.name == "IterationOp"

  no_checkpoints = npu.NPURunConfig(model_dir=str(tmp_path), save_checkpoints_secs=0)
  spec = _train_spec(npu.NPUEstimator(model_fn=_linear_model_fn, config=no_checkpoints))
  assert list(spec.training_hooks) == [] and spec.train_op.name != "IterationOp"


def test_npu_estimator_spec_validates_host_call(npu):
  with pytest.raises(ValueError, match="host_call"):
    npu.NPUEstimatorSpec(EVAL, loss=tf.constant(0.0), host_call=(lambda x: x,))


# --- training end to end -----------------------------------------------------------------


def test_npu_estimator_trains_three_steps_with_loss_scaling_and_host_call(npu, job_env,
                                                                         tmp_path):
  host_steps = []

  def record(step):
    host_steps.append(int(step))
    return np.int64(0)

  def model_fn(features, labels, mode, params):
    weights = tf.get_variable("w", [2, 1], initializer=tf.zeros_initializer())
    loss = tf.losses.mean_squared_error(labels, tf.matmul(features["x"], weights))
    global_step = tf.train.get_or_create_global_step()
    optimizer = npu.NPULossScaleOptimizer(
        npu.NPUDistributedOptimizer(tf.train.GradientDescentOptimizer(params["lr"])),
        npu.ExponentialUpdateLossScaleManager(init_loss_scale=2 ** 10, incr_every_n_steps=2))
    train_op = optimizer.minimize(loss, global_step) if mode == TRAIN else None
    host_call = (lambda step: tf.py_func(record, [step], tf.int64), [global_step])
    return npu.NPUEstimatorSpec(mode, loss=loss, train_op=train_op, host_call=host_call)

  config = npu.NPURunConfig(model_dir=str(tmp_path), iterations_per_loop=3, tf_random_seed=1)
  estimator = npu.NPUEstimator(model_fn=model_fn, config=config, params={"lr": 0.05})
  estimator.train(_input_fn, steps=3)
  assert estimator.get_variable_value("global_step") == 3
  assert host_steps == [1, 2, 3]  # run on the host every step, after train_op
  assert estimator.get_variable_value("loss_scale") == 2 ** 11  # grew once after 2 good steps
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-3")
  del host_steps[:]
  metrics = estimator.evaluate(_input_fn, steps=1)
  assert metrics["global_step"] == 3 and np.isfinite(metrics["loss"])
  assert host_steps == [3]


# --- loss scaling ------------------------------------------------------------------------


def _loss_scaled_step(npu, manager):
  """One GD step on loss = w * x (w starts at 1) with `manager`; returns the session parts."""
  x = tf.placeholder(tf.float32, [])
  weight = tf.Variable(1.0)
  global_step = tf.train.get_or_create_global_step()
  optimizer = npu.NPULossScaleOptimizer(tf.train.GradientDescentOptimizer(0.5), manager)
  train_op = optimizer.minimize(weight * x, global_step)
  return x, weight, global_step, train_op


def test_loss_scaling_skips_the_update_and_global_step_on_overflow(npu):
  with tf.Graph().as_default(), tf.Session() as sess:
    x, weight, global_step, train_op = _loss_scaled_step(
        npu, npu.FixedLossScaleManager(loss_scale=1024))
    sess.run(tf.global_variables_initializer())
    sess.run(train_op, {x: 1.0})
    assert sess.run([weight, global_step]) == [0.5, 1]  # gradient unscaled: 1.0, not 1024
    sess.run(train_op, {x: np.inf})
    assert sess.run([weight, global_step]) == [0.5, 1]
    sess.run(train_op, {x: np.nan})
    assert sess.run([weight, global_step]) == [0.5, 1]


def test_fixed_manager_without_overflow_check_applies_every_step(npu):
  with tf.Graph().as_default(), tf.Session() as sess:
    x, weight, global_step, train_op = _loss_scaled_step(
        npu, npu.FixedLossScaleManager(loss_scale=2, enable_overflow_check=False))
    sess.run(tf.global_variables_initializer())
    sess.run(train_op, {x: np.inf})
    assert sess.run(global_step) == 1 and not np.isfinite(sess.run(weight))


def test_fixed_manager_rejects_scale_below_one(npu):
  with pytest.raises(ValueError, match="loss_scale"):
    npu.FixedLossScaleManager(loss_scale=0.5)


@pytest.mark.parametrize("manager_args, finite_steps, expected", [
    # finite steps grow the scale after incr_every_n_steps, then reset the counters
    (dict(init_loss_scale=4, incr_every_n_steps=2), [True, True, True],
     [(4, 1, 0), (8, 0, 0), (8, 1, 0)]),
    # an overflow resets good_steps; decr_every_n_nan_or_inf overflows shrink the scale
    (dict(init_loss_scale=4, incr_every_n_steps=3, decr_ratio=0.5), [True, False, True, False],
     [(4, 1, 0), (4, 0, 1), (4, 1, 1), (2, 0, 0)]),
    # shrinking is floored at 1
    (dict(init_loss_scale=1.5, incr_every_n_steps=3, decr_every_n_nan_or_inf=1,
          decr_ratio=0.5), [False, False], [(1, 0, 0), (1, 0, 0)]),
    # growth stops once scale >= 3.4e38 / incr_ratio, counters still reset
    (dict(init_loss_scale=2e38, incr_every_n_steps=1), [True], [(2e38, 0, 0)]),
])
def test_exponential_manager_update_rule(npu, manager_args, finite_steps, expected):
  with tf.Graph().as_default(), tf.Session() as sess:
    manager = npu.ExponentialUpdateLossScaleManager(**manager_args)
    finite = tf.placeholder(tf.bool, [])
    update = manager.update_loss_scale(finite)
    sess.run(tf.global_variables_initializer())
    states = []
    for step_is_finite in finite_steps:
      sess.run(update, {finite: step_is_finite})
      states.append(tuple(sess.run([manager.get_loss_scale(), manager._num_good_steps,
                                    manager._num_bad_steps])))
  assert np.allclose(states, expected, rtol=1e-6)


def test_npu_optimizer_needs_a_manager_for_loss_scaling(npu):
  with pytest.raises(ValueError, match="loss_scale_manager"):
    npu.NPUOptimizer(tf.train.GradientDescentOptimizer(0.1), is_loss_scale=True)


# --- ops, collectives, util --------------------------------------------------------------


def test_dropout_checks_and_identity(npu):
  with tf.Graph().as_default(), tf.Session() as sess:
    ones = tf.ones([1000])
    with pytest.raises(ValueError, match="floating point"):
      npu.npu_ops.dropout(tf.ones([2], tf.int32), keep_prob=0.5)
    for keep_prob in (0.0, 1.5, -1):
      with pytest.raises(ValueError, match="keep_prob"):
        npu.npu_ops.dropout(ones, keep_prob=keep_prob)
    assert npu.npu_ops.dropout(ones, keep_prob=1.0) is ones
    values = sess.run(npu.npu_ops.dropout(ones, keep_prob=0.5, seed=1))
    assert set(np.unique(values)) == {0.0, 2.0}
  with context.eager_mode():
    with pytest.raises(RuntimeError, match="eager"):
      npu.npu_ops.dropout(tf.ones([2]), keep_prob=0.5)


def test_collectives_are_identities_at_one_rank_only(npu, monkeypatch):
  with tf.Graph().as_default():
    tensor = tf.ones([3])
    assert npu.hccl_ops.allreduce(tensor, "sum") is tensor
    assert npu.hccl_ops.allgather(tensor, 1) is tensor
    assert npu.hccl_ops.broadcast([tensor], 0) == [tensor]
    reduced = npu.npu_allreduce((tensor, tensor))
    assert isinstance(reduced, list) and len(reduced) == 2
    # Above one rank they build (see tests/test_npu_ranks.py) but cannot run.
    monkeypatch.setenv("RANK_SIZE", "2")
    reduced = npu.hccl_ops.allreduce(tensor, "sum")
    assert reduced is not tensor and reduced.shape == tensor.shape
    with tf.Session() as sess:
      with pytest.raises(tf.errors.UnimplementedError, match="one rank"):
        sess.run(reduced)
    with pytest.raises(NotImplementedError, match="one rank"):
      npu.npu_distributed_optimizer_wrapper(tf.train.GradientDescentOptimizer(0.1))


def test_set_iteration_per_loop(npu):
  with tf.Graph().as_default():
    train_op = tf.no_op()
    with pytest.raises(ValueError, match="tf.Operation"):
      npu.util.set_iteration_per_loop(None, tf.constant(1.0), 2)
    with pytest.raises(ValueError, match="iterations_per_loop"):
      npu.util.set_iteration_per_loop(None, train_op, 0)
    assert npu.util.set_iteration_per_loop(None, train_op, 1) is train_op
    assert npu.util.set_iteration_per_loop(None, train_op, 3).name == "IterationOp"
