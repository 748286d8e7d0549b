"""MASF model_fn: episodic meta-learning with global (class alignment) and local (triplet)
losses, plus the DeepAll baseline (`algorithm='deepall'`), evaluation and prediction.

Training features come from input_fns.pacs.episode_dataset: images [3B, S, S, 3] ordered
[meta-train a | meta-train a1 | meta-test b] (a fresh random role assignment each step).

One MASF step (masf_func.py, first-order), all three updates in one train_op:
  1. task loss  L_task = (CE(a) + CE(a1)) / 2 under the weights w          -> Adam(outer_lr)
  2. inner step fast_w = w - inner_lr * clip_by_norm(stop_gradient(g), gradients_clip_value),
     g the gradient of the SUM of the per-example losses / 2 (= B * dL_task/dw), as the
     reference differentiates the unreduced cross-entropy vectors
  3. global loss: symmetric KL between the per-class mean logits of b and a (and of b and a1)
     under fast_w, softmax temperature 2, for the classes present in both
  4. local loss: semi-hard triplet loss on the metric embedding of the first B//3 images of
     each domain under fast_w
  5. meta step   Adam(outer_lr) on global_loss_weight*global + local_loss_weight*local, each
     gradient clip_by_norm(gradients_clip_value)
  6. metric step Adam(metric_lr) on local_loss_weight*local over model/metric/*.

EstimatorSpec.loss is task + weighted global + weighted local; the terms (and the source
accuracy) are logged and summarised separately.

Reference quirk (var lists): the meta optimiser's variable list in masf_func.py is built with
name filters meant to exclude the metric net, but model/metric/* passes them, so the metric
net receives both the meta and the metric Adam updates. `meta_step_updates_metric_net=True`
(default) keeps that; False gives the metric net only its own optimiser.

Differences from the reference, all deliberate:
  - all gradients are computed from the same pre-step weights and the three updates are
    applied one after another (the reference runs three independent ops in one sess.run,
    whose order TensorFlow does not define);
  - the group embeddings for the triplet loss reuse the fast-weight pass of a, a1, b (same
    images, same fast weights) instead of a fourth pass; only the dropout mask differs;
  - the triplet loss ignores anchors with no negative in the group (contrib measured them
    against distance 0) and is 0, not NaN, when the group has no positive pair.
"""
import tensorflow.compat.v1 as tf

from estimators import predictions as predictions_lib
from estimators import pretrained
from estimators.masf import network
from estimators.masf import weights as weights_lib
from input_fns import pacs
from migration import optimizers as migration_optimizers

MASF = "masf"
DEEPALL = "deepall"
ALGORITHMS = (MASF, DEEPALL)
GLOBAL_LOSS_TEMPERATURE = 2.0
_PROBABILITY_FLOOR = 1e-8
_EMPTY_CLASS_EPS = 1e-16
_where = getattr(tf, "where_v2", tf.where)  # TF 1.15's tf.where warns; same semantics here


def class_mean_logits(logits, labels, num_classes):
  """[C, num_classes] mean logits of each class's samples (0 for an absent class) + counts."""
  one_hot = tf.one_hot(labels, num_classes, dtype=logits.dtype)
  counts = tf.reduce_sum(one_hot, axis=0)
  sums = tf.matmul(one_hot, logits, transpose_a=True)
  return sums / (counts[:, None] + _EMPTY_CLASS_EPS), counts


def global_alignment_loss(logits_1, labels_1, logits_2, labels_2, num_classes,
                          temperature=GLOBAL_LOSS_TEMPERATURE):
  """MASF's `kd`: symmetric KL between softened class-mean logits of two domains.

  Sum over the classes present in both domains of (KL(p||q) + KL(q||p)) / 2, divided by
  num_classes, with p, q = clip(softmax(mean logits / T), 1e-8, 1).
  """
  mean_1, counts_1 = class_mean_logits(logits_1, labels_1, num_classes)
  mean_2, counts_2 = class_mean_logits(logits_2, labels_2, num_classes)
  p = tf.clip_by_value(tf.nn.softmax(mean_1 / temperature), _PROBABILITY_FLOOR, 1.0)
  q = tf.clip_by_value(tf.nn.softmax(mean_2 / temperature), _PROBABILITY_FLOOR, 1.0)
  symmetric_kl = (tf.reduce_sum(p * tf.log(p / q), axis=1) +
                  tf.reduce_sum(q * tf.log(q / p), axis=1)) / 2.0
  present = tf.cast(tf.logical_and(counts_1 > 0, counts_2 > 0), logits_1.dtype)
  return tf.reduce_sum(symmetric_kl * present) / num_classes


