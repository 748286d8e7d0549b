"""ProtoAttend model_fn: losses, optimiser, evaluation metrics and predictions.

Training loss (upstream `main_protoattend.py`):
  CE(classify(own values))                                        "self"
  + CE(classify(prototype-weighted values))                        "prototypes"
  + CE(classify((1 - a) own + a weighted)), a = alpha_intermediate  "joint"
  + sparsity_weight * (mean attention entropy - log(eps + number of candidates))
  [+ weight_decay L2, only when --weight_decay > 0; upstream builds it but never adds it]
Adam (--decoupled_weight_decay: AdamW, instead of the L2 term) on
tf.train.exponential_decay(init_lr, step, decay_every, decay_rate) (continuous;
--lr_schedule=cosine instead decays init_lr to 0 over the run's train_steps), after
--warmup_steps of linear warm-up (default 0, as upstream), gradients clipped by value to
+-gradient_thresh, UPDATE_OPS as control dependencies.

Queries and candidates go through the encoder as ONE concatenated batch (upstream: two
calls; `network.encode`, not the query-only `network.build`, see network.py). It halves
the number of kernel launches; in training the batch-norm statistics are then those of
queries + candidates together instead of each group separately.
With --in_batch_candidates (not upstream; off by default) the training step has no
separate candidates: each query attends to the other queries of its batch. That removes
the cost of encoding example_cand_size extra images per step (8x the query batch with
the defaults), which dominates training time on CPU.

Evaluation runs in the same graph and on the same device as training (Huawei moved it to a
host session). Features `weight` (0 for batch padding) and `is_ood` (1 for the
out-of-distribution digits) select the examples: accuracy-type metrics count
in-distribution examples only, the OOD AUROC counts both. Confidence = max over classes of
the per-class summed attention weights (TF ops, no py_func).

Metrics (upstream's TensorBoard summaries, made streaming over the whole evaluation):
  accuracy (= accuracy_prototypes, upstream's printed "Val Accuracy"), accuracy_query,
  accuracy_joint; mean_max_weight; confidence_above_<t>/accuracy and /coverage for
  t in 0.5 ... 0.999 (upstream "accurate ratio" / "total ratio"; accuracy is 0, not NaN,
  when nothing is above t); prototypes_for_<p>%_weight/median (exact streaming median of
  the number of top prototypes holding p of the weight); mean_confidence_right / _wrong
  (conditional means; upstream divides by all examples instead, i.e. multiplies by the
  fraction right / wrong); ood_auroc and mean_confidence_ood.
"""
import tensorflow.compat.v1 as tf

from estimators import layers
from estimators import predictions as predictions_lib
from estimators import schedules
from estimators.protoattend import network
from input_fns import fashion_mnist
from migration import optimizers

CONFIDENCE_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
WEIGHT_FRACTIONS = (0.5, 0.9, 0.95)
AUROC_THRESHOLDS = 2001


def _encode(images, cand_images, config, is_training):
  """Encodes queries and candidates in one batch; without candidates the queries double
  as candidates. Returns (queries, values, cand_keys, cand_values)."""
  num_queries = tf.shape(images)[0]
  if cand_images is not None:
    images = tf.concat([images, cand_images], axis=0)
  keys, queries, values = network.encode(images, is_training, config)
  if cand_images is None:
    return queries, values, keys, values
  return queries[:num_queries], values[:num_queries], keys[num_queries:], values[num_queries:]


def _weighted_mean(values, weights):
  return tf.reduce_sum(values * weights) / tf.maximum(tf.reduce_sum(weights), 1e-12)


def _cross_entropy(labels, logits, weights):
  per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  return _weighted_mean(per_example, weights)


def prototypes_for_weight(weights, fraction):
  """Per row: the smallest number of top prototypes whose weights sum to >= fraction."""
  num_cands = tf.shape(weights)[1]
  sorted_weights, _ = tf.nn.top_k(weights, k=num_cands)
  cumulative = tf.cumsum(sorted_weights, axis=1)
  count = tf.reduce_sum(tf.cast(cumulative < fraction, tf.int32), axis=1) + 1
  return tf.minimum(count, num_cands)


