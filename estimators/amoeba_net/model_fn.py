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


def network_config(params, is_training):
  return network.NetworkConfig(
      num_cells=params["num_cells"],
      reduction_size=params["reduction_size"],
      stem_reduction_size=params["stem_reduction_size"],
      use_aux_head=params["use_aux_head"],
      aux_scaling=params["aux_scaling"],
      dense_dropout_keep_prob=params["dense_dropout_keep_prob"],
      drop_connect_keep_prob=params["drop_connect_keep_prob"],
      drop_path_burn_in_steps=params["total_train_steps"],
      batch_norm_decay=params["batch_norm_decay"],
      batch_norm_epsilon=params["batch_norm_epsilon"],
      weight_decay=params["weight_decay"] if is_training else 0.0)


def steps_per_epoch(params):
  return params["num_train_images"] // params["train_batch_size"]


def learning_rate(params, global_step):
  """The reference schedule for params["lr_decay_method"] (see the module docstring)."""
  method, base_lr = params["lr_decay_method"], params["lr"]
  epoch = steps_per_epoch(params)
  kwargs = dict(min_lr=MIN_LR_FRACTION * base_lr)
  if method == "exponential":
    kwargs.update(decay_steps=params["lr_num_epochs_per_decay"] * epoch,
                  decay_rate=params["lr_decay_value"], staircase=True,
                  warmup_steps=int(params["lr_warmup_epochs"] * epoch))
  elif method == "cosine":
    kwargs.update(total_steps=params["num_epochs"] * epoch)
  elif method == "stepwise":
    kwargs.update(boundaries=[e * epoch for e in STEPWISE_BOUNDARY_EPOCHS],
                  factors=STEPWISE_FACTORS)
  return schedules.learning_rate(global_step, method, base_lr, **kwargs)


def build_optimizer(params, lr):
  name = params["optimizer"]
  if name == "sgd":
    optimizer = tf.train.GradientDescentOptimizer(lr)
  elif name == "momentum":
    optimizer = tf.train.MomentumOptimizer(lr, params["momentum_rate"],
                                           use_nesterov=params["use_nesterov"])
  elif name == "rmsprop":
    optimizer = tf.train.RMSPropOptimizer(lr, RMSPROP_DECAY, momentum=RMSPROP_MOMENTUM,
                                          epsilon=RMSPROP_EPSILON)
  else:
    raise ValueError("--optimizer=%s is not one of %s" % (name, ", ".join(OPTIMIZERS)))
  return optimizers_lib.wrap_optimizer(optimizer, params)


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
        shadow = tf.get_variable(var.op.name + "/" + EMA_NAME, initializer=var.initial_value,
                                 trainable=False)
        updates.append(tf.assign_sub(shadow, rate * (shadow - var.value())))
    return tf.group(*updates, name="update")


def ema_scaffold(params):
  """Scaffold whose Saver restores the EMA shadow values into the model variables."""
  if params["moving_average_decay"] <= 0:
    return None
  ema = tf.train.ExponentialMovingAverage(params["moving_average_decay"], name=EMA_NAME)
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


def _log_model_size(images, training):
  """Logs the trainable parameters and the forward float ops per image of this graph."""
  tf.logging.info("AmoebaNet %s graph: %d trainable parameters",
                  "train" if training else "eval/predict",
                  layers.count_trainable_parameters())
  if images.shape.is_fully_defined():
    flops = network.count_float_ops_per_example(tf.get_default_graph(),
                                                 int(images.shape[0]))
    tf.logging.info("AmoebaNet float ops per image (tf.profiler; a train graph also counts "
                    "the weight-decay terms, as the reference's figure does): %.4g", flops)


def model_fn(features, labels, mode, params):
  """tf.estimator model_fn; `params` comes from AmoebaNet.params plus batch_size."""
  training = mode == tf.estimator.ModeKeys.TRAIN
  num_classes = params["num_label_classes"]
  images = _images(features)
  logits, end_points = network.build_network(images, num_classes, training,
                                             network_config(params, training))
  _log_model_size(images, training)

  if mode == tf.estimator.ModeKeys.PREDICT:
    predictions = predictions_lib.add_input_fields(
        {"classes": tf.argmax(logits, axis=1),
         "probabilities": tf.nn.softmax(logits, name="predictions"),
         "logits": logits}, features, params.get("class_names"))
    return tf.estimator.EstimatorSpec(
        mode, predictions=predictions, scaffold=ema_scaffold(params),
        export_outputs={"serving_default": tf.estimator.export.PredictOutput(predictions)})

  labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
  losses = {"softmax_loss": smoothed_cross_entropy(labels, logits, num_classes,
                                                   params["label_smoothing"])}
  if "aux_logits" in end_points:
    losses["aux_loss"] = AUX_LOSS_WEIGHT * smoothed_cross_entropy(
        labels, end_points["aux_logits"], num_classes, params["label_smoothing"])
  if training:
    losses["regularization_loss"] = layers.l2_regularization_loss()
  loss = tf.add_n(list(losses.values()), name=TOTAL_LOSS_NAME)

  if mode == tf.estimator.ModeKeys.EVAL:
    k = min(TOP_K, num_classes)
    metrics = {
        "top_1_accuracy": tf.metrics.accuracy(labels, tf.argmax(logits, axis=1)),
        "top_%d_accuracy" % TOP_K: tf.metrics.mean(
            tf.cast(tf.nn.in_top_k(logits, labels, k), tf.float32)),
    }
    return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics,
                                      scaffold=ema_scaffold(params))

  global_step = tf.train.get_or_create_global_step()
  lr = learning_rate(params, global_step)
  tf.summary.scalar("learning_rate", lr)
  for name, value in sorted(losses.items()):
    tf.summary.scalar("losses/" + name, value)
  tf.summary.scalar("losses/" + TOTAL_LOSS_NAME, loss)

  optimizer = build_optimizer(params, lr)
  grads_and_vars = optimizer.compute_gradients(loss)
  clip_norm = params["gradient_clipping_by_global_norm"]
  if clip_norm > 0:
    grads, variables = zip(*grads_and_vars)
    grads, _ = tf.clip_by_global_norm(grads, clip_norm)
    grads_and_vars = list(zip(grads, variables))
  # Only the update waits for UPDATE_OPS: gradient ops built inside that block would each
  # carry a control input per BN statistic (most of the GraphDef, .meta and events bytes).
  with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
  if params["moving_average_decay"] > 0:
    with tf.control_dependencies([train_op]):
      train_op = apply_ema(params["moving_average_decay"], global_step, ema_variables())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
