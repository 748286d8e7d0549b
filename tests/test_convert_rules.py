"""The TPU-to-runtime converter, rule by rule: a source in, the exact source out."""
import textwrap

import pytest

from migration.convert import rewrite

def code(text):
  """Dedented source without the leading newline of a triple-quoted string."""
  return textwrap.dedent(text).lstrip("\n")


def convert(before, after):
  """Converts `before`, checks the output is exactly `after`; returns the Result."""
  result = rewrite.convert_source(code(before))
  assert result.source == code(after)
  return result


def rules(result):
  return [change.rule for change in result.changes]


# --- renames ---


@pytest.mark.parametrize("before,after", [
    ("""
     import tensorflow.compat.v1 as tf

     estimator = tf.estimator.tpu.TPUEstimator(model_fn=model_fn, config=config)
     """, """
     import tensorflow.compat.v1 as tf
     import migration.compat

     estimator = migration.compat.TPUEstimator(model_fn=model_fn, config=config)
     """),
    ("""
     from tensorflow.compat.v1 import estimator as tf_estimator

     estimator = tf_estimator.tpu.TPUEstimator(model_fn=model_fn, config=config)
     """, """
     from tensorflow.compat.v1 import estimator as tf_estimator
     import migration.compat

     estimator = migration.compat.TPUEstimator(model_fn=model_fn, config=config)
     """),
    ("""
     from tensorflow.contrib import tpu as contrib_tpu

     estimator = contrib_tpu.TPUEstimator(model_fn=model_fn, config=config)
     """, """
     import migration.compat

     estimator = migration.compat.TPUEstimator(model_fn=model_fn, config=config)
     """),
    ("""
     import tensorflow_estimator as tfe

     estimator = tfe.estimator.tpu.TPUEstimator(model_fn=model_fn, config=config)
     """, """
     import tensorflow_estimator as tfe
     import migration.compat

     estimator = migration.compat.TPUEstimator(model_fn=model_fn, config=config)
     """),
    ("""
     from tensorflow_estimator.python.estimator.tpu import tpu_estimator

     estimator = tpu_estimator.TPUEstimator(model_fn=model_fn, config=config)
     """, """
     import migration.compat

     estimator = migration.compat.TPUEstimator(model_fn=model_fn, config=config)
     """),
    ("""
     from tensorflow.contrib.tpu import TPUEstimator

     estimator = TPUEstimator(model_fn=model_fn, config=config)
     """, """
     import migration.compat

     estimator = migration.compat.TPUEstimator(model_fn=model_fn, config=config)
     """),
], ids=["tf.compat.v1", "tf_estimator", "contrib_tpu", "tensorflow_estimator",
        "tpu_estimator_module", "bare_name"])
def test_tpu_estimator_every_spelling(before, after):
  result = convert(before, after)
  assert "rename" in rules(result) and not result.problems


def test_tpu_only_arguments_dropped():
  result = convert("""
      import tensorflow.compat.v1 as tf


      def build(model_fn, config):
        return tf.estimator.tpu.TPUEstimator(
            model_fn=model_fn, config=config, use_tpu=True,
            train_batch_size=32, export_to_tpu=False, batch_axis=(0, 0))
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat


      def build(model_fn, config):
        return migration.compat.TPUEstimator(
            model_fn=model_fn, config=config, use_tpu=True,
            train_batch_size=32)
      """)
  dropped = [c.before for c in result.changes if c.rule == "tpu-only-argument"]
  assert dropped == ["export_to_tpu=False", "batch_axis=(0, 0)"]


def test_plain_estimator():
  convert("""
      import tensorflow.compat.v1 as tf

      estimator = tf.estimator.Estimator(model_fn=model_fn, model_dir=model_dir)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      estimator = migration.compat.Estimator(model_fn=model_fn, model_dir=model_dir)
      """)


