"""The npu_device test double (migration/doubles) enforces the TF2 adapter's documented rules.

Reference: ../shared/reference/npu_bridge_api.md §10-§11 (master). On TF 1.x only the
ImportError test runs.
"""
import json
import os
import subprocess
import sys
import warnings

import pytest
import tensorflow as tf
from tensorflow.python.eager import context

DOUBLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "migration", "doubles")
TF2 = int(tf.__version__.split(".")[0]) >= 2

NPU_DEVICE_ENV_VARS = ("ASCEND_DEVICE_ID", "RANK_SIZE", "CM_WORKER_SIZE", "RANK_ID",
                       "RANK_TABLE_FILE", "CM_CHIEF_IP", "CM_CHIEF_PORT", "CM_CHIEF_DEVICE",
                       "CM_WORKER_IP", "NPU_LOOP_SIZE")

# npu_bridge_api.md §11.3, in order.
DOCUMENTED_OPTIONS = (
    "graph_run_mode graph_memory_max_size variable_memory_max_size variable_format_optimize "
    "enable_scope_fusion_passes fusion_switch_file precision_mode op_select_implmode "
    "optypelist_for_implmode op_compiler_cache_mode op_compiler_cache_dir "
    "stream_max_parallel_num ac_parallel_enable hcom_parallel hcom_multi_mode "
    "is_tailing_optimization op_debug_level op_debug_config debug_dir modify_mixlist "
    "enable_exception_dump dump_config aoe_config profiling_config enable_small_channel "
    "deterministic op_precision_mode graph_exec_timeout topo_sorting_mode customize_dtypes "
    "overflow_flag stream_sync_timeout event_sync_timeout external_weight memory_config "
    "jit_compile graph_compiler_cache_dir experimental precision_mode_v2").split()

# as_dict() of untouched options: every default that is not None, as a string.
DEFAULT_AS_DICT = {
    "graph_run_mode": "1", "op_compiler_cache_mode": "enable", "hcom_parallel": "1",
    "is_tailing_optimization": "0", "enable_exception_dump": "2", "enable_dump": "0",
    "dump_mode": "output", "enable_dump_debug": "0", "dump_debug_mode": "all",
    "dump_data": "tensor", "enable_profiling": "0", "enable_small_channel": "0",
    "deterministic": "0", "overflow_flag": "1", "stream_sync_timeout": "-1",
    "event_sync_timeout": "-1", "external_weight": "0", "jit_compile": "auto"}


def _unload():
  for name in [m for m in sys.modules if m == "npu_device" or m.startswith("npu_device.")]:
    del sys.modules[name]


@pytest.fixture
def npu(monkeypatch):
  """A freshly imported npu_device double, no NPU environment; unloaded afterwards."""
  if not TF2:
    pytest.skip("npu_device is TF 2.x only")
  for name in NPU_DEVICE_ENV_VARS:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.syspath_prepend(DOUBLES)
  _unload()
  import npu_device  # pylint: disable=g-import-not-at-top
  yield npu_device
  _unload()


@pytest.mark.skipif(TF2, reason="checks the TF 1.x refusal")
def test_import_needs_tf2(monkeypatch):
  monkeypatch.syspath_prepend(DOUBLES)
  _unload()
  try:
    with pytest.raises(ImportError, match="npu_device needs TensorFlow 2.x"):
      import npu_device  # pylint: disable=g-import-not-at-top,unused-import
  finally:
    _unload()


# --- global_options() ----------------------------------------------------------------


def test_global_options_is_a_singleton_with_the_documented_options(npu):
  options = npu.global_options()
  assert options is npu.global_options()
  assert [name for name, _ in type(options)._OPTIONS] == DOCUMENTED_OPTIONS
  assert type(options.dump_config).__name__ == "NpuDumpConfig"
  assert type(options.profiling_config).__name__ == "NpuProfilingConfig"
  assert type(options.aoe_config).__name__ == "NpuAoeConfig"
  assert type(options.memory_config).__name__ == "MemoryConfig"
  assert type(options.experimental).__name__ == "NpuExperimentalConfig"


