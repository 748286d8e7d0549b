"""What the ViT and BiT fine-tuning models share: flags, data sources, the classifier spec.

- `FINE_TUNING_FLAGS`: the transfer-learning flags both models put in their `flags` table
  (registry.define_flags skips rows already defined, so both models load side by side).
  A flag left at None means "what the model's recipe says".
- `make_source(dataset, data_dir)`: tf_flowers / cifar10 / cifar100 (TFDS layout) or an
  ImageNet-format folder (input_fns.image_sources).
- `TransferModel.configure`: the recipe, worked out once: the data's part here (source,
  classes, splits, the training set's size when the recipe needs it), then the model's
  hyperparameters in its `recipe`; every other hook reads the Config.
- `classifier_spec(...)`: softmax cross-entropy (integer or soft MixUp labels), SGD with
  momentum through `migration.optimizers.wrap_optimizer`, optional global-norm clipping,
  UPDATE_OPS as control dependencies of the train op, accuracy (+ top-5 when there are
  more than 5 classes: with 5 or fewer it is always 100 %), predictions and a serving
  signature;
- `fine_tuning_spec(...)`: the whole model_fn body around a network's `build`: builds the
  logits, warm-starts the network's variables from the `.npz` through the model's weights
  filter (`estimators.pretrained`) when config["weights"] is set, then `classifier_spec`;
  predictions carry the input's id and the class name.
"""
import tensorflow.compat.v1 as tf

from estimators import predictions as predictions_lib
from estimators import pretrained
from estimators import registry
from input_fns import cifar
from input_fns import image_sources
from input_fns import tf_flowers
from migration import optimizers

DATASETS = ("tf_flowers", "cifar10", "cifar100", "image_folder")
TOP_K = 5
# Datasets whose images are smaller than 96x96 (BiT-HyperRule's small-image resolution).
SMALL_IMAGE_DATASETS = ("cifar10", "cifar100")

FINE_TUNING_FLAGS = (
    registry.Flag("dataset", "enum", "tf_flowers",
                  "tf_flowers: TFDS tf_flowers 3.0.1 under --data_dir (train[:85%] / "
                  "train[85%:]); cifar10, cifar100: tfrecords made by "
                  "tools/build_cifar_tfrecords.py under --data_dir; image_folder: "
                  "ImageNet-format shards made by tools/build_image_tfrecords.py in "
                  "--data_dir.", DATASETS),
    registry.Flag("weights", "string", None,
                  "Official pretrained .npz file; loaded into a fresh --model_dir only (a "
                  "run that resumes from a checkpoint keeps the checkpoint). Empty: from "
                  "scratch."),
    registry.Flag("reset_head", "bool", False,
                  "Zero the head even when the weights file has as many classes."),
    registry.Flag("learning_rate", "float", None, "Peak learning rate.", registry.POSITIVE),
    registry.Flag("warmup_steps", "integer", None, "Linear warm-up steps.",
                  registry.NON_NEGATIVE),
    registry.Flag("grad_clip_norm", "float", None,
                  "Clip gradients to this global norm (0: off).", registry.NON_NEGATIVE),
    registry.Flag("momentum", "float", 0.9, "SGD momentum.", registry.NON_NEGATIVE),
    registry.Flag("mixup_alpha", "float", None, "MixUp Beta(alpha, alpha); 0: off.",
                  registry.NON_NEGATIVE),
    registry.Flag("image_size", "integer", None, "Training/eval resolution (the crop size).",
                  registry.POSITIVE),
    registry.Flag("num_train_examples", "integer", None,
                  "Training examples (default: counted from the data).", registry.POSITIVE),
    registry.Flag("shuffle_buffer", "integer", 10000, "Training shuffle buffer.",
                  registry.POSITIVE),
)


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


def train_steps(flag_values, config, default):
  """--train_steps, else --train_epochs passes over config.train_examples, else `default`."""
  return registry.train_steps(
      flag_values, lambda: config.train_examples / float(config.train_batch_size), default)


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


def _train_op(loss, config, learning_rate):
  optimizer = tf.train.MomentumOptimizer(learning_rate, config["momentum"])
  optimizer = optimizers.wrap_optimizer(optimizer, config)
  grads_and_vars = [(g, v) for g, v in optimizer.compute_gradients(loss) if g is not None]
  if config.get("grad_clip_norm"):
    grads, variables = zip(*grads_and_vars)
    grads, _ = tf.clip_by_global_norm(grads, config["grad_clip_norm"])
    grads_and_vars = list(zip(grads, variables))
  with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
    return optimizer.apply_gradients(grads_and_vars, tf.train.get_or_create_global_step())


def classifier_spec(mode, logits, labels, config, learning_rate_fn, scaffold=None):
  """EstimatorSpec of a fine-tuned classifier (see the module docstring).

  config: num_classes, momentum, grad_clip_norm (0/None: off), loss_scale (run loop).
  learning_rate_fn(global_step) -> scalar learning rate (training only).
  """
  logits = tf.cast(logits, tf.float32)
  num_classes = config["num_classes"]
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
                                      train_op=_train_op(loss, config, learning_rate))
  labels = tf.cast(labels, tf.int32)
  metrics = {"accuracy": tf.metrics.accuracy(labels, predictions["classes"])}
  if num_classes > TOP_K:
    metrics["top_5_accuracy"] = tf.metrics.mean(tf.cast(
        tf.nn.in_top_k(logits, labels, TOP_K), tf.float32))
  return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics,
                                    scaffold=scaffold)