def pairwise_squared_distances(embeddings):
  """[N, N] squared Euclidean distances, clamped at 0, exact 0 on the diagonal."""
  squared_norms = tf.reduce_sum(tf.square(embeddings), axis=1)
  distances = (squared_norms[:, None] + squared_norms[None, :] -
               2.0 * tf.matmul(embeddings, embeddings, transpose_b=True))
  distances = tf.maximum(distances, 0.0)
  return distances * (1.0 - tf.eye(tf.shape(embeddings)[0], dtype=embeddings.dtype))


def triplet_semihard_loss(labels, embeddings, margin):
  """Semi-hard triplet loss on squared distances (FaceNet; tf.contrib's semantics).

  For each anchor i and positive j (same label, j != i) the negative is the closest k with
  d(i,k) > d(i,j) (semi-hard); if there is none, the farthest negative. The loss is the mean
  over all (i, j) pairs of max(margin + d(i,j) - d(i,k), 0).
  """
  labels = tf.reshape(labels, [-1])
  n = tf.shape(labels)[0]
  distances = pairwise_squared_distances(embeddings)
  same = tf.equal(labels[:, None], labels[None, :])
  negative = tf.logical_not(same)
  positive = tf.logical_and(same, tf.logical_not(tf.cast(tf.eye(n), tf.bool)))

  # cube[i, j, k] = d(i, k), compared with d(i, j).
  cube_shape = tf.stack([n, n, n])
  d_ik = tf.broadcast_to(distances[:, None, :], cube_shape)
  d_ij = tf.broadcast_to(distances[:, :, None], cube_shape)
  semi_hard = tf.logical_and(tf.broadcast_to(negative[:, None, :], cube_shape), d_ik > d_ij)
  above_all = tf.stop_gradient(tf.reduce_max(distances)) + 1.0
  closest_semi_hard = tf.reduce_min(_where(semi_hard, d_ik, above_all + tf.zeros_like(d_ik)),
                                    axis=2)
  has_semi_hard = tf.reduce_any(semi_hard, axis=2)
  farthest_negative = tf.reduce_max(
      _where(negative, distances, tf.zeros_like(distances) - 1.0), axis=1)
  chosen_negative = _where(has_semi_hard, closest_semi_hard,
                             tf.broadcast_to(farthest_negative[:, None], tf.stack([n, n])))
  has_negative = tf.reduce_any(negative, axis=1)
  valid = tf.cast(tf.logical_and(positive, has_negative[:, None]), embeddings.dtype)
  hinge = tf.maximum(margin + distances - chosen_negative, 0.0)
  return tf.reduce_sum(hinge * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


def _cross_entropy(labels, logits):
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _accuracy(labels, logits):
  return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), labels),
                                tf.float32))


def _adam(learning_rate, name, config):
  return migration_optimizers.wrap_optimizer(
      tf.train.AdamOptimizer(learning_rate, name=name), config)


def _task_step(images, label_parts, weights, config):
  """Steps 1-2: the task loss of the meta-train domains a, a1 under w, its gradients and
  the fast weights. Returns (task_loss, task_grads, fast_weights, source_logits)."""
  b = config["meta_batch_size"]
  images_a, images_a1, _ = tf.split(images, 3, axis=0)
  labels_a, labels_a1, _ = label_parts
  _, source_logits = network.forward(tf.concat([images_a, images_a1], 0), weights,
                                     is_training=True)
  source_ce = _cross_entropy(tf.concat([labels_a, labels_a1], 0), source_logits)
  task_loss = (tf.reduce_mean(source_ce[:b]) + tf.reduce_mean(source_ce[b:])) / 2.0
  task_grads = tf.gradients(task_loss, list(weights.values()))
  # The reference differentiates the unreduced losses: its gradient is b x ours.
  clip = config["gradients_clip_value"]
  fast_weights = dict(
      (k, w - config["inner_lr"] * tf.clip_by_norm(tf.stop_gradient(g * float(b)), clip))
      for (k, w), g in zip(weights.items(), task_grads))
  return task_loss, task_grads, fast_weights, source_logits