def test_tpu_run_config_tpu_config_and_input_pipeline_config():
  result = convert("""
      import tensorflow.compat.v1 as tf

      config = tf.estimator.tpu.RunConfig(
          cluster=cluster,
          model_dir=FLAGS.model_dir,
          tpu_config=tf.estimator.tpu.TPUConfig(
              iterations_per_loop=FLAGS.iterations_per_loop,
              per_host_input_for_training=tf.estimator.tpu.InputPipelineConfig.PER_HOST_V2))
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      config = migration.compat.RunConfig(
          cluster=cluster,
          model_dir=FLAGS.model_dir,
          tpu_config=migration.compat.TPUConfig(
              iterations_per_loop=FLAGS.iterations_per_loop,
              per_host_input_for_training=migration.compat.InputPipelineConfig.PER_HOST_V2))
      """)
  assert [c.after for c in result.changes if c.rule == "rename"] == [
      "migration.compat.RunConfig", "migration.compat.TPUConfig",
      "migration.compat.InputPipelineConfig"]


@pytest.mark.parametrize("before,after", [
    ("""
     import tensorflow.compat.v1 as tf

     cluster = tf.distribute.cluster_resolver.TPUClusterResolver(
         FLAGS.tpu, zone=FLAGS.tpu_zone, project=FLAGS.gcp_project)
     """, """
     import tensorflow.compat.v1 as tf
     import migration.compat

     cluster = migration.compat.TPUClusterResolver(
         FLAGS.tpu, zone=FLAGS.tpu_zone, project=FLAGS.gcp_project)
     """),
    ("""
     import tensorflow as tf

     cluster = tf.contrib.cluster_resolver.TPUClusterResolver(FLAGS.tpu)
     """, """
     import tensorflow as tf
     import migration.compat

     cluster = migration.compat.TPUClusterResolver(FLAGS.tpu)
     """),
], ids=["distribute", "contrib"])
def test_tpu_cluster_resolver(before, after):
  convert(before, after)


def test_tpu_estimator_spec():
  convert("""
      import tensorflow.compat.v1 as tf


      def model_fn(features, labels, mode, params):
        loss = compute_loss(features, labels)
        return tf.estimator.tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat


      def model_fn(features, labels, mode, params):
        loss = compute_loss(features, labels)
        return migration.compat.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)
      """)


def test_cross_shard_optimizer():
  convert("""
      import tensorflow.compat.v1 as tf

      optimizer = tf.train.MomentumOptimizer(0.1, 0.9)
      if FLAGS.use_tpu:
        optimizer = tf.tpu.CrossShardOptimizer(optimizer)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      optimizer = tf.train.MomentumOptimizer(0.1, 0.9)
      if FLAGS.use_tpu:
        optimizer = migration.compat.CrossShardOptimizer(optimizer)
      """)


def test_bfloat16_scope():
  convert("""
      import tensorflow.compat.v1 as tf

      with tf.tpu.bfloat16_scope():
        logits = network(images)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      with migration.compat.bfloat16_scope():
        logits = network(images)
      """)


def test_cross_replica_sum():
  convert("""
      from tensorflow.python.tpu.ops import tpu_ops

      total = tpu_ops.cross_replica_sum(local_sum)
      """, """
      import migration.compat

      total = migration.compat.cross_replica_sum(local_sum)
      """)


def test_get_tpu_context():
  convert("""
      from tensorflow.python.tpu import tpu_function

      num_shards = tpu_function.get_tpu_context().number_of_shards
      """, """
      import migration.compat

      num_shards = migration.compat.get_tpu_context().number_of_shards
      """)


def test_outside_compilation():
  convert("""
      import tensorflow.compat.v1 as tf

      tf.tpu.outside_compilation(write_summaries, loss)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      migration.compat.outside_compilation(write_summaries, loss)
      """)


def test_async_checkpoint_hook():
  convert("""
      from tensorflow.contrib.tpu.python.tpu import async_checkpoint

      hooks = [async_checkpoint.AsyncCheckpointSaverHook(
          checkpoint_dir=FLAGS.model_dir, save_steps=1000)]
      """, """
      import migration.compat

      hooks = [migration.compat.AsyncCheckpointSaverHook(
          checkpoint_dir=FLAGS.model_dir, save_steps=1000)]
      """)


def test_tpu_profiler_hook_from_a_user_module():
  convert("""
      from common import tpu_profiler_hook

      hooks.append(tpu_profiler_hook.TPUProfilerHook(save_steps=100, output_dir=model_dir))
      """, """
      from common import tpu_profiler_hook
      import migration.compat

      hooks.append(migration.compat.TPUProfilerHook(save_steps=100, output_dir=model_dir))
      """)