def test_as_dict_of_the_defaults(npu):
  got = npu.global_options().as_dict()
  profiling = json.loads(got.pop("profiling_options"))
  assert got == DEFAULT_AS_DICT
  assert profiling == {"output": "./", "training_trace": "on", "task_trace": "on",
                       "hccl": "on", "aicpu": "on", "aic_metrics": "PipeUtilization"}


def test_unknown_option_raises_value_error_listing_valid_options(npu):
  options = npu.global_options()
  with pytest.raises(ValueError, match="precison_mode.*precision_mode, op_select_implmode"):
    options.precison_mode = "allow_mix_precision"
  with pytest.raises(ValueError, match="enable_dump, dump_path, dump_step"):
    options.dump_config.dump_dir = "/tmp"
  with pytest.raises(ValueError, match=r"\(none\)"):
    options.memory_config.atomic_clean_policy = 0
  with pytest.raises(ValueError):
    options.as_dict = None


@pytest.mark.parametrize("owner,name,value", [
    ("", "precision_mode", "fp16"), ("", "precision_mode_v2", "allow_mix_precision"),
    ("", "graph_run_mode", 2), ("", "jit_compile", "on"), ("", "ac_parallel_enable", 1),
    ("", "op_debug_level", 5), ("", "topo_sorting_mode", 2),
    ("", "variable_format_optimize", 1), ("dump_config", "dump_mode", "both"),
    ("dump_config", "dump_debug_mode", "overflow"), ("dump_config", "dump_data", "all")])
def test_value_outside_the_allowed_list_raises_value_error(npu, owner, name, value):
  options = npu.global_options()
  target = getattr(options, owner) if owner else options
  with pytest.raises(ValueError, match="must be one of"):
    setattr(target, name, value)


@pytest.mark.parametrize("owner,name,value", [
    ("", "graph_run_mode", "1"), ("", "graph_run_mode", True), ("", "hcom_parallel", 1),
    ("", "stream_sync_timeout", "600"), ("", "jit_compile", True),
    ("", "dump_config", {}), ("dump_config", "enable_dump", "True"),
    ("profiling_config", "enable_profiling", 1),
    ("profiling_config", "profiling_options", {"output": "/tmp"})])
def test_value_of_another_type_than_the_default_raises_type_error(npu, owner, name, value):
  options = npu.global_options()
  target = getattr(options, owner) if owner else options
  with pytest.raises(TypeError, match="default's type"):
    setattr(target, name, value)


def test_valid_values_are_kept(npu):
  options = npu.global_options()
  options.precision_mode = "allow_mix_precision"
  options.topo_sorting_mode = None
  options.stream_sync_timeout = 600000
  options.graph_memory_max_size = str(24 * 1024 ** 3)  # free: any type
  options.op_compiler_cache_dir = 0
  dump_config = type(options.dump_config)()
  options.dump_config = dump_config  # same type as the default
  assert options.dump_config is dump_config
  assert options.precision_mode == "allow_mix_precision"


def test_booleans_serialise_as_1_and_0(npu):
  options = npu.global_options()
  options.hcom_parallel = False
  options.is_tailing_optimization = True
  options.enable_scope_fusion_passes = True  # a free option
  got = options.as_dict()
  assert (got["hcom_parallel"], got["is_tailing_optimization"],
          got["enable_scope_fusion_passes"]) == ("0", "1", "1")


