"""migration.compat and migration.runtime: what converted code calls, on CPU and on the
npu_bridge double, with settings from MIGRATION_* variables."""
import importlib

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from migration import compat
from migration import horovod
from migration import precision
from migration import runtime
from tests import tiny_model


# --- settings from the environment ---

@pytest.mark.parametrize("variables,message", [
    ({"MIGRATION_PRECISION_MODE": "fp8"}, "MIGRATION_PRECISION_MODE=fp8 is not valid"),
    ({"MIGRATION_ENABLE_DUMP": "maybe"}, "MIGRATION_ENABLE_DUMP='maybe': expected true or "
     "false"),
    ({"MIGRATION_ITERATIONS_PER_LOOP": "many"}, "MIGRATION_ITERATIONS_PER_LOOP='many': "
     "expected an integer"),
    ({"MIGRATION_MIX_COMPILE_MODE": "true", "MIGRATION_ITERATIONS_PER_LOOP": "4"},
     "MIGRATION_MIX_COMPILE_MODE needs MIGRATION_ITERATIONS_PER_LOOP=1"),
    ({"MIGRATION_DEVICE": "npu"}, "MIGRATION_DEVICE=npu needs Huawei's npu_"),
    ({"MIGRATION_LOSS_SCALE": "0.5"}, "MIGRATION_LOSS_SCALE=0.5"),
])
def test_bad_variables_stop_with_one_line_naming_them(migration_env, variables, message):
  with pytest.raises(SystemExit) as exit_info:
    migration_env(**variables)
  text = str(exit_info.value.code)
  assert text.startswith("error: ") and message in text and "\n" not in text


def test_variables_reach_the_settings(migration_env):
  settings = migration_env(MIGRATION_DEVICE="cpu", MIGRATION_ITERATIONS_PER_LOOP="4",
                           MIGRATION_PRECISION_MODE="allow_mix_precision",
                           MIGRATION_HCOM_PARALLEL="false", MIGRATION_LOSS_SCALE="128")
  assert settings.backend.device == "cpu"
  assert settings.npu_opts.iterations_per_loop == 4
  assert settings.npu_opts.precision_mode == "allow_mix_precision"
  assert settings.npu_opts.hcom_parallel is False
  assert settings.loss_scale == "128"
  assert runtime.settings() is settings, "worked out once per process"


# --- run configuration ---

def test_tpu_run_config_on_cpu_keeps_run_settings(migration_env, tmp_path):
  migration_env(MIGRATION_DEVICE="cpu")
  config = compat.RunConfig(
      cluster=compat.TPUClusterResolver(tpu="my-tpu", zone="z", project="p"),
      model_dir=str(tmp_path), save_checkpoints_steps=7,
      tpu_config=compat.TPUConfig(iterations_per_loop=5, num_shards=8,
                                  per_host_input_for_training=compat.InputPipelineConfig
                                  .PER_HOST_V2))
  assert type(config) is tf.estimator.RunConfig
  assert config.model_dir == str(tmp_path) and config.save_checkpoints_steps == 7
  assert config.tpu_config.iterations_per_loop == 5


def test_tpu_run_config_on_npu_is_npu_run_config(migration_env, npu_double, tmp_path):
  migration_env(MIGRATION_DEVICE="npu", MIGRATION_PRECISION_MODE="allow_mix_precision")
  session = tf.ConfigProto(log_device_placement=True)
  session.graph_options.rewrite_options.disable_meta_optimizer = True
  config = compat.RunConfig(model_dir=str(tmp_path), session_config=session,
                            tpu_config=compat.TPUConfig(iterations_per_loop=3))
  assert type(config).__name__ == "NPURunConfig"
  assert config.iterations_per_loop == 3
  assert config._precision_mode == "allow_mix_precision"  # pylint: disable=protected-access
  assert config.session_config.log_device_placement, "the script's own settings are kept"
  assert not config.session_config.graph_options.rewrite_options.disable_meta_optimizer, (
      "grappler must stay on: the NpuOptimizer is a grappler pass")


def test_disable_meta_optimizer_kept_on_cpu_at_fp32(migration_env):
  migration_env(MIGRATION_DEVICE="cpu")
  session = tf.ConfigProto()
  session.graph_options.rewrite_options.disable_meta_optimizer = True
  config = compat.RunConfig(session_config=session)
  assert config.session_config.graph_options.rewrite_options.disable_meta_optimizer