def streaming_median_count(counts, max_count, weights=None, name="median_count"):
  """Streaming (weighted lower) median of integer counts in [0, max_count].

  Keeps a histogram in a local metric variable, so the median is exact over the whole
  evaluation rather than an average of per-batch medians. Returns (value, update_op).
  """
  with tf.variable_scope(None, default_name=name):
    histogram = tf.get_variable(
        "histogram", [max_count + 1], tf.float32, initializer=tf.zeros_initializer(),
        trainable=False,
        collections=[tf.GraphKeys.LOCAL_VARIABLES, tf.GraphKeys.METRIC_VARIABLES])
    if weights is None:
      weights = tf.ones_like(counts, tf.float32)
    batch_histogram = tf.reduce_sum(
        tf.one_hot(counts, max_count + 1) * weights[:, None], axis=0)
    update_op = tf.assign_add(histogram, batch_histogram)

    def _median(hist):
      cumulative = tf.cumsum(hist)
      below_half = tf.cast(cumulative < 0.5 * cumulative[-1], tf.int32)
      return tf.cast(tf.reduce_sum(below_half), tf.float32)

    return _median(tf.identity(histogram)), _median(update_op)


def ood_auroc(is_ood, confidence, weights):
  """Streaming AUROC of confidence as a score separating in-distribution (positive) from
  out-of-distribution examples; `weights` 0 drops (padding) rows. (value, update_op)."""
  return tf.metrics.auc(labels=tf.equal(is_ood, 0), predictions=confidence,
                        weights=weights, num_thresholds=AUROC_THRESHOLDS,
                        summation_method="careful_interpolation", name="ood_auroc")


def eval_metric_ops(outputs, labels, features, config):
  """The evaluation metrics (see the module docstring for which examples count)."""
  valid = features.get("weight")
  if valid is None:
    valid = tf.ones_like(outputs["confidence"])
  is_ood = features.get("is_ood")
  in_dist = valid if is_ood is None else valid * tf.cast(tf.equal(is_ood, 0), tf.float32)
  conf = outputs["confidence"]
  correct = tf.cast(tf.equal(outputs["classes"], labels), tf.float32)
  accuracy_prototypes = tf.metrics.accuracy(labels, outputs["classes"], weights=in_dist)
  metrics = {
      "accuracy": accuracy_prototypes,
      "accuracy_prototypes": accuracy_prototypes,
      "accuracy_query": tf.metrics.accuracy(labels, outputs["classes_query"],
                                            weights=in_dist),
      "accuracy_joint": tf.metrics.accuracy(labels, outputs["classes_joint"],
                                            weights=in_dist),
      "mean_confidence_right": tf.metrics.mean(conf, weights=in_dist * correct),
      "mean_confidence_wrong": tf.metrics.mean(conf, weights=in_dist * (1.0 - correct)),
      "mean_max_weight": tf.metrics.mean(tf.reduce_max(outputs["weights"], axis=1),
                                         weights=in_dist),
  }
  for threshold in CONFIDENCE_THRESHOLDS:
    above = tf.cast(conf > threshold, tf.float32)
    key = "confidence_above_%g" % threshold
    metrics[key + "/accuracy"] = tf.metrics.mean(correct, weights=in_dist * above)
    metrics[key + "/coverage"] = tf.metrics.mean(above, weights=in_dist)
  num_cands = outputs["weights"].shape.as_list()[1]
  for fraction in WEIGHT_FRACTIONS:
    counts = prototypes_for_weight(outputs["weights"], fraction)
    metrics["prototypes_for_%d%%_weight/median" % round(100 * fraction)] = (
        streaming_median_count(counts, num_cands, weights=in_dist))
  if is_ood is not None and config.get("ood_eval", True):
    metrics["ood_auroc"] = ood_auroc(is_ood, conf, valid)
    metrics["mean_confidence_ood"] = tf.metrics.mean(
        conf, weights=valid * tf.cast(is_ood, tf.float32))
  return metrics


