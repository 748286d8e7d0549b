"""What the ViT and BiT fine-tuning models share: flags, data sources, the classifier spec.

- `define_flags()`: the transfer-learning flags both models use (defined once per
  process, so both models can be loaded side by side). A flag left at None means "what
  the model's recipe says"; the recipe is resolved in each model's `params`.
- `make_source(dataset, data_dir)`: tf_flowers / cifar10 / cifar100 (TFDS layout) or an
  ImageNet-format folder (input_fns.image_sources).
- `classifier_spec(...)`: softmax cross-entropy (integer or soft MixUp labels), SGD with
  momentum through `migration.optimizers.wrap_optimizer`, optional global-norm clipping,
  UPDATE_OPS as control dependencies of the train op, accuracy (+ top-5 when there are
  more than 5 classes: with 5 or fewer it is always 100 %), predictions and a serving
  signature;
- `fine_tuning_spec(...)`: the whole model_fn body around a network: builds the logits,
  loads the `.npz` into the network's variables through the Scaffold when
  params["weights"] is set, then `classifier_spec`.
"""
from absl import flags
import tensorflow.compat.v1 as tf

from estimators import registry

from input_fns import cifar
from input_fns import image_sources
from input_fns import tf_flowers
from migration import optimizers

DATASETS = ("tf_flowers", "cifar10", "cifar100", "image_folder")
TOP_K = 5
# Datasets whose images are smaller than 96x96 (BiT-HyperRule's small-image resolution).
SMALL_IMAGE_DATASETS = ("cifar10", "cifar100")


def _define_once(define, name, default, help_text, **kwargs):
  if name not in flags.FLAGS:
    define(name, default, help=help_text, **kwargs)


def define_flags():
  """The fine-tuning flags shared by `vit` and `bit` (None = the model's recipe)."""
  _define_once(flags.DEFINE_enum, "dataset", "tf_flowers",
               "tf_flowers: TFDS tf_flowers 3.0.1 under --data_dir (train[:85%] / "
               "train[85%:]); cifar10, cifar100: tfrecords made by input_fns/cifar.py "
               "under --data_dir; image_folder: ImageNet-format shards made by "
               "tools/build_image_tfrecords.py in --data_dir.", enum_values=DATASETS)
  _define_once(flags.DEFINE_string, "weights", None,
               "Official pretrained .npz file; loaded into a fresh --model_dir only (a run "
               "that resumes from a checkpoint keeps the checkpoint). Empty: from scratch.")
  _define_once(flags.DEFINE_boolean, "reset_head", False,
               "Zero the head even when the weights file has as many classes.")
  _define_once(flags.DEFINE_float, "learning_rate", None, "Peak learning rate.")
  _define_once(flags.DEFINE_integer, "warmup_steps", None, "Linear warm-up steps.")
  _define_once(flags.DEFINE_float, "grad_clip_norm", None,
               "Clip gradients to this global norm (0: off).")
  _define_once(flags.DEFINE_float, "momentum", 0.9, "SGD momentum.")
  _define_once(flags.DEFINE_float, "mixup_alpha", None, "MixUp Beta(alpha, alpha); 0: off.")
  _define_once(flags.DEFINE_integer, "image_size", None,
               "Training/eval resolution (the crop size).")
  _define_once(flags.DEFINE_integer, "num_train_examples", None,
               "Training examples (default: counted from the data).")
  _define_once(flags.DEFINE_integer, "shuffle_buffer", 10000, "Training shuffle buffer.")


def pick(value, recipe_value):
  """The flag value when it was given (not None), else the recipe's."""
  return recipe_value if value is None else value


def make_source(dataset, data_dir):
  """The labelled-image source of `dataset` under `data_dir` (ValueError if absent)."""
  if dataset == "tf_flowers":
    return image_sources.TfdsSource(tf_flowers.dataset(data_dir))
  if dataset in cifar.VARIANTS:
    return image_sources.TfdsSource(cifar.dataset(data_dir, dataset))
  if dataset == "image_folder":
    return image_sources.ImageFolderSource(data_dir)
  raise ValueError("--dataset=%s is not one of %s" % (dataset, ", ".join(DATASETS)))