@pytest.mark.parametrize("module,arguments,replacement", [
    ("tensorflow.compat.v1", "keep_prob", "dropout_v1"),
    ("tensorflow.compat.v2", "rate=0.1", "dropout_v2"),
    ("tensorflow", "0.5", "dropout"),
], ids=["v1", "v2", "installed"])
def test_dropout_by_api_flavour(module, arguments, replacement):
  convert("""
      import %s as tf

      net = tf.nn.dropout(net, %s)
      """ % (module, arguments), """
      import %s as tf
      import migration.compat

      net = migration.compat.%s(net, %s)
      """ % (module, replacement, arguments))


def test_renamed_reference_as_later_argument_keeps_its_place():
  convert("""
      import tensorflow.compat.v1 as tf


      def regularize(net):
        return apply_fn(net, tf.nn.dropout)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat


      def regularize(net):
        return apply_fn(net, migration.compat.dropout_v1)
      """)


# --- arguments ---


def test_batch_gets_drop_remainder():
  result = convert("""
      import tensorflow.compat.v1 as tf


      def input_fn(params):
        dataset = tf.data.TFRecordDataset(params["files"])
        dataset = dataset.batch(params["batch_size"])
        return dataset.prefetch(4)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat


      def input_fn(params):
        dataset = tf.data.TFRecordDataset(params["files"])
        dataset = dataset.batch(params["batch_size"], drop_remainder=migration.compat.drop_remainder(False))
        return dataset.prefetch(4)
      """)
  assert rules(result) == ["add-import", "drop-remainder"]


def test_batch_with_drop_remainder_true_unchanged():
  source = code("""
      import tensorflow.compat.v1 as tf

      dataset = tf.data.TFRecordDataset(files).batch(batch_size, drop_remainder=True)
      """)
  result = rewrite.convert_source(source)
  assert result.source == source and not result.changes


def test_batch_with_keyword_drop_remainder_wrapped():
  convert("""
      dataset = dataset.batch(32, drop_remainder=is_training)
      """, """
      import migration.compat
      dataset = dataset.batch(32, drop_remainder=migration.compat.drop_remainder(is_training))
      """)


def test_batch_positional_drop_remainder_wrapped_in_place():
  convert("""
      import tensorflow.compat.v1 as tf

      dataset = dataset.batch(64, False)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      dataset = dataset.batch(64, migration.compat.drop_remainder(False))
      """)


def test_train_batch_unchanged():
  source = code("""
      import tensorflow.compat.v1 as tf

      images, labels = tf.train.batch([image, label], batch_size=32, num_threads=4)
      """)
  result = rewrite.convert_source(source)
  assert result.source == source and not result.changes and not result.problems


def test_map_and_batch_gets_drop_remainder():
  convert("""
      import tensorflow.compat.v1 as tf

      dataset = dataset.apply(
          tf.data.experimental.map_and_batch(parser, batch_size))
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      dataset = dataset.apply(
          tf.data.experimental.map_and_batch(parser, batch_size, drop_remainder=migration.compat.drop_remainder(False)))
      """)


def test_shard_by_rank():
  result = convert("""
      import tensorflow.compat.v1 as tf

      dataset = tf.data.Dataset.list_files(pattern, shuffle=False)
      dataset = dataset.shard(num_hosts, host_index)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      dataset = tf.data.Dataset.list_files(pattern, shuffle=False)
      dataset = dataset.shard(migration.compat.shard_count(num_hosts), migration.compat.shard_index(host_index))
      """)
  assert rules(result) == ["add-import", "shard-by-rank", "shard-by-rank"]


def test_session_config():
  convert("""
      import tensorflow.compat.v1 as tf

      with tf.Session() as sess:
        sess.run(init_op)
      with tf.Session(config=session_config) as sess:
        sess.run(train_op)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      with tf.Session(config=migration.compat.session_config()) as sess:
        sess.run(init_op)
      with tf.Session(config=migration.compat.session_config(session_config)) as sess:
        sess.run(train_op)
      """)


def test_monitored_training_session_config_added():
  convert("""
      import tensorflow.compat.v1 as tf

      with tf.train.MonitoredTrainingSession(checkpoint_dir=model_dir, hooks=hooks) as sess:
        sess.run(train_op)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      with tf.train.MonitoredTrainingSession(checkpoint_dir=model_dir, hooks=hooks, config=migration.compat.session_config()) as sess:
        sess.run(train_op)
      """)