def build_outputs(features, labels, config, is_training):
  """Runs encoder, attention and the three classifier heads; returns a dict of tensors.

  Without `cand_image` in the features (--in_batch_candidates, training only), the query
  batch is the candidate database: each query attends to the other queries, never to
  itself, and the candidates' labels are the batch labels.
  """
  num_classes = config["num_classes"]
  in_batch = "cand_image" not in features
  if in_batch and labels is None:
    raise ValueError("features without 'cand_image' (in-batch candidates) need labels")
  queries, values, cand_keys, cand_values = _encode(
      features["image"], features.get("cand_image"), config, is_training)
  exclude = None
  if in_batch:
    exclude = tf.cast(tf.eye(tf.shape(queries)[0]), tf.bool)
  weighted, weights = network.relational_attention(
      queries, cand_keys, cand_values, config["normalization"], exclude=exclude)
  cand_labels = tf.cast(labels, tf.int32) if in_batch else features["cand_label"]
  alpha = config["alpha_intermediate"]
  logits_self = network.classify(values, num_classes)
  logits_prototypes = network.classify(weighted, num_classes)
  logits_joint = network.classify((1.0 - alpha) * values + alpha * weighted, num_classes)
  return {
      "logits_self": logits_self,
      "logits_prototypes": logits_prototypes,
      "logits_joint": logits_joint,
      "weights": weights,
      "classes": tf.argmax(logits_prototypes, axis=1, output_type=tf.int32),
      "classes_query": tf.argmax(logits_self, axis=1, output_type=tf.int32),
      "classes_joint": tf.argmax(logits_joint, axis=1, output_type=tf.int32),
      "confidence": network.confidence(weights, cand_labels, num_classes),
  }


def total_loss(outputs, labels, config, example_weights):
  """The ProtoAttend loss; returns (loss, dict of its terms)."""
  weights = outputs["weights"]
  eps = config["epsilon_sparsity"]
  num_cands = tf.cast(tf.shape(weights)[1], tf.float32)
  entropy = tf.reduce_sum(-weights * tf.log(eps + weights), axis=1)
  terms = {
      "self": _cross_entropy(labels, outputs["logits_self"], example_weights),
      "prototypes": _cross_entropy(labels, outputs["logits_prototypes"], example_weights),
      "joint": _cross_entropy(labels, outputs["logits_joint"], example_weights),
      "sparsity": _weighted_mean(entropy, example_weights) - tf.log(eps + num_cands),
  }
  loss = (terms["self"] + terms["prototypes"] + terms["joint"]
          + config["sparsity_weight"] * terms["sparsity"])
  if network.l2_weight_decay(config) > 0:
    terms["weight_decay"] = layers.l2_regularization_loss()
    loss += terms["weight_decay"]
  return loss, terms


def learning_rate(global_step, config):
  """The learning rate at `global_step` (a tensor or a number) under --lr_schedule."""
  if config["lr_schedule"] == "cosine":
    return schedules.learning_rate(global_step, "cosine", config["init_learning_rate"],
                                   total_steps=config["train_steps"],
                                   warmup_steps=config["warmup_steps"])
  return schedules.learning_rate(
      global_step, "exponential", config["init_learning_rate"],
      decay_steps=config["decay_every"], decay_rate=config["decay_rate"], staircase=False,
      warmup_steps=config["warmup_steps"])