def count_train_examples(flag_values, source, split):
  if flag_values.num_train_examples:
    return flag_values.num_train_examples
  return source.num_examples(split)


def check_positive(flag_values, names):
  for name in names:
    value = getattr(flag_values, name)
    if value is not None and value <= 0:
      raise ValueError("--%s=%r must be positive" % (name, value))


def check_non_negative(flag_values, names):
  for name in names:
    value = getattr(flag_values, name)
    if value is not None and value < 0:
      raise ValueError("--%s=%r must be >= 0" % (name, value))


def images_of(features):
  return features["image"] if isinstance(features, dict) else features


def serving_input_receiver_fn(image_size):
  """Serving input: float pixels [batch, size, size, 3] in [0, 255], scaled to [-1, 1]."""

  def receiver_fn():
    pixels = tf.placeholder(tf.float32, [None, image_size, image_size, 3], name="image")
    features = {"image": (pixels - 127.5) / 127.5}
    return tf.estimator.export.ServingInputReceiver(features, {"image": pixels})

  return receiver_fn


def _cross_entropy(logits, labels, num_classes):
  """Mean softmax cross-entropy; `labels` are int [B] or soft (MixUp) [B, num_classes]."""
  if labels.shape.ndims == 1:
    targets = tf.one_hot(labels, num_classes)
  else:
    targets = tf.cast(labels, tf.float32)
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(
      labels=tf.stop_gradient(targets), logits=logits))


def _train_op(loss, params, learning_rate):
  optimizer = tf.train.MomentumOptimizer(learning_rate, params["momentum"])
  optimizer = optimizers.wrap_optimizer(optimizer, params)
  grads_and_vars = [(g, v) for g, v in optimizer.compute_gradients(loss) if g is not None]
  if params.get("grad_clip_norm"):
    grads, variables = zip(*grads_and_vars)
    grads, _ = tf.clip_by_global_norm(grads, params["grad_clip_norm"])
    grads_and_vars = list(zip(grads, variables))
  with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
    return optimizer.apply_gradients(grads_and_vars, tf.train.get_or_create_global_step())


def classifier_spec(mode, logits, labels, params, learning_rate_fn, scaffold=None):
  """EstimatorSpec of a fine-tuned classifier (see the module docstring).

  params: num_classes, momentum, grad_clip_norm (0/None: off), loss_scale (run loop).
  learning_rate_fn(global_step) -> scalar learning rate (training only).
  """
  logits = tf.cast(logits, tf.float32)
  num_classes = params["num_classes"]
  predictions = {"classes": tf.argmax(logits, axis=1, output_type=tf.int32),
                 "probabilities": tf.nn.softmax(logits)}
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(
        mode, predictions=predictions, scaffold=scaffold,
        export_outputs={"serving_default": tf.estimator.export.PredictOutput(predictions)})
  loss = _cross_entropy(logits, labels, num_classes)
  if mode == tf.estimator.ModeKeys.TRAIN:
    learning_rate = learning_rate_fn(tf.train.get_or_create_global_step())
    tf.summary.scalar("learning_rate", learning_rate)
    return tf.estimator.EstimatorSpec(mode, loss=loss, scaffold=scaffold,
                                      train_op=_train_op(loss, params, learning_rate))
  labels = tf.cast(labels, tf.int32)
  metrics = {"accuracy": tf.metrics.accuracy(labels, predictions["classes"])}
  if num_classes > TOP_K:
    metrics["top_5_accuracy"] = tf.metrics.mean(tf.cast(
        tf.nn.in_top_k(logits, labels, TOP_K), tf.float32))
  return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics,
                                    scaffold=scaffold)


def fine_tuning_spec(features, labels, mode, params, logits_fn, weights_scaffold_fn,
                     learning_rate_fn):
  """model_fn body: logits_fn(images, training) -> logits; weights_scaffold_fn(path,
  variables, num_classes, reset_head) -> Scaffold loading the network's variables."""
  existing = set(tf.trainable_variables())
  logits = logits_fn(images_of(features), mode == tf.estimator.ModeKeys.TRAIN)
  scaffold = None
  if params.get("weights"):
    created = [v for v in tf.trainable_variables() if v not in existing]
    scaffold = weights_scaffold_fn(params["weights"], created, params["num_classes"],
                                   params["reset_head"])
  return classifier_spec(mode, logits, labels, params,
                         lambda step: learning_rate_fn(step, params), scaffold)