def test_nested_configs_flatten_into_as_dict(npu):
  """The fields BiT sets (§11.4)."""
  options = npu.global_options()
  options.precision_mode = "allow_mix_precision"
  options.modify_mixlist = "ops_info.json"
  options.dump_config.enable_dump = True
  options.dump_config.dump_path = "/tmp/dump"
  options.dump_config.dump_step = "0|5"
  options.dump_config.dump_mode = "all"
  options.profiling_config.enable_profiling = True
  profiling = json.dumps({"output": "/tmp/prof", "aic_metrics": "PipeUtilization",
                          "fp_point": "", "bp_point": ""})
  options.profiling_config.profiling_options = profiling
  got = options.as_dict()
  assert "dump_config" not in got and "profiling_config" not in got
  assert {k: got[k] for k in ("precision_mode", "modify_mixlist", "enable_dump",
                              "dump_path", "dump_step", "dump_mode", "enable_profiling",
                              "profiling_options")} == {
      "precision_mode": "allow_mix_precision", "modify_mixlist": "ops_info.json",
      "enable_dump": "1", "dump_path": "/tmp/dump", "dump_step": "0|5", "dump_mode": "all",
      "enable_profiling": "1", "profiling_options": profiling}
  assert "dump_layer" not in got  # None: not set


def test_deprecated_options_warn_when_as_dict_is_called(npu):
  options = npu.global_options()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    options.as_dict()  # deprecated options that are not set: no warning
    options.op_debug_level = 2  # the assignment does not warn either
  with pytest.warns(UserWarning, match="op_debug_level is deprecated, use op_debug_config"):
    got = options.as_dict()
  assert got["op_debug_level"] == "2"


# --- open() and the device -------------------------------------------------------------


def test_open_snapshots_options_at_call_time(npu):
  options = npu.global_options()
  options.precision_mode = "allow_mix_precision"
  npu.open().as_default()  # the BiT call (§11.4)
  assert len(npu.opened) == 1
  device_id, opened_with = npu.opened[0]
  assert device_id == 0
  assert opened_with["precision_mode"] == "allow_mix_precision"

  options.precision_mode = "force_fp32"  # "works" on the object ...
  options.dump_config.enable_dump = True
  assert options.precision_mode == "force_fp32"
  handle = npu.open()  # ... but the open device keeps what it was opened with
  assert handle.options["precision_mode"] == "allow_mix_precision"
  assert handle.options["enable_dump"] == "0"
  assert npu.opened == [(0, opened_with)]
  assert opened_with["precision_mode"] == "allow_mix_precision"


def test_open_again_returns_the_open_device_and_close_allows_a_fresh_open(npu):
  first = npu.open(1)
  assert npu.open(1) is first
  with pytest.raises(RuntimeError, match="one device per process"):
    npu.open(2)
  npu.global_options().deterministic = 1
  npu.close()
  second = npu.open(2)
  assert second is not first
  assert [(i, o["deterministic"]) for i, o in npu.opened] == [(1, "0"), (2, "1")]


def test_device_id_comes_from_ascend_device_id(npu, monkeypatch):
  monkeypatch.setenv("ASCEND_DEVICE_ID", "3")
  device = npu.open()
  assert device.name.endswith("NPU:3")
  npu.close()
  assert npu.open(5).name.endswith("NPU:5")  # an explicit id wins
  assert [i for i, _ in npu.opened] == [3, 5]
  with pytest.raises(TypeError):
    npu.open(device_id="0")


def test_as_default_works_as_a_call_and_as_a_context(npu):
  device = npu.open()
  assert npu.default_device() is None
  with device.as_default() as entered:
    assert entered is device and npu.default_device() is device
  assert npu.default_device() is None
  device.as_default()
  assert npu.default_device() is device
  with device.scope() as scoped:
    assert scoped is device
  npu.close()
  assert npu.default_device() is None