def test_session_positional_config_wrapped_in_place():
  convert("""
      import tensorflow.compat.v1 as tf

      sess = tf.Session("", graph, session_config)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      sess = tf.Session("", graph, migration.compat.session_config(session_config))
      """)


def test_canned_estimator_run_config():
  result = convert("""
      import tensorflow.compat.v1 as tf

      classifier = tf.estimator.DNNClassifier(
          config=run_config, hidden_units=[64, 32], feature_columns=columns)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      classifier = tf.estimator.DNNClassifier(
          config=migration.compat.run_config(run_config), hidden_units=[64, 32], feature_columns=columns)
      """)
  assert rules(result) == ["add-import", "run-config"]


def test_canned_estimator_config_keeps_its_place():
  convert("""
      import tensorflow.compat.v1 as tf

      classifier = tf.estimator.DNNClassifier(
          hidden_units=[64, 32], feature_columns=columns, config=run_config)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      classifier = tf.estimator.DNNClassifier(
          hidden_units=[64, 32], feature_columns=columns, config=migration.compat.run_config(run_config))
      """)


def test_device():
  convert("""
      import tensorflow.compat.v1 as tf

      with tf.device("/device:TPU:0"):
        x = tf.identity(y)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      with tf.device(migration.compat.device("/device:TPU:0")):
        x = tf.identity(y)
      """)


def test_contrib_mixed_precision_loss_scale():
  convert("""
      import tensorflow.compat.v1 as tf

      manager = tf.contrib.mixed_precision.ExponentialUpdateLossScaleManager(
          init_loss_scale=2**32, incr_every_n_steps=1000)
      fixed = tf.contrib.mixed_precision.FixedLossScaleManager(128)
      optimizer = tf.contrib.mixed_precision.LossScaleOptimizer(optimizer, manager)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      manager = migration.compat.ExponentialUpdateLossScaleManager(
          init_loss_scale=2**32, incr_every_n_steps=1000)
      fixed = migration.compat.FixedLossScaleManager(128)
      optimizer = migration.compat.LossScaleOptimizer(optimizer, manager)
      """)


def test_horovod():
  result = convert("""
      import horovod.tensorflow as hvd
      import tensorflow.compat.v1 as tf

      hvd.init()
      optimizer = hvd.DistributedOptimizer(tf.train.AdamOptimizer(1e-3 * hvd.size()))
      hooks = [hvd.BroadcastGlobalVariablesHook(0)]
      """, """
      import tensorflow.compat.v1 as tf
      import migration.horovod

      migration.horovod.init()
      optimizer = migration.horovod.DistributedOptimizer(tf.train.AdamOptimizer(1e-3 * migration.horovod.size()))
      hooks = [migration.horovod.BroadcastGlobalVariablesHook(0)]
      """)
  assert rules(result).count("remove-import") == 1
  assert rules(result).count("add-import") == 1


# --- imports ---


def test_compat_import_added_once_after_future_and_leading_imports():
  result = convert('''
      """Trains a model."""
      from __future__ import absolute_import
      from __future__ import print_function

      import os

      import tensorflow.compat.v1 as tf

      FLAGS = None


      def build(model_fn):
        config = tf.estimator.tpu.RunConfig(model_dir=os.environ["MODEL_DIR"])
        return tf.estimator.tpu.TPUEstimator(model_fn=model_fn, config=config)
      ''', '''
      """Trains a model."""
      from __future__ import absolute_import
      from __future__ import print_function

      import os

      import tensorflow.compat.v1 as tf
      import migration.compat

      FLAGS = None


      def build(model_fn):
        config = migration.compat.RunConfig(model_dir=os.environ["MODEL_DIR"])
        return migration.compat.TPUEstimator(model_fn=model_fn, config=config)
      ''')
  assert rules(result).count("add-import") == 1


def test_compat_import_after_future_import_only():
  convert('''
      """Input pipeline."""
      from __future__ import division
      dataset = make_dataset(FLAGS.data_dir).batch(8)
      ''', '''
      """Input pipeline."""
      from __future__ import division
      import migration.compat
      dataset = make_dataset(FLAGS.data_dir).batch(8, drop_remainder=migration.compat.drop_remainder(False))
      ''')


