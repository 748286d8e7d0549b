"""A tiny registered model for testing the run loop and runtime: 4 Gaussian blobs."""
import numpy as np
import tensorflow.compat.v1 as tf

from estimators import layers
from estimators import registry
from migration import optimizers

NUM_CLASSES = 4
DIM = 8


def make_blobs(num_examples, seed):
  rng = np.random.RandomState(seed)
  centers = np.eye(NUM_CLASSES, DIM, dtype=np.float32) * 3.0
  labels = rng.randint(0, NUM_CLASSES, size=num_examples).astype(np.int32)
  x = centers[labels] + rng.normal(0, 0.5, size=(num_examples, DIM)).astype(np.float32)
  return x, labels


def tiny_model_fn(features, labels, mode, params):
  training = mode == tf.estimator.ModeKeys.TRAIN
  hidden = tf.nn.relu(layers.dense(features["x"], params.get("hidden", 16), name="hidden"))
  hidden = layers.dropout(hidden, params.get("dropout", 0.0), training)
  logits = layers.dense(hidden, NUM_CLASSES, name="logits")
  predictions = {"classes": tf.argmax(logits, -1), "probabilities": tf.nn.softmax(logits)}
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(mode, predictions=predictions, export_outputs={
        "serving_default": tf.estimator.export.PredictOutput(predictions)})
  loss = tf.losses.sparse_softmax_cross_entropy(labels, logits)
  train_op = None
  if training:
    opt = optimizers.wrap_optimizer(
        tf.train.GradientDescentOptimizer(params["learning_rate"]), params)
    train_op = opt.minimize(loss, tf.train.get_or_create_global_step())
  metrics = {"accuracy": tf.metrics.accuracy(labels, predictions["classes"])}
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                    eval_metric_ops=metrics)


def blobs_input_fn(mode, num_examples, label_shift=0, shuffle=True):
  def _input_fn(params, input_context=None):
    training = mode == tf.estimator.ModeKeys.TRAIN
    x, y = make_blobs(num_examples, seed=0 if training else 1)
    y = y + label_shift
    ds = tf.data.Dataset.from_tensor_slices(({"x": x}, y))
    if input_context is not None:
      ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
      ds = ds.repeat()
      if shuffle:
        ds = ds.shuffle(256)
    return ds.batch(params["batch_size"], drop_remainder=training)
  return _input_fn


@registry.register
class TinyModel(registry.Model):

  name = "tiny"
  headline_metric = ("accuracy", "accuracy on the blobs' evaluation split")
  flags = (
      registry.Flag("tiny_learning_rate", "float", 0.1, "Learning rate.", registry.POSITIVE),
      registry.Flag("tiny_examples", "integer", 256, "Examples per split.",
                    registry.at_least(1)),
      registry.Flag("tiny_hidden", "integer", 16, "Hidden units (another value: another "
                    "model).", registry.at_least(1)),
      registry.Flag("tiny_label_shift", "integer", 0, "Added to every label (bad data on "
                    "demand)."),
      registry.Flag("tiny_shuffle", "bool", True, "Shuffle the training examples (off: "
                    "the same batches every run)."),
  )
  run_flag_defaults = {"train_batch_size": 32, "eval_batch_size": 64}

  def configure(self, flag_values, run):
    return run.replace(
        learning_rate=flag_values.tiny_learning_rate, hidden=flag_values.tiny_hidden,
        examples=flag_values.tiny_examples, label_shift=flag_values.tiny_label_shift,
        shuffle=flag_values.tiny_shuffle,
        train_steps=registry.train_steps(
            flag_values, lambda: flag_values.tiny_examples / float(run.train_batch_size), 20))

  def model_fn(self, features, labels, mode, config):
    return tiny_model_fn(features, labels, mode, config)

  def input_fn(self, config, mode):
    return blobs_input_fn(mode, config.examples, config.label_shift, config.shuffle)

  def serving_input_receiver_fn(self, config):
    def _fn():
      x = tf.placeholder(tf.float32, [None, DIM], name="x")
      return tf.estimator.export.ServingInputReceiver({"x": x}, {"x": x})
    return _fn