@pytest.mark.parametrize("env,error", [
    ({"RANK_SIZE": "8"}, "RANK_TABLE_FILE and RANK_ID"),
    ({"RANK_SIZE": "8", "RANK_TABLE_FILE": "8p.json"}, "RANK_TABLE_FILE and RANK_ID"),
    ({"RANK_SIZE": "2", "CM_CHIEF_IP": "10.0.0.1", "CM_CHIEF_PORT": "29688",
      "CM_CHIEF_DEVICE": "0"}, "CM_WORKER_IP"),
    ({"CM_WORKER_SIZE": "2"}, "RANK_TABLE_FILE"),
    ({"RANK_SIZE": "2", "CM_WORKER_SIZE": "2"}, "at the same time"),
    ({"RANK_SIZE": "two"}, "must be an integer"),
    ({"RANK_SIZE": "8", "RANK_TABLE_FILE": "8p.json", "RANK_ID": "0"}, None),
    ({"RANK_SIZE": "2", "CM_CHIEF_IP": "10.0.0.1", "CM_CHIEF_PORT": "29688",
      "CM_CHIEF_DEVICE": "0", "CM_WORKER_IP": "10.0.0.2"}, None),
    ({"RANK_SIZE": "1"}, None)])
def test_open_checks_the_cluster_variables_when_rank_size_is_above_1(npu, monkeypatch,
                                                                     env, error):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  if error is None:
    npu.open()
    assert len(npu.opened) == 1
  else:
    with pytest.raises(ValueError, match=error):
      npu.open()
    assert npu.opened == []


def test_set_npu_loop_size(npu):
  npu.set_npu_loop_size(10)
  assert npu.loop_sizes == [10]
  for bad in (0, -1, 1.5, "10", True):
    with pytest.raises(ValueError, match="positive int"):
      npu.set_npu_loop_size(bad)
  assert npu.loop_sizes == [10]


def test_scopes_and_sat_mode(npu):
  with npu.npu_run_context(), npu.npu_run_context(options={"a": 1}):
    with npu.keep_dtype_scope(), npu.npu_recompute_scope():
      pass
  npu.set_device_sat_mode(1)
  assert npu.sat_modes == [1]
  assert npu.is_inf_nan_enabled() is True


def test_enable_v1_sets_the_device_id_and_disables_v2_behaviour(npu):
  """In a subprocess: disable_v2_behavior() is process-global."""
  del npu
  script = "\n".join([
      "import json, os, sys",
      "sys.path.insert(0, %r)" % DOUBLES,
      "import tensorflow as tf",
      "import npu_device",
      "npu_device.compat.enable_v1()",
      "unset = os.environ.get('ASCEND_DEVICE_ID')",
      "npu_device.open(5)",
      "npu_device.compat.enable_v1()",
      "print(json.dumps([unset, os.environ.get('ASCEND_DEVICE_ID'), tf.executing_eagerly(),",
      "                  tf.__internal__.tf2.enabled(), npu_device.compat.enable_v1_calls]))",
  ])
  env = {k: v for k, v in os.environ.items() if k not in NPU_DEVICE_ENV_VARS}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True).stdout
  assert json.loads(out.strip().splitlines()[-1]) == [None, "5", False, False, [None, 5]]


# --- distribute ------------------------------------------------------------------------


def test_distribute_is_the_identity_for_one_rank(npu):
  dist = npu.distribute
  values = [tf.constant(1.0), tf.constant([2.0, 3.0])]
  reduced = dist.all_reduce(values)
  assert isinstance(reduced, list) and all(a is b for a, b in zip(reduced, values))
  assert dist.all_reduce(values[0], reduction="sum") is values[0]
  assert all(a is b for a, b in zip(dist.broadcast(tuple(values), root_rank=0), values))
  assert isinstance(dist.broadcast(tuple(values)), list)
  assert dist.grouping_broadcast(values) == values
  optimizer = object()
  assert dist.npu_distributed_keras_optimizer_wrapper(optimizer) is optimizer
  dataset = tf.data.Dataset.range(4)
  assert dist.shard_and_rebatch_dataset(dataset, 32) is dataset
  applied = []
  assert dist.grouping_gradients_apply(
      lambda gv: applied.append(list(gv)) or "op", zip([1], [2])) == "op"
  assert applied == [[(1, 2)]]
  with pytest.raises(ValueError, match="reduction"):
    dist.all_reduce(values, reduction="average")
  with pytest.raises(TypeError):
    dist.all_reduce(values, reduce_op="sum")  # pylint: disable=unexpected-keyword-arg
  with pytest.raises(TypeError):
    dist.npu_distributed_keras_optimizer_wrapper(optimizer, fusion=1)  # pylint: disable=unexpected-keyword-arg