def test_compat_import_not_repeated_when_present():
  convert("""
      import tensorflow.compat.v1 as tf
      import migration.compat

      net = migration.compat.dropout_v1(net, keep_prob)
      optimizer = tf.tpu.CrossShardOptimizer(optimizer)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      net = migration.compat.dropout_v1(net, keep_prob)
      optimizer = migration.compat.CrossShardOptimizer(optimizer)
      """)


def test_no_import_added_when_nothing_changed():
  source = code("""
      import tensorflow.compat.v1 as tf

      logits = tf.layers.dense(tf.nn.relu(features), 10)
      """)
  result = rewrite.convert_source(source)
  assert result.source == source and not result.changes


def test_unused_tpu_import_removed_with_its_comment_kept():
  result = convert("""
      import tensorflow.compat.v1 as tf
      # TPU helpers.
      from tensorflow.contrib import tpu as contrib_tpu

      optimizer = contrib_tpu.CrossShardOptimizer(tf.train.AdamOptimizer(0.001))
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat
      # TPU helpers.

      optimizer = migration.compat.CrossShardOptimizer(tf.train.AdamOptimizer(0.001))
      """)
  assert [c.line for c in result.changes if c.rule == "remove-import"] == [3]


def test_unused_tpu_import_in_try_becomes_pass():
  convert("""
      import tensorflow.compat.v1 as tf

      try:
        from tensorflow.contrib import tpu as contrib_tpu
      except ImportError:
        pass

      optimizer = contrib_tpu.CrossShardOptimizer(optimizer)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      try:
        pass
      except ImportError:
        pass

      optimizer = migration.compat.CrossShardOptimizer(optimizer)
      """)


def test_tpu_import_still_used_is_kept():
  result = convert("""
      from tensorflow.python.tpu import tpu
      from tensorflow.python.tpu import tpu_function

      num_shards = tpu_function.get_tpu_context().number_of_shards
      outputs = tpu.rewrite(computation, inputs)
      """, """
      from tensorflow.python.tpu import tpu
      import migration.compat

      num_shards = migration.compat.get_tpu_context().number_of_shards
      outputs = tpu.rewrite(computation, inputs)
      """)
  assert [(p.line, p.api, p.manual) for p in result.problems] == [(5, "tpu.rewrite", True)]


def test_non_tpu_unused_import_kept():
  convert("""
      import os
      import tensorflow.compat.v1 as tf

      from common import tpu_profiler_hook

      hooks = [tpu_profiler_hook.TPUProfilerHook(save_steps=100, output_dir="/tmp")]
      """, """
      import os
      import tensorflow.compat.v1 as tf

      from common import tpu_profiler_hook
      import migration.compat

      hooks = [migration.compat.TPUProfilerHook(save_steps=100, output_dir="/tmp")]
      """)


# --- problems ---


def test_unsupported_tpu_apis_reported_and_left_alone():
  source = code("""
      import tensorflow.compat.v1 as tf

      outputs = tf.tpu.replicate(computation, inputs)
      table = tf.tpu.experimental.embedding.TableConfig(vocabulary_size=100, dim=8)
      """)
  result = rewrite.convert_source(source)
  assert result.source == source and not result.changes
  assert [(p.line, p.api, p.manual) for p in result.problems] == [
      (3, "tf.tpu.replicate", True),
      (4, "tf.tpu.experimental.embedding.TableConfig", False)]
  assert all(p.why for p in result.problems)


# --- idempotence ---

MANY_RULES = """
    \"\"\"A TPU ResNet training script.\"\"\"
    from __future__ import absolute_import

    import horovod.tensorflow as hvd
    import tensorflow.compat.v1 as tf
    from tensorflow.contrib import tpu as contrib_tpu
    from tensorflow.python.tpu import tpu_function


    def input_fn(params):
      dataset = tf.data.TFRecordDataset(params["files"])
      dataset = dataset.shard(hvd.size(), hvd.rank())
      dataset = dataset.apply(tf.data.experimental.map_and_batch(
          parse, params["batch_size"], drop_remainder=True))
      return dataset.batch(8)


    def model_fn(features, labels, mode, params):
      num_shards = tpu_function.get_tpu_context().number_of_shards
      with tf.tpu.bfloat16_scope():
        net = tf.nn.dropout(features, 0.9)
      loss = tf.tpu.cross_replica_sum(tf.reduce_sum(net)) / num_shards
      optimizer = hvd.DistributedOptimizer(tf.train.MomentumOptimizer(0.1, 0.9))
      optimizer = contrib_tpu.CrossShardOptimizer(optimizer)
      train_op = optimizer.minimize(loss, tf.train.get_global_step())
      return tf.estimator.tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)


    def main(_):
      hvd.init()
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(FLAGS.tpu)
      config = tf.estimator.tpu.RunConfig(
          cluster=resolver,
          tpu_config=tf.estimator.tpu.TPUConfig(
              per_host_input_for_training=tf.estimator.tpu.InputPipelineConfig.PER_HOST_V2))
      estimator = tf.estimator.tpu.TPUEstimator(
          model_fn=model_fn, config=config, export_to_tpu=False)
      with tf.device("/device:CPU:0"):
        estimator.train(input_fn, max_steps=100)
      with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
"""