def test_session_config_on_npu_keeps_the_scripts_settings(migration_env, npu_double):
  migration_env(MIGRATION_DEVICE="npu", MIGRATION_PRECISION_MODE="allow_fp32_to_fp16")
  config = compat.session_config(tf.ConfigProto(inter_op_parallelism_threads=3))
  assert config.inter_op_parallelism_threads == 3
  npu = [o for o in config.graph_options.rewrite_options.custom_optimizers
         if o.name == "NpuOptimizer"]
  assert npu[0].parameter_map["precision_mode"].s == b"allow_fp32_to_fp16"


def test_canned_estimator_config_on_npu_carries_npu_optimizer(migration_env, npu_double):
  migration_env(MIGRATION_DEVICE="npu")
  config = compat.run_config(tf.estimator.RunConfig(save_summary_steps=3))
  assert config.save_summary_steps == 3
  assert any(o.name == "NpuOptimizer"
             for o in config.session_config.graph_options.rewrite_options.custom_optimizers)


# --- estimator and spec ---

def _bfloat16_input_fn(params):
  """A TPU-style input pipeline: images travel as bfloat16."""
  dataset = tiny_model.blobs_input_fn(tf.estimator.ModeKeys.TRAIN, 64)(params)
  return dataset.map(lambda features, labels: ({"x": tf.cast(features["x"], tf.bfloat16)},
                                               labels))


def test_bfloat16_features_reach_a_float32_model_as_float32(migration_env, tmp_path):
  settings = migration_env(MIGRATION_DEVICE="cpu")
  seen = {}

  def model_fn(features, labels, mode, params):
    seen["dtype"] = features["x"].dtype
    with compat.bfloat16_scope():
      logits = tf.layers.dense(features["x"], tiny_model.NUM_CLASSES)
    loss = tf.losses.sparse_softmax_cross_entropy(labels, tf.cast(logits, tf.float32))
    step = tf.train.get_global_step()
    return compat.TPUEstimatorSpec(
        mode, loss=loss, train_op=compat.CrossShardOptimizer(
            tf.train.GradientDescentOptimizer(0.1)).minimize(loss, step))

  estimator = compat.TPUEstimator(model_fn=model_fn, model_dir=str(tmp_path),
                                  train_batch_size=16)
  estimator.train(_bfloat16_input_fn, max_steps=2)
  assert precision.compute_dtype(settings.backend, None) == "float32"
  assert seen["dtype"] == tf.float32
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-2")


def test_bfloat16_scope_follows_the_precision_mode(migration_env):
  settings = migration_env(MIGRATION_DEVICE="cpu",
                           MIGRATION_PRECISION_MODE="allow_mix_precision_bf16")
  expected = precision.compute_dtype(settings.backend, "allow_mix_precision_bf16")
  with tf.Graph().as_default():
    with compat.bfloat16_scope():
      weights = tf.get_variable("w", [2], tf.bfloat16, initializer=tf.ones_initializer())
    assert weights.dtype.base_dtype == (tf.bfloat16 if expected == "bfloat16" else tf.float32)
    assert tf.global_variables()[0].dtype.base_dtype == tf.float32
    assert tf.global_variables()[0].op.name == "w", "same variable names as on the TPU"


def test_global_batch_is_split_over_npu_ranks(migration_env, monkeypatch):
  migration_env(MIGRATION_DEVICE="cpu")
  monkeypatch.setattr(compat, "rank_size", lambda: 4)
  assert compat._per_device(64) == 16  # pylint: disable=protected-access
  with pytest.raises(SystemExit, match="batch size 30 does not divide over RANK_SIZE=4"):
    compat._per_device(30)  # pylint: disable=protected-access


# --- ops and single-device collectives ---

