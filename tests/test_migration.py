"""The migration layer: backend choice, validation, run config, precision, optimizers."""
import importlib
import json
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from migration import backend as backend_lib
from migration import optimizers
from migration import precision
from migration import run_config as run_config_lib
from migration import session as session_lib
from migration import validation

TF2 = tf.__version__.startswith("2.")

RUN_OPTS = run_config_lib.RunOptions(
    model_dir=None, save_checkpoints_steps=50, save_checkpoints_secs=None,
    keep_checkpoint_max=3, save_summary_steps=10, log_step_count_steps=10,
    tf_random_seed=1, intra_op_threads=0, inter_op_threads=0)


def write_json(tmp_path, name, data):
  path = str(tmp_path / name)
  with open(path, "w") as f:
    f.write(data if isinstance(data, str) else json.dumps(data))
  return path


# --- backend -------------------------------------------------------------------------------

def test_auto_picks_cpu_without_npu_bridge_or_gpu():
  assert backend_lib.select_backend("auto").device == "cpu"


def test_npu_without_an_adapter_is_one_line_naming_this_stacks_adapter():
  with pytest.raises(backend_lib.BackendError) as e:
    backend_lib.select_backend("npu")
  adapter = "npu_bridge (TF 1.15" if backend_lib.TF1 else "npu_device (the TF 2.x adapter"
  assert adapter in str(e.value) and "\n" not in str(e.value)


def test_auto_picks_npu_when_npu_bridge_imports(npu_double):
  assert backend_lib.select_backend("auto").is_npu


def test_unknown_device_rejected():
  with pytest.raises(backend_lib.BackendError, match="--device=tpu"):
    backend_lib.select_backend("tpu")


# --- validation ------------------------------------------------------------------------------

def _opts(**kw):
  return run_config_lib.NPU_DEFAULTS._replace(**kw)


GOOD_MIXLIST = {"black-list": {"to-add": ["ReduceMeanD"]}, "white-list": {"to-remove": []}}
GOOD_FUSION = {"Switch": {"GraphFusion": {"ALL": "off"}, "UBFusion": {"ALL": "off"}}}
GOOD_RANK_TABLE = {"server_count": "1", "status": "completed", "version": "1.0",
                   "server_list": [{"server_id": "10.0.0.1", "device": [
                       {"device_id": "0", "device_ip": "192.168.0.2", "rank_id": "0"},
                       {"device_id": "1", "device_ip": "192.168.0.3", "rank_id": "1"}]}]}


def test_valid_options_pass(tmp_path):
  validation.check_npu_options(_opts(
      precision_mode="allow_mix_precision",
      modify_mixlist=write_json(tmp_path, "mix.json", GOOD_MIXLIST),
      fusion_switch_file=write_json(tmp_path, "fusion.cfg", GOOD_FUSION),
      enable_dump=True, dump_path=str(tmp_path), dump_step="0-3|8"), environ={})


@pytest.mark.parametrize("kwargs,message", [
    (dict(precision_mode="fp16"), "--precision_mode=fp16"),
    (dict(precision_mode="force_fp16", modify_mixlist="x.json"), "--modify_mixlist needs"),
    (dict(mix_compile_mode=True, iterations_per_loop=10), "--mix_compile_mode needs"),
    (dict(iterations_per_loop=0), "--iterations_per_loop=0"),
    (dict(enable_dump=True, dump_path="/tmp", dump_step="1,2"), "--dump_step='1,2'"),
    (dict(enable_dump=True, dump_path="/tmp", dump_step="5-2"), "runs backwards"),
    (dict(enable_dump=True, dump_step="0"), "--dump_path is required"),
    (dict(fusion_switch_file="/no/such/fusion.cfg"), "/no/such/fusion.cfg does not exist"),
    (dict(enable_profiling=True, profiling_options="output=/tmp"), "--profiling_options"),
])
def test_each_bad_value_is_named(kwargs, message):
  with pytest.raises(validation.ConfigError) as e:
    validation.check_npu_options(_opts(**kwargs), environ={})
  assert message in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ({"GraphFusion": {"ALL": "off"}}, '{"Switch"'),
    ({"Switch": {"Fusion": {}}}, "Switch.Fusion"),
    ({"Switch": {"GraphFusion": {"ConvBatchnormFusionPass": "no"}}}, "ConvBatchnormFusionPass"),
])
def test_bad_fusion_switch_file(tmp_path, content, message):
  path = write_json(tmp_path, "fusion.cfg", content)
  with pytest.raises(validation.ConfigError) as e:
    validation.check_npu_options(_opts(fusion_switch_file=path), environ={})
  assert message in str(e.value) and path in str(e.value)


