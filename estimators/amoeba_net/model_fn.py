"""AmoebaNet-D model_fn: loss, optimizer, schedule, EMA and metrics (amoeba_net_model.py).

- Loss: softmax cross-entropy with label smoothing on one_hot(labels, num_classes)
  + 0.4 x the aux head's cross-entropy (fixed weight, as the reference) + L2 weight decay.
  Eval graphs have no aux head and no weight decay, as in the reference.
- Optimizer: sgd | momentum | rmsprop (decay 0.9, momentum 0.9, epsilon 1.0), wrapped by
  migration.optimizers.wrap_optimizer; optional clipping by global norm; the train op runs
  after UPDATE_OPS (BN moving statistics).
- Learning rate (schedules.py): staircase exponential decay with linear warm-up from 0
  (warm-up for the exponential method only, as the reference), or cosine / constant /
  stepwise (x0.1 after epochs 10 and 20); floored at 1e-4 x lr. An epoch is
  num_train_images // train_batch_size steps.
- EMA of the trainable variables and the BN moving statistics (decay
  moving_average_decay, num_updates = global_step), applied after each train step. Eval,
  predict and SavedModel export read the EMA values: their Scaffold's Saver maps each
  shadow variable of the checkpoint onto the model variable, so a fresh process needs
  nothing but the checkpoint (this replaces the reference's LoadEMAHook).
"""
import tensorflow.compat.v1 as tf

from estimators import layers
from estimators import predictions as predictions_lib
from estimators import schedules
from estimators.amoeba_net import network
from migration import optimizers as optimizers_lib

AUX_LOSS_WEIGHT = 0.4
MIN_LR_FRACTION = 1e-4
RMSPROP_DECAY = 0.9
RMSPROP_MOMENTUM = 0.9
RMSPROP_EPSILON = 1.0
STEPWISE_BOUNDARY_EPOCHS = (10, 20)
STEPWISE_FACTORS = (1.0, 0.1, 0.01)
OPTIMIZERS = ("sgd", "momentum", "rmsprop")
LR_DECAY_METHODS = ("exponential", "cosine", "constant", "stepwise")
TOP_K = 5
IMAGE_KEY = "image"
TOTAL_LOSS_NAME = "total_loss"
EMA_NAME = "ExponentialMovingAverage"

_BN_MOVING_SUFFIXES = ("/moving_mean", "/moving_variance")


def steps_per_epoch(config):
  """num_train_images // train_batch_size: the reference schedule's epoch (the run's step
  count rounds up instead)."""
  return config["num_train_images"] // config["train_batch_size"]


def learning_rate(config, global_step):
  """The reference schedule for config["lr_decay_method"] (see the module docstring)."""
  method, base_lr = config["lr_decay_method"], config["lr"]
  epoch = steps_per_epoch(config)
  kwargs = dict(min_lr=MIN_LR_FRACTION * base_lr)
  if method == "exponential":
    kwargs.update(decay_steps=config["lr_num_epochs_per_decay"] * epoch,
                  decay_rate=config["lr_decay_value"], staircase=True,
                  warmup_steps=int(config["lr_warmup_epochs"] * epoch))
  elif method == "cosine":
    kwargs.update(total_steps=config["num_epochs"] * epoch)
  elif method == "stepwise":
    kwargs.update(boundaries=[e * epoch for e in STEPWISE_BOUNDARY_EPOCHS],
                  factors=STEPWISE_FACTORS)
  return schedules.learning_rate(global_step, method, base_lr, **kwargs)


def build_optimizer(config, lr):
  name = config["optimizer"]
  if name == "sgd":
    optimizer = tf.train.GradientDescentOptimizer(lr)
  elif name == "momentum":
    optimizer = tf.train.MomentumOptimizer(lr, config["momentum_rate"],
                                           use_nesterov=config["use_nesterov"])
  elif name == "rmsprop":
    optimizer = tf.train.RMSPropOptimizer(lr, RMSPROP_DECAY, momentum=RMSPROP_MOMENTUM,
                                          epsilon=RMSPROP_EPSILON)
  else:
    raise ValueError("--optimizer=%s is not one of %s" % (name, ", ".join(OPTIMIZERS)))
  return optimizers_lib.wrap_optimizer(optimizer, config)


def ema_variables():
  """Variables the EMA tracks: trainable ones plus the BN moving statistics."""
  moving = [v for v in tf.global_variables() if v.op.name.endswith(_BN_MOVING_SUFFIXES)]
  return tf.trainable_variables() + moving


def apply_ema(decay, global_step, variables):
  """The op of tf.train.ExponentialMovingAverage(decay, num_updates=global_step).apply.

  Same shadow variables (`<var>/ExponentialMovingAverage`, initialised to the variable's
  initial value) and the same update, shadow -= (1 - d) * (shadow - var) with
  d = min(decay, (1 + step) / (10 + step)); but each shadow starts from the variable's
  initial-value tensor instead of a guarded `initialized_value()`, which makes building the
  full-size train graph about twice as fast (the guard walks the graph per variable).
  """
  with tf.name_scope("moving_average"):
    step = tf.cast(global_step, tf.float32)
    rate = 1.0 - tf.minimum(decay, (1.0 + step) / (10.0 + step))
    updates = []
    for var in variables:
      with tf.colocate_with(var):
        # MEAN: under tf.distribute every replica computes the same update (see layers).
        shadow = tf.get_variable(var.op.name + "/" + EMA_NAME, initializer=var.initial_value,
                                 trainable=False, aggregation=tf.VariableAggregation.MEAN)
        updates.append(tf.assign_sub(shadow, rate * (shadow - var.value())))
    return tf.group(*updates, name="update")