def _meta_losses(images, label_parts, fast_weights, metric_weights, config):
  """Steps 3-4: (global loss, local loss) of the episode under the fast weights."""
  labels_a, labels_a1, labels_b = label_parts
  fast_fc7, fast_logits = network.forward(images, fast_weights, is_training=True)
  logits_a, logits_a1, logits_b = tf.split(fast_logits, 3, axis=0)
  num_classes = config["num_classes"]
  global_loss = (global_alignment_loss(logits_b, labels_b, logits_a, labels_a, num_classes) +
                 global_alignment_loss(logits_b, labels_b, logits_a1, labels_a1,
                                       num_classes)) / 2.0
  group = config["meta_batch_size"] // 3
  group_fc7 = tf.concat([part[:group] for part in tf.split(fast_fc7, 3, axis=0)], 0)
  group_labels = tf.concat([part[:group] for part in label_parts], 0)
  embeddings = network.metric_forward(group_fc7, metric_weights)
  return global_loss, triplet_semihard_loss(group_labels, embeddings, config["margin"])


def _masf_updates(task_grads, meta_objective, slow_vars, metric_vars, config):
  """Steps 1, 5, 6: the task, meta and metric Adam updates, applied one after another."""
  clip = config["gradients_clip_value"]
  meta_vars = slow_vars + (metric_vars if config["meta_step_updates_metric_net"] else [])
  # d(meta objective)/d(metric vars) is d(weighted local)/d(metric vars): the global loss
  # does not reach the metric net, so one gradient call serves the meta and metric steps.
  meta_grads = tf.gradients(meta_objective, slow_vars + metric_vars)
  metric_grads = meta_grads[len(slow_vars):]
  meta_pairs = [(tf.clip_by_norm(g, clip), v)
                for g, v in zip(meta_grads[:len(meta_vars)], meta_vars) if g is not None]
  metric_pairs = [(g, v) for g, v in zip(metric_grads, metric_vars) if g is not None]

  all_grads = [g for g in task_grads + meta_grads if g is not None]
  global_step = tf.train.get_or_create_global_step()
  update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
  with tf.control_dependencies(all_grads + update_ops):
    task_op = _adam(config["outer_lr"], "TaskAdam", config).apply_gradients(
        [(g, v) for g, v in zip(task_grads, slow_vars) if g is not None], global_step)
  ops = [task_op]
  if meta_pairs:
    with tf.control_dependencies([ops[-1]]):
      ops.append(_adam(config["outer_lr"], "MetaAdam", config).apply_gradients(meta_pairs))
  if metric_pairs:
    with tf.control_dependencies([ops[-1]]):
      ops.append(_adam(config["metric_lr"], "MetricAdam", config).apply_gradients(
          metric_pairs))
  return tf.group(*ops, name="masf_train_op")


def _masf_train(images, labels, weights, metric_weights, config):
  """Returns (loss, train_op, logged tensors) for one episode."""
  label_parts = tf.split(labels, 3, axis=0)  # meta-train a, meta-train a1, meta-test b
  task_loss, task_grads, fast_weights, source_logits = _task_step(
      images, label_parts, weights, config)
  global_loss, local_loss = _meta_losses(images, label_parts, fast_weights, metric_weights,
                                         config)
  weighted_global = config["global_loss_weight"] * global_loss
  weighted_local = config["local_loss_weight"] * local_loss
  train_op = _masf_updates(task_grads, weighted_global + weighted_local,
                           list(weights.values()), list(metric_weights.values()), config)
  b = config["meta_batch_size"]
  logged = {"task_loss": task_loss, "global_loss": global_loss, "local_loss": local_loss,
            "source_accuracy": (_accuracy(label_parts[0], source_logits[:b]) +
                                _accuracy(label_parts[1], source_logits[b:])) / 2.0}
  return task_loss + weighted_global + weighted_local, train_op, logged


def _deepall_train(images, labels, weights, config):
  _, logits = network.forward(images, weights, is_training=True)
  loss = tf.reduce_mean(_cross_entropy(labels, logits))
  global_step = tf.train.get_or_create_global_step()
  optimizer = _adam(config["outer_lr"], "DeepAllAdam", config)
  grads_and_vars = optimizer.compute_gradients(loss, var_list=list(weights.values()))
  with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):  # update only
    train_op = optimizer.apply_gradients(grads_and_vars, global_step)
  return loss, train_op, {"task_loss": loss, "source_accuracy": _accuracy(labels, logits)}