@pytest.mark.parametrize("content,message", [
    ("[1, 2", "not valid JSON"),
    ({"blacklist": {}}, '"blacklist"'),
    ({"white-list": {"add": ["Conv2D"]}}, "white-list.add"),
    ({"white-list": {"to-add": "Conv2D"}}, "white-list.to-add"),
])
def test_bad_mixlist_file(tmp_path, content, message):
  path = write_json(tmp_path, "mix.json", content)
  with pytest.raises(validation.ConfigError) as e:
    validation.check_npu_options(
        _opts(precision_mode="allow_mix_precision", modify_mixlist=path), environ={})
  assert message in str(e.value) and "--modify_mixlist" in str(e.value)


def test_rank_table_checked_against_environment(tmp_path):
  path = write_json(tmp_path, "2p.json", GOOD_RANK_TABLE)
  validation.check_environment({"RANK_TABLE_FILE": path, "RANK_SIZE": "2", "RANK_ID": "1"})
  with pytest.raises(validation.ConfigError, match="RANK_SIZE=8 but .* lists 2 devices"):
    validation.check_environment({"RANK_TABLE_FILE": path, "RANK_SIZE": "8", "RANK_ID": "1"})
  with pytest.raises(validation.ConfigError, match="RANK_ID=2 must be below RANK_SIZE=2"):
    validation.check_environment({"RANK_TABLE_FILE": path, "RANK_SIZE": "2", "RANK_ID": "2"})
  bad = dict(GOOD_RANK_TABLE, server_count=1)
  with pytest.raises(validation.ConfigError, match="server_count"):
    validation.check_environment({"RANK_TABLE_FILE": write_json(tmp_path, "b.json", bad),
                                  "RANK_SIZE": "2"})
  with pytest.raises(validation.ConfigError, match="needs RANK_TABLE_FILE"):
    validation.check_environment({"RANK_SIZE": "2"})
  with pytest.raises(validation.ConfigError, match="both set"):
    validation.check_environment({"RANK_SIZE": "1", "CM_WORKER_SIZE": "1"})


# --- run config ---------------------------------------------------------------------------

def test_cpu_run_config_is_plain_runconfig(cpu_backend):
  config = run_config_lib.build_run_config(cpu_backend, RUN_OPTS)
  assert type(config) is tf.estimator.RunConfig
  assert config.save_checkpoints_steps == 50 and config.keep_checkpoint_max == 3
  assert config.tf_random_seed == 1 and config.session_config.allow_soft_placement


def test_npu_run_config_carries_exactly_the_flags_given(npu_double, tmp_path, monkeypatch):
  monkeypatch.delenv("JOB_ID")
  backend = backend_lib.activate(backend_lib.select_backend("npu"))
  mixlist = write_json(tmp_path, "mix.json", GOOD_MIXLIST)
  fusion = write_json(tmp_path, "fusion.cfg", GOOD_FUSION)
  opts = _opts(precision_mode="allow_mix_precision", modify_mixlist=mixlist,
               fusion_switch_file=fusion, iterations_per_loop=10,
               enable_dump=True, dump_path=str(tmp_path), dump_step="0|5", dump_mode="all",
               enable_dump_debug=True, dump_debug_mode="aicore_overflow",
               enable_profiling=True, profiling_options='{"output": "/tmp/prof"}')
  config = run_config_lib.build_run_config(backend, RUN_OPTS, opts)
  npu_config = importlib.import_module("npu_bridge.estimator.npu.npu_config")
  assert isinstance(config, npu_config.NPURunConfig)
  assert config._precision_mode == "allow_mix_precision"
  assert config._modify_mixlist == mixlist and config._fusion_switch_file == fusion
  assert config.iterations_per_loop == 10
  dump = config._dump_config
  assert isinstance(dump, npu_config.DumpConfig)
  assert (dump._enable_dump, dump._dump_path, dump._dump_step, dump._dump_mode) == (
      True, str(tmp_path), "0|5", "all")
  assert (dump._enable_dump_debug, dump._dump_debug_mode) == (True, "aicore_overflow")
  assert config._profiling_config._enable_profiling
  assert config._profiling_config._profiling_options == '{"output": "/tmp/prof"}'
  assert config.save_checkpoints_steps == 50 and config.keep_checkpoint_max == 3
  assert os.environ["JOB_ID"] == "10087"  # set as the ModelZoo scripts do


def test_npu_run_config_leaves_unset_options_at_npu_defaults(npu_double):
  backend = backend_lib.activate(backend_lib.select_backend("npu"))
  config = run_config_lib.build_run_config(backend, RUN_OPTS)
  assert config._precision_mode is None and config._dump_config is None
  assert config._fusion_switch_file is None and config._profiling_config is None