class AdamWOptimizer(tf.train.AdamOptimizer):
  """Adam with decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101; the rule of
  Keras' and PyTorch's AdamW): before Adam's update, every kernel (conv and dense weights;
  not biases or normalisation parameters) shrinks by learning_rate * weight_decay * itself.

  The decay runs inside the per-variable update, as tf.contrib.opt's
  DecoupledWeightDecayExtension does (TF 1.15 only), so it takes part in whatever
  distribution or loss-scaling wrapper applies the gradients.
  """

  def __init__(self, learning_rate, weight_decay):
    super(AdamWOptimizer, self).__init__(learning_rate)
    self._weight_decay = weight_decay

  def _decay(self, var):
    """[the op shrinking `var`] for a kernel, [] for any other variable."""
    if "/kernel" not in var.name:
      return []
    rate = tf.cast(self._lr_t * self._weight_decay, var.dtype.base_dtype)
    return [tf.assign_sub(var, rate * var)]

  def _apply_dense(self, grad, var):
    with tf.control_dependencies(self._decay(var)):
      return super(AdamWOptimizer, self)._apply_dense(grad, var)

  def _resource_apply_dense(self, grad, var):
    with tf.control_dependencies(self._decay(var)):
      return super(AdamWOptimizer, self)._resource_apply_dense(grad, var)


def make_optimizer(learning_rate_value, config):
  """Upstream's Adam, or with --decoupled_weight_decay AdamW."""
  if config["decoupled_weight_decay"]:
    return AdamWOptimizer(learning_rate_value, config["weight_decay"])
  return tf.train.AdamOptimizer(learning_rate_value)


def _train_op(loss, config):
  global_step = tf.train.get_or_create_global_step()
  learning_rate_value = learning_rate(global_step, config)
  tf.summary.scalar("learning_rate", learning_rate_value)
  optimizer = optimizers.wrap_optimizer(make_optimizer(learning_rate_value, config), config)
  thresh = float(config["gradient_thresh"])
  grads_and_vars = optimizer.compute_gradients(loss)
  clipped = [(tf.clip_by_value(g, -thresh, thresh), v) for g, v in grads_and_vars
             if g is not None]
  # Only the update waits for UPDATE_OPS (gradient ops built in the block would each carry
  # a control input per BN statistic, bloating the GraphDef, .meta and events files).
  with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
    return optimizer.apply_gradients(clipped, global_step=global_step)


def _predictions(outputs, features, config):
  weights = outputs["weights"]
  num_cands = weights.shape.as_list()[1]
  top_k = config["top_k_prototypes"] if num_cands is None else min(
      config["top_k_prototypes"], num_cands)
  top_weights, top_index = tf.nn.top_k(weights, k=top_k)
  predictions = {
      "class": outputs["classes"],
      "confidence": outputs["confidence"],
      "probabilities": tf.nn.softmax(outputs["logits_prototypes"]),
      "prototype_ids": tf.gather(features["cand_id"], top_index),
      "prototype_weights": top_weights,
      "prototype_labels": tf.gather(features["cand_label"], top_index),
  }
  if "is_ood" in features:
    predictions["is_ood"] = features["is_ood"]
  return predictions_lib.add_input_fields(predictions, features, fashion_mnist.CLASS_NAMES,
                                          classes_key="class")


def model_fn(features, labels, mode, config):
  """Estimator model_fn for ProtoAttend (see the module docstring); `config`: the run's
  Config, or any mapping with the values it reads (the explanation tool's)."""
  is_training = mode == tf.estimator.ModeKeys.TRAIN
  outputs = build_outputs(features, labels, config, is_training)
  if mode == tf.estimator.ModeKeys.PREDICT:
    predictions = _predictions(outputs, features, config)
    return tf.estimator.EstimatorSpec(
        mode, predictions=predictions,
        export_outputs={"serving_default": tf.estimator.export.PredictOutput(predictions)})

  labels = tf.cast(labels, tf.int32)
  example_weights = tf.ones_like(outputs["confidence"])
  if not is_training:
    example_weights = features.get("weight", example_weights)
    if "is_ood" in features:
      example_weights *= tf.cast(tf.equal(features["is_ood"], 0), tf.float32)
  loss, terms = total_loss(outputs, labels, config, example_weights)

  if not is_training:
    return tf.estimator.EstimatorSpec(
        mode, loss=loss, eval_metric_ops=eval_metric_ops(outputs, labels, features, config))

  for name, value in terms.items():
    tf.summary.scalar("loss/" + name, value)
  tf.summary.scalar("mean_max_weight", tf.reduce_mean(tf.reduce_max(outputs["weights"], 1)))
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=_train_op(loss, config))