def _streaming_sum(values, name):
  """(value, update_op) summing `values` over the evaluation, like the tf.metrics ones."""
  total = tf.Variable(0.0, trainable=False, name=name,
                      collections=[tf.GraphKeys.LOCAL_VARIABLES, tf.GraphKeys.METRIC_VARIABLES])
  return tf.identity(total), tf.assign_add(total, tf.reduce_sum(values))


def _eval_metrics(labels, logits, features, config):
  """accuracy/<domain> and examples/<domain> (0 for a domain the input does not contain),
  source_crossval_accuracy, target_accuracy and `accuracy`, the model-selection metric."""
  predictions = tf.argmax(logits, 1, output_type=tf.int32)
  weights = features["weights"]
  domains = features["domains"]
  metrics = {}
  source_mask = tf.zeros_like(weights)
  for domain in list(config["source_domains"]) + [config["target_domain"]]:
    mask = weights * tf.cast(tf.equal(domains, pacs.DOMAINS.index(domain)), tf.float32)
    metrics["accuracy/" + domain] = tf.metrics.accuracy(labels, predictions, weights=mask)
    metrics["examples/" + domain] = _streaming_sum(mask, "examples_" + domain)
    if domain != config["target_domain"]:
      source_mask += mask
  metrics["source_crossval_accuracy"] = tf.metrics.accuracy(labels, predictions,
                                                           weights=source_mask)
  metrics["target_accuracy"] = metrics["accuracy/" + config["target_domain"]]
  metrics["accuracy"] = (metrics["target_accuracy"] if config["select_on_target_accuracy"]
                         else metrics["source_crossval_accuracy"])
  return metrics


def _warm_start(config, variables):
  """The Scaffold loading --weights_path into conv1..fc7, or None (from scratch)."""
  if not config["weights_path"]:
    tf.logging.info("MASF weights: none (--weights_path empty), every layer from scratch")
    return None
  tf.logging.info("MASF weights: conv1..fc7 from %s (fc8 and the metric net from scratch), "
                  "applied only when model_dir has no checkpoint", config["weights_path"])
  return pretrained.warm_start(config["weights_path"], variables, weights_lib.FILTER)


def _train_spec(images, labels, config):
  weights = network.construct_weights(config["image_size"], config["num_classes"],
                                      config["fc_units"])
  if config["algorithm"] == MASF:
    metric_weights = network.construct_metric_weights(config["fc_units"])
    loss, train_op, logged = _masf_train(images, labels, weights, metric_weights, config)
  else:
    loss, train_op, logged = _deepall_train(images, labels, weights, config)
  for name, tensor in logged.items():
    tf.summary.scalar(name, tensor)
  hooks = [tf.train.LoggingTensorHook(logged, every_n_iter=config["log_step_count_steps"])]
  return tf.estimator.EstimatorSpec(tf.estimator.ModeKeys.TRAIN, loss=loss,
                                    train_op=train_op, training_hooks=hooks,
                                    scaffold=_warm_start(config, weights.values()))


def model_fn(features, labels, mode, config):
  """The Estimator model_fn; `config` is the run's Config (any Mapping of its fields)."""
  images = features["images"]
  if mode == tf.estimator.ModeKeys.TRAIN:
    return _train_spec(images, labels, config)
  logits, _ = network.build(images, config["num_classes"], False, config)
  if mode == tf.estimator.ModeKeys.PREDICT:
    predictions = predictions_lib.add_input_fields(
        {"classes": tf.argmax(logits, 1, output_type=tf.int32),
         "probabilities": tf.nn.softmax(logits)}, features, pacs.CLASS_NAMES)
    return tf.estimator.EstimatorSpec(
        mode, predictions=predictions,
        export_outputs={"classify": tf.estimator.export.PredictOutput(predictions)})
  loss = tf.reduce_sum(_cross_entropy(labels, logits) * features["weights"]) / tf.maximum(
      tf.reduce_sum(features["weights"]), 1.0)
  return tf.estimator.EstimatorSpec(mode, loss=loss,
                                    eval_metric_ops=_eval_metrics(labels, logits, features,
                                                                  config))