# --- precision ------------------------------------------------------------------------------

def _run_with_metadata(config):
  with tf.Graph().as_default():
    x = tf.random.normal([4, 8, 8, 3], seed=1)
    kernel = tf.get_variable("k", [3, 3, 3, 8])
    y = tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "SAME")))
    with tf.Session(config=config) as sess:
      sess.run(tf.global_variables_initializer())
      metadata = tf.RunMetadata()
      sess.run(y, options=tf.RunOptions(output_partition_graphs=True), run_metadata=metadata)
  return "".join(str(g) for g in metadata.partition_graphs)


@pytest.mark.skipif(not TF2, reason="the oneDNN bf16 rewrite exists in TF 2.x builds")
def test_mixed_precision_really_runs_bf16_on_cpu_tf2(cpu_backend):
  config = run_config_lib.build_run_config(
      cpu_backend, RUN_OPTS, _opts(precision_mode="allow_mix_precision")).session_config
  assert "DT_BFLOAT16" in _run_with_metadata(config)
  assert "DT_BFLOAT16" not in _run_with_metadata(
      run_config_lib.build_run_config(cpu_backend, RUN_OPTS).session_config)
  assert precision.compute_dtype(cpu_backend, "allow_mix_precision") == "bfloat16"


@pytest.mark.skipif(TF2, reason="TF 1.15 has no CPU bf16 rewrite")
def test_mixed_precision_on_tf1_cpu_says_fp32(cpu_backend, caplog):
  with caplog.at_level("WARNING"):
    config = run_config_lib.build_run_config(
        cpu_backend, RUN_OPTS, _opts(precision_mode="allow_mix_precision")).session_config
  assert "running fp32" in caplog.text
  assert "DT_BFLOAT16" not in _run_with_metadata(config)
  assert precision.compute_dtype(cpu_backend, "allow_mix_precision") == "float32"


def test_gpu_mixed_modes_turn_on_fp16_amp():
  config = tf.ConfigProto()
  precision.apply_to_session_config(config, backend_lib.Backend("gpu"), "allow_fp32_to_fp16")
  assert config.graph_options.rewrite_options.auto_mixed_precision == 1
  assert precision.needs_loss_scaling(backend_lib.Backend("gpu"), "allow_mix_precision")
  assert not precision.needs_loss_scaling(backend_lib.Backend("gpu"), "force_fp32")


# --- optimizers and loss scaling -------------------------------------------------------------

def _overflow_graph(wrap):
  """A one-variable graph whose gradient is inf when `poisoned` is fed True."""
  var = tf.get_variable("w", initializer=1.0)
  poisoned = tf.placeholder_with_default(False, [])
  loss = var * tf.where(poisoned, np.float32(np.inf), 1.0)
  step = tf.train.get_or_create_global_step()
  opt = wrap(tf.train.GradientDescentOptimizer(0.1))
  return var, step, opt.apply_gradients(opt.compute_gradients(loss), global_step=step), poisoned


@pytest.mark.parametrize("on_npu", [False, True])
def test_overflowing_step_is_skipped(on_npu, request, capfd):
  backend = (backend_lib.Backend("npu", request.getfixturevalue("npu_double")) if on_npu
             else backend_lib.Backend("cpu"))
  with tf.Graph().as_default():
    var, step, train_op, poisoned = _overflow_graph(
        lambda opt: optimizers.wrap_optimizer(opt, {"loss_scale": "dynamic"}, backend))
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      sess.run(train_op)
      assert sess.run(step) == 1 and sess.run(var) == pytest.approx(0.9)
      sess.run(train_op, {poisoned: True})
      assert sess.run(step) == 1, "an overflowing step must not advance global_step"
      assert sess.run(var) == pytest.approx(0.9)
      sess.run(train_op)
      assert sess.run(step) == 2
  if not on_npu:
    assert "non-finite gradients at global_step 1 - step skipped" in capfd.readouterr().err


def test_dynamic_loss_scale_follows_the_npu_update_rule():
  with tf.Graph().as_default():
    manager = optimizers.ExponentialUpdateLossScaleManager(
        init_loss_scale=8.0, incr_every_n_steps=2, decr_every_n_nan_or_inf=2, decr_ratio=0.5)
    var, step, train_op, poisoned = _overflow_graph(
        lambda opt: optimizers.LossScaleOptimizer(opt, manager))
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      scales = []
      for poison in (True, True, False, False, True, True, True, True, True, True, True):
        sess.run(train_op, {poisoned: poison})
        scales.append(sess.run(manager.get_loss_scale()))
  assert scales == [8, 4, 4, 8, 8, 4, 4, 2, 2, 1, 1]


