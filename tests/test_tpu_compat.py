"""A model_fn written for TPUEstimator runs unchanged through migration.compat (CPU and NPU)."""
import glob

import pytest
import tensorflow as tf_root
import tensorflow.compat.v1 as tf

from estimators import layers
from migration import compat
from tests import tiny_model

TPUEstimatorSpec = tf.estimator.tpu.TPUEstimatorSpec
summary_v2 = tf_root.compat.v2.summary


def make_tpu_model_fn(seen):
  """A TPU-style model_fn; records the batch sizes it saw and the pieces it ran."""

  def model_fn(features, labels, mode, params):
    seen.setdefault("batch_size", {})[mode] = params["batch_size"]
    logits = layers.dense(features["x"], tiny_model.NUM_CLASSES, name="logits")
    loss = tf.losses.sparse_softmax_cross_entropy(labels, logits)
    if mode == tf.estimator.ModeKeys.TRAIN:
      optimizer = tf.tpu.CrossShardOptimizer(tf.train.GradientDescentOptimizer(0.5))
      seen["optimizer"] = type(optimizer).__name__
      step = tf.train.get_global_step()
      train_op = optimizer.minimize(loss, step)

      def host_call_fn(global_step, host_loss):
        writer = summary_v2.create_file_writer(params["model_dir"])
        with writer.as_default(), summary_v2.record_if(True):
          summary_v2.scalar("host_loss", host_loss[0], step=global_step[0])
          return tf.summary.all_v2_summary_ops()

      host_call = (host_call_fn, [tf.reshape(step, [1]), tf.reshape(loss, [1])])
      return TPUEstimatorSpec(mode, loss=loss, train_op=train_op, host_call=host_call)

    def metric_fn(labels, logits):
      return {"accuracy": tf.metrics.accuracy(labels, tf.argmax(logits, 1))}

    def scaffold_fn():
      seen["scaffold_fn"] = True
      return tf.train.Scaffold()

    return TPUEstimatorSpec(mode, loss=loss, eval_metrics=(metric_fn, [labels, logits]),
                            scaffold_fn=scaffold_fn)

  return model_fn


def input_fn_recording(mode, seen):
  inner = tiny_model.blobs_input_fn(mode, 256)

  def input_fn(params):
    seen.setdefault("input_batch_size", {})[mode] = params["batch_size"]
    return inner(params)

  return input_fn


def _train_and_evaluate(estimator, seen):
  estimator.train(input_fn_recording(tf.estimator.ModeKeys.TRAIN, seen), max_steps=30)
  return estimator.evaluate(input_fn_recording(tf.estimator.ModeKeys.EVAL, seen))


def test_tpu_model_fn_trains_and_evaluates_on_cpu(tmp_path, migration_env):
  migration_env(MIGRATION_DEVICE="cpu")
  seen = {}
  config = tf.estimator.tpu.RunConfig(
      model_dir=str(tmp_path), tpu_config=tf.estimator.tpu.TPUConfig(iterations_per_loop=10))
  estimator = compat.TPUEstimator(
      model_fn=make_tpu_model_fn(seen), config=config, params={"model_dir": str(tmp_path)},
      use_tpu=True, train_batch_size=32, eval_batch_size=64)
  assert isinstance(estimator, tf.estimator.Estimator)
  results = _train_and_evaluate(estimator, seen)
  assert results["global_step"] == 30 and results["accuracy"] > 0.9
  assert seen["batch_size"] == {"train": 32, "eval": 64}
  assert seen["input_batch_size"] == {"train": 32, "eval": 64}
  assert seen["optimizer"] == "CrossShardOptimizer" and seen["scaffold_fn"]
  tags = set()
  for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
    for event in tf.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert "host_loss" in tags, "host_call summaries were not written"


def test_real_cross_shard_optimizer_restored_after_model_fn(tmp_path, migration_env):
  migration_env(MIGRATION_DEVICE="cpu")
  before = tf.tpu.CrossShardOptimizer
  seen = {}
  estimator = compat.TPUEstimator(
      model_fn=make_tpu_model_fn(seen), model_dir=str(tmp_path),
      params={"model_dir": str(tmp_path)}, train_batch_size=32, eval_batch_size=64)
  estimator.train(input_fn_recording(tf.estimator.ModeKeys.TRAIN, seen), max_steps=1)
  assert tf.tpu.CrossShardOptimizer is before


def test_tpu_model_fn_runs_on_npu_estimator(tmp_path, npu_double, migration_env):
  migration_env(MIGRATION_DEVICE="npu")
  seen = {}
  config = tf.estimator.tpu.RunConfig(
      model_dir=str(tmp_path), tpu_config=tf.estimator.tpu.TPUConfig(iterations_per_loop=1))
  estimator = compat.TPUEstimator(
      model_fn=make_tpu_model_fn(seen), config=config, params={"model_dir": str(tmp_path)},
      train_batch_size=32, eval_batch_size=64)
  assert type(estimator).__mro__[2].__name__ == "NPUEstimator"
  results = _train_and_evaluate(estimator, seen)
  assert results["global_step"] == 30 and results["accuracy"] > 0.9


def test_embedding_config_needs_a_tpu(migration_env):
  migration_env(MIGRATION_DEVICE="cpu")
  with pytest.raises(ValueError, match="embedding_config_spec"):
    compat.TPUEstimator(model_fn=lambda: None, embedding_config_spec=object())