def test_distribute_refuses_more_than_one_rank(npu, monkeypatch):
  monkeypatch.setenv("RANK_SIZE", "8")
  dist = npu.distribute
  for call in (lambda: dist.all_reduce([1.0]), lambda: dist.broadcast([1.0]),
               lambda: dist.npu_distributed_keras_optimizer_wrapper(object()),
               lambda: dist.shard_and_rebatch_dataset(None, 256),
               lambda: dist.grouping_gradients_apply(list, []),
               lambda: dist.grouping_broadcast([])):
    with pytest.raises(NotImplementedError, match="rank size is 8"):
      call()


# --- loss scaling ----------------------------------------------------------------------


def _step(optimizer, variable, scale_the_gradient=1.0):
  with tf.GradientTape() as tape:
    loss = optimizer.get_scaled_loss(variable * variable)
  grads = tape.gradient(loss, [variable])
  grads = optimizer.get_unscaled_gradients([g * scale_the_gradient for g in grads])
  optimizer.apply_gradients(zip(grads, [variable]))


@pytest.mark.parametrize("sgd", [tf.keras.optimizers.SGD,
                                 getattr(tf.keras.optimizers, "legacy", tf.keras.optimizers).SGD],
                         ids=["keras", "keras_legacy"])
def test_npu_loss_scale_optimizer_takes_keras_arguments_and_applies(npu, sgd):
  optimizer_module = npu.train.optimizer
  with context.eager_mode():  # other test modules may have disabled eager execution
    optimizer = optimizer_module.NpuLossScaleOptimizer(sgd(0.1), dynamic=True,
                                                       initial_scale=1024,
                                                       dynamic_growth_steps=100)
    assert isinstance(optimizer, optimizer_module.NpuLossScaleOptimizer)
    assert isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert optimizer.dynamic and float(optimizer.loss_scale) == 1024.0
    variable = tf.Variable(1.0)
    _step(optimizer, variable)
    assert float(variable.numpy()) == pytest.approx(0.8)  # 1 - 0.1 * 2
    _step(optimizer, variable, scale_the_gradient=float("inf"))  # overflow: skipped
    assert float(variable.numpy()) == pytest.approx(0.8)
    assert float(optimizer.loss_scale) == 512.0

    fixed = optimizer_module.NpuLossScaleOptimizer(sgd(0.1), dynamic=False,
                                                   initial_scale=128)
    assert not fixed.dynamic and float(fixed.loss_scale) == 128.0
    with pytest.raises(TypeError):
      optimizer_module.NpuLossScaleOptimizer(sgd(0.1), loss_scale=128)  # pylint: disable=unexpected-keyword-arg
    with pytest.raises(TypeError, match="Keras optimizer"):
      optimizer_module.NpuLossScaleOptimizer(tf.compat.v1.train.GradientDescentOptimizer(0.1))


def test_npu_experimental_loss_scale_optimizer_maps_loss_scale(npu):
  optimizer_module = npu.train.optimizer
  cls = optimizer_module.NpuExperimentalLossScaleOptimizer
  with context.eager_mode():
    fixed = cls(tf.keras.optimizers.SGD(0.1), 256)
    assert isinstance(fixed, optimizer_module.NpuLossScaleOptimizer)
    assert not fixed.dynamic and float(fixed.loss_scale) == 256.0
    dynamic = cls(optimizer=tf.keras.optimizers.SGD(0.1), loss_scale="dynamic")
    assert dynamic.dynamic
    variable = tf.Variable(1.0)
    _step(fixed, variable)
    assert float(variable.numpy()) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="loss_scale"):
      cls(tf.keras.optimizers.SGD(0.1), "static")
    with pytest.raises(TypeError):
      cls(tf.keras.optimizers.SGD(0.1))  # pylint: disable=no-value-for-parameter