def fine_tuning_spec(features, labels, mode, config, build, weights_filter,
                     learning_rate_fn):
  """model_fn body. build(images, num_classes, is_training, config) -> (logits,
  end_points) is the network's; weights_filter(num_classes, reset_head) -> its weights
  format's `pretrained.Filter` (the model's `weights.Filter`); learning_rate_fn(
  global_step, config). config: a Mapping (the run's Config in a run) with what these
  read; class_names (missing or None: predictions without class_name)."""
  existing = set(tf.trainable_variables())
  logits, _ = build(images_of(features), config["num_classes"],
                    mode == tf.estimator.ModeKeys.TRAIN, config)
  scaffold = None
  if config.get("weights"):
    created = [v for v in tf.trainable_variables() if v not in existing]
    scaffold = pretrained.warm_start(config["weights"], created, weights_filter(
        config["num_classes"], config["reset_head"]))
  spec = classifier_spec(mode, logits, labels, config,
                         lambda step: learning_rate_fn(step, config), scaffold)
  if mode == tf.estimator.ModeKeys.PREDICT:
    return predictions_lib.with_input_fields(spec, features, config.get("class_names"))
  return spec


class TransferModel(registry.Model):
  """What ViT and BiT share: configure() works the recipe out once (the data's part here,
  the hyperparameters in `recipe`); the input pipelines differ only in their per-example
  preprocessing."""

  network_module = None  # the model's network (has build(images, num_classes, ...))
  model_fn_module = None  # the model's model_fn module (has model_fn(features, ...))
  weights_module = None  # the model's weights.py (has Filter(num_classes, reset_head))
  splits = {}  # --dataset -> (training split, evaluation split)
  headline_metric = ("accuracy", "top-1 accuracy on the --dataset's evaluation split "
                     "(tf_flowers train[85%:], CIFAR test, image folder validation)")

  def counts_train_examples(self, flag_values):
    """Whether the recipe itself goes by the training set's size (--train_epochs aside)."""
    del flag_values
    return False

  def recipe(self, flag_values, config):
    """`config` (the run's and the data's values) with the model's hyperparameters added
    (train_steps included), checked with registry.require."""
    raise NotImplementedError

  def preprocessing(self, config):
    """(train_fn, eval_fn): per-example preprocessing of encoded images."""
    raise NotImplementedError

  def configure(self, flag_values, run):
    source = make_source(flag_values.dataset, run.data_dir)
    train_split, eval_split = self.splits[flag_values.dataset]
    train_examples = flag_values.num_train_examples
    if train_examples is None and (flag_values.train_epochs is not None or
                                   self.counts_train_examples(flag_values)):
      train_examples = source.num_examples(train_split)
    return self.recipe(flag_values, run.replace(
        dataset=flag_values.dataset, source=source, num_classes=source.num_classes,
        class_names=source.class_names,  # predictions name their class (None: ids only)
        train_split=train_split, eval_split=eval_split,
        train_examples=train_examples,  # None when nothing needs the count
        shuffle_buffer=flag_values.shuffle_buffer, weights=flag_values.weights or None,
        reset_head=flag_values.reset_head, momentum=flag_values.momentum))

  def model_fn(self, features, labels, mode, config):
    return self.model_fn_module.model_fn(features, labels, mode, config)

  def input_fn(self, config, mode):
    train_fn, eval_fn = self.preprocessing(config)
    if mode == tf.estimator.ModeKeys.TRAIN:
      return image_sources.build_input_fn(
          config.source, config.train_split, True, train_fn, mixup_alpha=config.mixup_alpha,
          shuffle_buffer=config.shuffle_buffer, seed=config.tf_random_seed)
    return image_sources.build_input_fn(
        config.source, config.eval_split, False, eval_fn,
        fixed_batch_shapes=config.fixed_batch_shapes,
        predict=mode == tf.estimator.ModeKeys.PREDICT)

  def summarize(self, results, config):
    if "accuracy" not in results:
      return None
    top_5 = (", top-5 %.2f%%" % (100 * results["top_5_accuracy"])
             if "top_5_accuracy" in results else "")
    return ("%s eval at global step %d: top-1 %.2f%%%s accuracy on %s %s, loss %.4f "
            "(cross-entropy)" % (self.name, results["global_step"], 100 * results["accuracy"],
                                 top_5, config.dataset, config.eval_split, results["loss"]))

  def serving_input_receiver_fn(self, config):
    return serving_input_receiver_fn(config.image_size)

  def check_inputs(self, config):
    if config.mode in ("train", "train_and_eval"):
      config.source.check_records(config.train_split)
    if config.mode != "train":
      config.source.check_records(config.eval_split)
    if config.weights:
      self.check_weights(config)

  def check_weights(self, config):
    """Raises a WeightsError (first line: the file) unless the file fits the network in
    dtype, shape and values (`pretrained.check_file`, the network built at batch 1)."""
    size = config.image_size

    def make_variables():
      self.network_module.build(tf.placeholder(tf.float32, [1, size, size, 3]),
                                config.num_classes, False, config)
      return tf.trainable_variables()

    pretrained.check_file(config.weights, make_variables,
                          self.weights_module.Filter(config.num_classes, config.reset_head))