def test_converting_twice_changes_nothing():
  first = rewrite.convert_source(code(MANY_RULES))
  assert {"rename", "tpu-only-argument", "drop-remainder", "shard-by-rank", "device",
          "session-config", "remove-import", "add-import"} <= set(rules(first))
  assert not first.problems
  assert first.source.count("import migration.compat\n") == 1
  assert first.source.count("import migration.horovod\n") == 1
  assert "hvd" not in first.source and "contrib_tpu" not in first.source
  second = rewrite.convert_source(first.source)
  assert second.source == first.source
  assert not second.changes and not second.problems


def test_converted_tpu_profiler_hook_converts_to_no_changes():
  first = rewrite.convert_source(code("""
      from common import tpu_profiler_hook

      hooks = [tpu_profiler_hook.TPUProfilerHook(save_steps=100, output_dir="/tmp")]
      """))
  second = rewrite.convert_source(first.source)
  assert second.source == first.source and not second.changes


# --- untouched ---


def test_file_without_tpu_api_is_byte_identical():
  source = code("""
      # Copyright 2019 Someone.
      \"\"\"Plain TF1 code.\"\"\"
      import tensorflow.compat.v1 as tf  # the v1 API
      import numpy  as  np


      def model(x ,  training):
          # four-space indented, on purpose
          y = tf.layers.dense( x, 10 )  ;  z = tf.nn.relu(y)
          values = [1,
                        2, 3,]
          return tf.train.batch([z], 32) if training else np.asarray(values)
      """)
  source += "x = 1  # no newline at the end"
  result = rewrite.convert_source(source)
  assert result.source == source
  assert not result.changes and not result.problems


def test_comments_and_spacing_survive_conversion():
  convert('''
      # Copyright 2019 The TensorFlow Authors.
      """Model function."""
      import tensorflow.compat.v1 as tf

      SIZES   = {"train" :  1281167,   "eval": 50000}  # odd  spacing


      def model_fn(features,labels,mode,params):  # pylint: disable=unused-argument
        # Shard the optimizer across cores.
        optimizer = tf.tpu.CrossShardOptimizer(  # wraps
            tf.train.GradientDescentOptimizer(0.1))   # inner
        return optimizer
      ''', '''
      # Copyright 2019 The TensorFlow Authors.
      """Model function."""
      import tensorflow.compat.v1 as tf
      import migration.compat

      SIZES   = {"train" :  1281167,   "eval": 50000}  # odd  spacing


      def model_fn(features,labels,mode,params):  # pylint: disable=unused-argument
        # Shard the optimizer across cores.
        optimizer = migration.compat.CrossShardOptimizer(  # wraps
            tf.train.GradientDescentOptimizer(0.1))   # inner
        return optimizer
      ''')


# --- errors ---


def test_python2_source_is_a_parse_error():
  source = code('''
      """Python 2."""
      import tensorflow as tf


      def main():
        print "training"
      ''')
  with pytest.raises(rewrite.ParseError) as raised:
    rewrite.convert_source(source)
  assert raised.value.line == 6
  assert "print" in raised.value.message


# --- regressions found on further tensorflow/tpu and BERT code ---


def test_relative_and_star_imports_are_kept():
  result = convert("""
      from . import helper
      from .layers import conv
      from os.path import *
      import tensorflow.compat.v1 as tf

      opt = tf.tpu.CrossShardOptimizer(helper.optimizer(conv, join))
      """, """
      from . import helper
      from .layers import conv
      from os.path import *
      import tensorflow.compat.v1 as tf
      import migration.compat

      opt = migration.compat.CrossShardOptimizer(helper.optimizer(conv, join))
      """)
  assert "remove-import" not in rules(result)