def ema_scaffold(config):
  """Scaffold whose Saver restores the EMA shadow values into the model variables."""
  if config["moving_average_decay"] <= 0:
    return None
  ema = tf.train.ExponentialMovingAverage(config["moving_average_decay"], name=EMA_NAME)
  saver = tf.train.Saver(ema.variables_to_restore(ema_variables()), sharded=True)
  return tf.train.Scaffold(saver=saver)


def smoothed_cross_entropy(labels, logits, num_classes, label_smoothing):
  one_hot = tf.one_hot(labels, num_classes)
  return tf.losses.softmax_cross_entropy(one_hot, logits, label_smoothing=label_smoothing,
                                         reduction=tf.losses.Reduction.MEAN)


def _images(features):
  if isinstance(features, dict):
    if IMAGE_KEY not in features:
      raise ValueError("AmoebaNet features need the key %r, got %s"
                       % (IMAGE_KEY, sorted(features)))
    return features[IMAGE_KEY]
  return features


def _log_model_size(images, is_training):
  """Logs the trainable parameters and the forward float ops per image of this graph."""
  tf.logging.info("AmoebaNet %s graph: %d trainable parameters",
                  "train" if is_training else "eval/predict",
                  layers.count_trainable_parameters())
  if images.shape.is_fully_defined():
    flops = network.count_float_ops_per_example(tf.get_default_graph(),
                                                 int(images.shape[0]))
    tf.logging.info("AmoebaNet float ops per image (tf.profiler; a train graph also counts "
                    "the weight-decay terms, as the reference's figure does): %.4g", flops)


def model_fn(features, labels, mode, config):
  """tf.estimator model_fn; `config`: the run's Config (or any Mapping of its fields)."""
  is_training = mode == tf.estimator.ModeKeys.TRAIN
  num_classes = config["num_label_classes"]
  images = _images(features)
  logits, end_points = network.build(images, num_classes, is_training, config)
  _log_model_size(images, is_training)
  if mode == tf.estimator.ModeKeys.PREDICT:
    return _predict_spec(features, logits, config)

  labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
  losses = _losses(labels, logits, end_points, num_classes, is_training, config)
  loss = tf.add_n(list(losses.values()), name=TOTAL_LOSS_NAME)
  if mode == tf.estimator.ModeKeys.EVAL:
    k = min(TOP_K, num_classes)
    metrics = {
        "top_1_accuracy": tf.metrics.accuracy(labels, tf.argmax(logits, axis=1)),
        "top_%d_accuracy" % TOP_K: tf.metrics.mean(
            tf.cast(tf.nn.in_top_k(logits, labels, k), tf.float32)),
    }
    return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics,
                                      scaffold=ema_scaffold(config))
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=_train_op(loss, losses, config))


def _predict_spec(features, logits, config):
  predictions = predictions_lib.add_input_fields(
      {"classes": tf.argmax(logits, axis=1),
       "probabilities": tf.nn.softmax(logits, name="predictions"),
       "logits": logits}, features, config.get("class_names"))
  return tf.estimator.EstimatorSpec(
      tf.estimator.ModeKeys.PREDICT, predictions=predictions, scaffold=ema_scaffold(config),
      export_outputs={"serving_default": tf.estimator.export.PredictOutput(predictions)})


def _losses(labels, logits, end_points, num_classes, is_training, config):
  """{name: loss}: the smoothed cross-entropy, the weighted aux head's when it is built,
  and the L2 weight decay in the training graph."""
  losses = {"softmax_loss": smoothed_cross_entropy(labels, logits, num_classes,
                                                   config["label_smoothing"])}
  if "aux_logits" in end_points:
    losses["aux_loss"] = AUX_LOSS_WEIGHT * smoothed_cross_entropy(
        labels, end_points["aux_logits"], num_classes, config["label_smoothing"])
  if is_training:
    losses["regularization_loss"] = layers.l2_regularization_loss()
  return losses


def _train_op(loss, losses, config):
  """The schedule's optimizer step (optionally clipped) after the BN statistics' updates,
  then the EMA update; with the learning rate and loss summaries."""
  global_step = tf.train.get_or_create_global_step()
  lr = learning_rate(config, global_step)
  tf.summary.scalar("learning_rate", lr)
  for name, value in sorted(losses.items()):
    tf.summary.scalar("losses/" + name, value)
  tf.summary.scalar("losses/" + TOTAL_LOSS_NAME, loss)

  optimizer = build_optimizer(config, lr)
  grads_and_vars = optimizer.compute_gradients(loss)
  clip_norm = config["gradient_clipping_by_global_norm"]
  if clip_norm > 0:
    grads, variables = zip(*grads_and_vars)
    grads, _ = tf.clip_by_global_norm(grads, clip_norm)
    grads_and_vars = list(zip(grads, variables))
  # Only the update waits for UPDATE_OPS: gradient ops built inside that block would each
  # carry a control input per BN statistic (most of the GraphDef, .meta and events bytes).
  with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
  if config["moving_average_decay"] > 0:
    with tf.control_dependencies([train_op]):
      train_op = apply_ema(config["moving_average_decay"], global_step, ema_variables())
  return train_op