class TransferModel(registry.Model):
  """What ViT and BiT share: params are the recipe (flags over the recipe defaults), and
  the input pipelines differ only in their per-example preprocessing."""

  model_fn_module = None  # the model's model_fn module (has model_fn(features, ...))
  weights_module = None  # the model's .npz weights module (has plan(...))
  headline_metric = ("accuracy", "top-1 accuracy on the --dataset's evaluation split "
                     "(tf_flowers train[85%:], CIFAR test, image folder validation)")

  def recipe(self, flag_values):
    raise NotImplementedError

  def splits(self, flag_values):
    """(training split, evaluation split) of --dataset."""
    raise NotImplementedError

  def train_examples(self, flag_values):
    """The training split's records (or --num_train_examples)."""
    return count_train_examples(flag_values,
                                make_source(flag_values.dataset, flag_values.data_dir),
                                self.splits(flag_values)[0])

  def preprocessing(self, recipe):
    """(train_fn, eval_fn): per-example preprocessing of decoded uint8 images."""
    raise NotImplementedError

  def params(self, flag_values):
    return self.recipe(flag_values)

  def model_fn(self, features, labels, mode, params):
    return self.model_fn_module.model_fn(features, labels, mode, params)

  def input_fn(self, flag_values, mode):
    recipe = self.recipe(flag_values)
    source = make_source(flag_values.dataset, flag_values.data_dir)
    train_fn, eval_fn = self.preprocessing(recipe)
    if mode == tf.estimator.ModeKeys.TRAIN:
      return image_sources.build_input_fn(
          source, recipe["train_split"], True, train_fn, mixup_alpha=recipe["mixup_alpha"],
          shuffle_buffer=flag_values.shuffle_buffer, seed=flag_values.tf_random_seed)
    return image_sources.build_input_fn(source, recipe["eval_split"], False, eval_fn,
                                        predict=mode == tf.estimator.ModeKeys.PREDICT)

  def summarize(self, results, flag_values):
    if "accuracy" not in results:
      return None
    top_5 = (", top-5 %.2f%%" % (100 * results["top_5_accuracy"])
             if "top_5_accuracy" in results else "")
    return ("%s eval at global step %d: top-1 %.2f%%%s accuracy on %s %s, loss %.4f "
            "(cross-entropy)" % (self.name, results["global_step"], 100 * results["accuracy"],
                                 top_5, flag_values.dataset, self.splits(flag_values)[1],
                                 results["loss"]))

  def serving_input_receiver_fn(self, flag_values):
    return serving_input_receiver_fn(self.recipe(flag_values)["image_size"])

  def build_network(self, images, params):
    """Builds the network on `images` (inference mode) in the current graph."""
    raise NotImplementedError

  def check_inputs(self, flag_values):
    recipe = self.recipe(flag_values)
    source = make_source(flag_values.dataset, flag_values.data_dir)
    if flag_values.mode in ("train", "train_and_eval"):
      source.check_records(recipe["train_split"])
    if flag_values.mode != "train":
      source.check_records(recipe["eval_split"])
    if recipe["weights"]:
      self.check_weights(recipe)

  def check_weights(self, params):
    """Raises a WeightsError (first line: the file) unless the file fits the network in
    dtype, shape and values. The expected shapes come from building the network in a
    throwaway graph: the network code stays the one description of its variables (a
    shape table per variant would be a second one), and building allocates no values.
    Then every array is read once and must be finite."""
    with tf.Graph().as_default():
      size = params["image_size"]
      self.build_network(tf.placeholder(tf.float32, [1, size, size, 3]), params)
      source, _ = self.weights_module.plan(params["weights"], tf.trainable_variables(),
                                           params["num_classes"], params["reset_head"])
    source.check_values()