def test_one_device_collectives_are_identities(migration_env):
  migration_env(MIGRATION_DEVICE="cpu")
  with tf.Graph().as_default(), tf.Session() as sess:
    x = tf.constant([1.0, 2.0])
    assert np.allclose(sess.run(compat.cross_replica_sum(x)), [1.0, 2.0])
    assert np.allclose(sess.run(horovod.allreduce(x)), [1.0, 2.0])
    assert compat.outside_compilation(lambda a, b: a + b, 1, b=2) == 3
  assert compat.get_tpu_context().number_of_shards == 1
  assert compat.drop_remainder(False) is False
  assert (compat.shard_count(3), compat.shard_index(2)) == (3, 2)
  assert compat.device("/device:TPU:0") == "" and compat.device("/gpu:1") == "/gpu:1"
  horovod.init()
  assert (horovod.size(), horovod.rank()) == (1, 0)
  optimizer = tf.train.GradientDescentOptimizer(0.1)
  assert horovod.DistributedOptimizer(optimizer) is optimizer
  assert compat.TPUClusterResolver("my-tpu").master() == ""


def test_on_the_npu_batches_are_static_and_devices_host(migration_env, npu_double):
  migration_env(MIGRATION_DEVICE="npu")
  assert compat.drop_remainder(False) is True
  assert compat.device("/gpu:0") == "/cpu:0"


@pytest.mark.parametrize("dropout,args,keep_prob", [
    ("dropout_v1", (0.8,), 0.8), ("dropout_v1", (None, None, None, None, 0.3), 0.7),
    ("dropout_v2", (0.25,), 0.75)])
def test_dropout_goes_through_npu_ops_on_the_npu(migration_env, npu_bridge_on_path, monkeypatch,
                                                  dropout, args, keep_prob):
  migration_env(MIGRATION_DEVICE="npu")
  calls = []
  npu_ops = importlib.import_module("npu_bridge.estimator.npu_ops")
  monkeypatch.setattr(npu_ops, "dropout",
                      lambda x, keep_prob, **kw: calls.append(keep_prob) or x)
  with tf.Graph().as_default():
    getattr(compat, dropout)(tf.ones([4]), *args)
  assert calls == [pytest.approx(keep_prob)]


def test_dropout_off_the_npu_is_tensorflows(migration_env):
  migration_env(MIGRATION_DEVICE="cpu")
  with tf.Graph().as_default(), tf.Session() as sess:
    tf.set_random_seed(1)
    kept = sess.run(compat.dropout_v1(tf.ones([1000]), 0.5))
  assert set(np.unique(kept)) <= {0.0, 2.0} and 350 < np.count_nonzero(kept) < 650


def test_cross_shard_optimizer_applies_the_loss_scale_setting(migration_env):
  migration_env(MIGRATION_DEVICE="cpu", MIGRATION_LOSS_SCALE="dynamic")
  optimizer = compat.CrossShardOptimizer(tf.train.GradientDescentOptimizer(0.1))
  assert type(optimizer).__name__ == "LossScaleOptimizer"
  migration_env(MIGRATION_LOSS_SCALE="auto")
  optimizer = compat.CrossShardOptimizer(tf.train.GradientDescentOptimizer(0.1))
  assert type(optimizer).__name__ == "CrossShardOptimizer"


def test_loss_scale_classes_skip_non_finite_steps_on_cpu(migration_env):
  migration_env(MIGRATION_DEVICE="cpu")
  with tf.Graph().as_default(), tf.Session() as sess:
    var = tf.Variable(1.0)
    step = tf.train.create_global_step()
    optimizer = compat.LossScaleOptimizer(tf.train.GradientDescentOptimizer(1.0),
                                          compat.FixedLossScaleManager(8))
    train = optimizer.minimize(var * tf.constant(np.inf), step)
    sess.run(tf.global_variables_initializer())
    sess.run(train)
    assert sess.run([var, step]) == [1.0, 0]


def test_drop_remainder_only_changes_bools(migration_env, npu_double):
  migration_env(MIGRATION_DEVICE="npu")
  assert compat.drop_remainder(32) == 32, "a batch(x, 32) of something not a Dataset"


def test_bfloat16_casts_follow_the_compute_dtype(migration_env):
  settings = migration_env(MIGRATION_DEVICE="cpu")
  assert compat.bfloat16_or_float32() == tf.float32
  settings = migration_env(MIGRATION_PRECISION_MODE="allow_fp32_to_bf16")
  expected = precision.compute_dtype(settings.backend, "allow_fp32_to_bf16")
  assert compat.bfloat16_or_float32() == (tf.bfloat16 if expected == "bfloat16"
                                          else tf.float32)