@pytest.mark.parametrize("module", [
    "tensorflow.contrib.tpu.python.tpu.tpu_optimizer", "tensorflow.python.tpu.tpu_optimizer"])
def test_internal_tpu_optimizer_module(module):
  convert("""
      from %s import tpu_optimizer

      opt = tpu_optimizer.CrossShardOptimizer(opt)
      """ % module.rsplit(".", 1)[0], """
      import migration.compat

      opt = migration.compat.CrossShardOptimizer(opt)
      """)


def test_contrib_tpu_tpu_spelling():
  convert("""
      from tensorflow.contrib import tpu as contrib_tpu

      spec = contrib_tpu.tpu.TPUEstimatorSpec(mode=mode, loss=loss)
      """, """
      import migration.compat

      spec = migration.compat.TPUEstimatorSpec(mode=mode, loss=loss)
      """)


def test_tpu_classes_used_as_classes_are_reported_not_renamed():
  source = code("""
      import tensorflow.compat.v1 as tf


      class GANEstimator(tf.estimator.tpu.TPUEstimator):
        pass


      def check(spec):
        assert isinstance(spec, (dict, tf.estimator.tpu.TPUEstimatorSpec))
        return tf.estimator.tpu.TPUEstimatorSpec(mode="train", loss=spec)
      """)
  result = rewrite.convert_source(source)
  assert "class GANEstimator(tf.estimator.tpu.TPUEstimator):" in result.source
  assert "isinstance(spec, (dict, tf.estimator.tpu.TPUEstimatorSpec))" in result.source
  assert "return migration.compat.TPUEstimatorSpec(" in result.source
  assert [(p.line, p.api, p.manual) for p in result.problems] == [
      (4, "tf.estimator.tpu.TPUEstimator", True),
      (9, "tf.estimator.tpu.TPUEstimatorSpec", True)]


def test_import_goes_before_the_first_module_level_statement():
  convert("""
      import tensorflow as tf
      RESOLVER = tf.distribute.cluster_resolver.TPUClusterResolver("")
      import os
      """, """
      import tensorflow as tf
      import migration.compat
      RESOLVER = migration.compat.TPUClusterResolver("")
      import os
      """)


def test_import_not_inserted_into_a_semicolon_line():
  result = rewrite.convert_source(code("""
      import os
      import tensorflow as tf; opt = tf.tpu.CrossShardOptimizer(opt)
      """))
  compile(result.source, "converted", "exec")
  assert result.source.startswith("import os\nimport migration.compat\n")


def test_padded_batch_gets_drop_remainder():
  convert("""
      dataset = dataset.padded_batch(8, shapes)
      """, """
      import migration.compat
      dataset = dataset.padded_batch(8, shapes, drop_remainder=migration.compat.drop_remainder(False))
      """)


def test_star_import_from_a_tpu_module_is_reported():
  result = rewrite.convert_source("from tensorflow.contrib.tpu import *\n\nx = TPUEstimator()\n")
  assert result.source == "from tensorflow.contrib.tpu import *\n\nx = TPUEstimator()\n"
  assert [(p.line, p.api) for p in result.problems] == [
      (1, "from tensorflow.contrib.tpu import *")]


def test_hand_written_bfloat16_casts_follow_the_run():
  result = convert("""
      import tensorflow.compat.v1 as tf

      images = tf.cast(images, dtype=tf.bfloat16)
      pixels = tf.image.convert_image_dtype(image, tf.bfloat16 if half else tf.float32)


      def getter(getter, *args, **kwargs):
        if kwargs['dtype'] == tf.bfloat16:
          return tf.cast(getter(*args, **kwargs), tf.bfloat16)
      """, """
      import tensorflow.compat.v1 as tf
      import migration.compat

      images = tf.cast(images, dtype=migration.compat.bfloat16_or_float32())
      pixels = tf.image.convert_image_dtype(image, migration.compat.bfloat16_or_float32() if half else tf.float32)


      def getter(getter, *args, **kwargs):
        if kwargs['dtype'] == tf.bfloat16:
          return tf.cast(getter(*args, **kwargs), migration.compat.bfloat16_or_float32())
      """)
  assert rules(result).count("compute-dtype") == 3
