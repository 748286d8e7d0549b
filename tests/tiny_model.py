"""A tiny registered model for testing the run loop and runtime: 4 Gaussian blobs."""
import numpy as np
import tensorflow.compat.v1 as tf
from absl import flags

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


def blobs_input_fn(mode, num_examples, label_shift=0):
  def _input_fn(params):
    training = mode == tf.estimator.ModeKeys.TRAIN
    x, y = make_blobs(num_examples, seed=0 if training else 1)
    y = y + label_shift
    ds = tf.data.Dataset.from_tensor_slices(({"x": x}, y))
    if training:
      ds = ds.repeat().shuffle(256)
    return ds.batch(params["batch_size"], drop_remainder=training)
  return _input_fn


@registry.register("tiny")
class TinyModel(registry.Model):

  headline_metric = ("accuracy", "accuracy on the blobs' evaluation split")

  def define_flags(self):
    flags.DEFINE_float("tiny_learning_rate", 0.1, "Learning rate.")
    flags.DEFINE_integer("tiny_examples", 256, "Examples per split.")
    flags.DEFINE_integer("tiny_hidden", 16, "Hidden units (another value: another model).")
    flags.DEFINE_integer("tiny_label_shift", 0, "Added to every label (bad data on demand).")
    flags.FLAGS.set_default("train_batch_size", 32)
    flags.FLAGS.set_default("eval_batch_size", 64)

  def params(self, flags_):
    return {"learning_rate": flags_.tiny_learning_rate, "hidden": flags_.tiny_hidden}

  def model_fn(self, features, labels, mode, params):
    return tiny_model_fn(features, labels, mode, params)

  def input_fn(self, flags_, mode):
    return blobs_input_fn(mode, flags_.tiny_examples, flags_.tiny_label_shift)

  def train_examples(self, flags_):
    return flags_.tiny_examples

  def default_train_steps(self, flags_):
    return 20

  def serving_input_receiver_fn(self, flags_):
    def _fn():
      x = tf.placeholder(tf.float32, [None, DIM], name="x")
      return tf.estimator.export.ServingInputReceiver({"x": x}, {"x": x})
    return _fn