def test_finite_step_keeps_the_overflow_count():
  """As contrib's manager: a finite step that does not grow the scale leaves bad_steps."""
  with tf.Graph().as_default():
    manager = optimizers.ExponentialUpdateLossScaleManager(
        init_loss_scale=8.0, incr_every_n_steps=3, decr_every_n_nan_or_inf=2, decr_ratio=0.5)
    finite = tf.placeholder(tf.bool, [])
    update = manager.update_loss_scale(finite)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      scales = []
      for value in (False, True, False, True, True, True):
        sess.run(update, {finite: value})
        scales.append(sess.run(manager.get_loss_scale()))
  assert scales == [8, 8, 4, 4, 4, 8]


def test_fixed_loss_scale_rejects_below_one():
  with pytest.raises(ValueError, match="loss_scale"):
    optimizers.FixedLossScaleManager(0.5)


def test_no_loss_scale_returns_optimizer_unchanged(cpu_backend):
  opt = tf.train.GradientDescentOptimizer(0.1)
  assert optimizers.wrap_optimizer(opt, {"loss_scale": "none"}) is opt


def test_npu_distributed_optimizer_when_ranks_gt_1(npu_double, monkeypatch, tmp_path):
  monkeypatch.setenv("RANK_SIZE", "2")
  backend = backend_lib.Backend("npu", npu_double)
  with tf.Graph().as_default():
    wrapped = optimizers.wrap_optimizer(tf.train.GradientDescentOptimizer(0.1),
                                        {"loss_scale": "none"}, backend)
  assert type(wrapped).__name__ == "NPUDistributedOptimizer"


def test_dropout_uses_npu_ops_on_npu(npu_double, monkeypatch):
  from estimators import layers
  calls = []
  npu_ops = importlib.import_module("npu_bridge.estimator.npu_ops")
  original = npu_ops.dropout
  monkeypatch.setattr(npu_ops, "dropout", lambda x, keep_prob, **kw: calls.append(
      keep_prob) or original(x, keep_prob, **kw))
  backend_lib.activate(backend_lib.select_backend("npu"))
  with tf.Graph().as_default():
    layers.dropout(tf.ones([4, 4]), 0.25, training=True)
  assert calls == [0.75]



@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_pointwise_convolution_keeps_values_and_gradients_with_cheaper_cpu_kernels(
    device, cpu_backend):
  """layers.conv2d's 1x1 stride-1 case (migration.ops.pointwise_conv2d): on the CPU its
  gradients come from Conv2D and MatMul instead of TF's Conv2DBackpropInput/Filter (slow
  on TF 1.15); the values and gradients equal tf.nn.conv2d's; GPU and NPU keep TF's."""
  from estimators import layers
  backend_lib.activate(backend_lib.Backend(device))
  rng = np.random.RandomState(0)
  with tf.Graph().as_default() as graph:
    x = tf.constant(rng.randn(2, 5, 5, 6).astype(np.float32))
    weights = tf.constant(rng.randn(2, 5, 5, 4).astype(np.float32))
    ours = layers.conv2d(x, 4, 1, name="pointwise")
    kernel = tf.trainable_variables()[0]
    reference = tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "SAME")
    grads_ours = tf.gradients(tf.reduce_sum(ours * weights), [x, kernel])
    grad_types = {op.type for op in graph.get_operations() if op.name.startswith("gradients/")}
    grads_reference = tf.gradients(tf.reduce_sum(reference * weights), [x, kernel])
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      values = sess.run([ours, reference] + grads_ours + grads_reference)
  np.testing.assert_allclose(values[0], values[1], rtol=1e-6, atol=1e-6)
  for ours_value, reference_value in zip(values[2:4], values[4:]):
    np.testing.assert_allclose(ours_value, reference_value, rtol=1e-5, atol=1e-5)
  tf_backprop = {"Conv2DBackpropInput", "Conv2DBackpropFilter"}
  assert (grad_types & tf_backprop) == (set() if device == "cpu" else tf_backprop)


# --- session config for Session-style code ----------------------------------------------------

def test_session_config_on_npu_has_npu_optimizer(npu_double):
  backend = backend_lib.select_backend("npu")
  config = session_lib.session_config(_opts(precision_mode="allow_mix_precision"),
                                      backend=backend)
  custom = [o for o in config.graph_options.rewrite_options.custom_optimizers
            if o.name == "NpuOptimizer"]
  assert len(custom) == 1
  assert custom[0].parameter_map["use_off_line"].b
  assert custom[0].parameter_map["precision_mode"].s == b"allow_mix_precision"


def test_session_config_off_npu_is_plain(cpu_backend):
  config = session_lib.session_config(_opts(precision_mode="force_fp32"))
  assert not config.graph_options.rewrite_options.custom_optimizers
