"""ProtoAttend network: ResNet encoder, sparsemax/softmax relational attention, classifier.

Follows google-research `protoattend/model.py` (the Huawei port keeps it):
- encoder: ResNet-(6n+2), default 32: stem 3x3 conv 16 + BN + ReLU, 3 stages x n basic
  blocks with 16/32/64 filters, stride 2 in the first block of stages 2 and 3 with an
  un-normalised 1x1 projection shortcut; convs without bias, He-normal init; BN momentum
  0.9, eps 1e-5, fused. Then average pooling over the whole feature map (upstream pools
  with window img_size // 4 and stride 1, which for img_size divisible by 4 is the same),
  Dense(final_units, ReLU) + LayerNorm, and three heads: keys and queries
  Dense(attention_dim, ReLU), values LayerNorm(Dense(val_dim, ReLU)).
- relational attention: weights = normalise(queries . keys^T / sqrt(attention_dim)) over
  the candidates, output = weights . candidate values.
- classifier: Dense(num_classes, no bias), one set of weights shared by every use.

The upstream L2 regularisers (2e-4) are created but never added to the loss; here the
`weight_decay` argument registers them (estimators.layers.l2_regularization_loss) and the
model_fn adds them only when --weight_decay > 0 (default 0, the upstream behaviour) with
Adam (not with --decoupled_weight_decay, AdamW: `l2_weight_decay`).
LayerNorm uses eps 1e-12, the tf.contrib.layers.layer_norm value upstream relies on.

`build` (the network contract) is the plain classifier of a query batch: encoder and
classifier, logits from the queries' own values. The model_fn cannot be that call: it
encodes queries and candidates in one batch (`encode`) and classifies the queries' own
values, the attention's prototype-weighted values and their mix after the attention, with
one classifier (the order also fixes the op seeds of the initial weights).
"""
import math

import tensorflow.compat.v1 as tf

from estimators import layers

NORMALIZATIONS = ("sparsemax", "softmax", "none")
LAYER_NORM_EPSILON = 1e-12


def _he_normal():
  return layers.variance_scaling(scale=2.0, mode="fan_in", distribution="truncated_normal")


def resnet_layer(x, filters, is_training, kernel_size=3, strides=1, relu=True,
                 normalization=True, weight_decay=0.0, name="resnet_layer"):
  """conv (no bias, He-normal) -> [BN] -> [ReLU], the upstream `resnet_layer`."""
  with tf.variable_scope(name):
    x = layers.conv2d(x, filters, kernel_size, strides=strides, use_bias=False,
                      kernel_initializer=_he_normal(), weight_decay=weight_decay)
    if normalization:
      x = layers.batch_norm(x, is_training, decay=0.9, epsilon=1e-5)
    if relu:
      x = tf.nn.relu(x)
    return x


def resnet_blocks_per_stage(depth):
  if depth < 8 or (depth - 2) % 6:
    raise ValueError("resnet_depth=%d: expected 6n+2 with n >= 1 (8, 14, 20, 26, 32, ...)"
                     % depth)
  return (depth - 2) // 6


def encoder(images, is_training, attention_dim=16, val_dim=64, final_units=256, depth=32,
            base_filters=16, weight_decay=0.0, name="encoder"):
  """images [N, H, W, C] -> (keys [N, attention_dim], queries [N, attention_dim],
  values [N, val_dim])."""
  blocks = resnet_blocks_per_stage(depth)
  with tf.variable_scope(name):
    x = resnet_layer(images, base_filters, is_training, weight_decay=weight_decay, name="stem")
    filters = base_filters
    for stage in range(3):
      for block in range(blocks):
        downsample = stage > 0 and block == 0
        strides = 2 if downsample else 1
        with tf.variable_scope("stage%d_block%d" % (stage + 1, block + 1)):
          y = resnet_layer(x, filters, is_training, strides=strides,
                           weight_decay=weight_decay, name="conv1")
          y = resnet_layer(y, filters, is_training, relu=False, weight_decay=weight_decay,
                           name="conv2")
          if downsample:
            x = resnet_layer(x, filters, is_training, kernel_size=1, strides=strides,
                             relu=False, normalization=False, weight_decay=weight_decay,
                             name="projection")
          x = tf.nn.relu(x + y)
      filters *= 2
    x = tf.reduce_mean(x, axis=[1, 2])
    x = tf.nn.relu(layers.dense(x, final_units, name="embedding"))
    x = layers.layer_norm(x, epsilon=LAYER_NORM_EPSILON, name="embedding_norm")
    keys = tf.nn.relu(layers.dense(x, attention_dim, name="keys"))
    queries = tf.nn.relu(layers.dense(x, attention_dim, name="queries"))
    values = tf.nn.relu(layers.dense(x, val_dim, name="values"))
    values = layers.layer_norm(values, epsilon=LAYER_NORM_EPSILON, name="values_norm")
    return keys, queries, values


def l2_weight_decay(config):
  """The conv kernels' L2 weight: --weight_decay, or 0 with --decoupled_weight_decay
  (AdamW, whose decay is not a loss term)."""
  return 0.0 if config["decoupled_weight_decay"] else config["weight_decay"]


def encode(images, is_training, config):
  """The encoder sized by `config` (attention_dim, val_dim, final_units, resnet_depth,
  weight_decay, decoupled_weight_decay): (keys, queries, values)."""
  return encoder(images, is_training, attention_dim=config["attention_dim"],
                 val_dim=config["val_dim"], final_units=config["final_units"],
                 depth=config["resnet_depth"], weight_decay=l2_weight_decay(config))


def build(images, num_classes, is_training, config):
  """A query batch's own logits (encoder, then the shared classifier on its values) and
  end_points: keys, queries and values (what the attention uses) and logits."""
  keys, queries, values = encode(images, is_training, config)
  logits = classify(values, num_classes)
  return logits, {"keys": keys, "queries": queries, "values": values, "logits": logits}


def sparsemax(logits, name="sparsemax"):
  """Sparsemax over the last axis of a [..., n] tensor (Martins & Astudillo, 2016).

  The Euclidean projection of the logits onto the probability simplex:
  p = max(z - tau, 0), with z sorted descending, support size
  k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)} and tau = (sum_{j<=k(z)} z_(j) - 1) / k(z).

  Exact on the rows a masked attention makes:
  - -inf entries get weight 0 and gradient 0; the finite ones get the sparsemax of the
    finite sub-row. A row of only -inf gets zeros (weights and gradient): it attends to
    nothing. tf.contrib's sparsemax, like softmax, gives NaN there, which would spread
    through the whole batch's loss and gradients.
  - logits are shifted by their row max (the result is shift-invariant), not centred by
    their mean: the support then lies in (-1, 0] and is computed to float
    rounding next to -1e9 or float32-min entries (the mean of such a row cancels the
    O(1) entries), and next to 1e30 (where an unshifted 1 + k z_(k) rounds to k z_(k)).
  - a row holding NaN or +inf gives NaN weights (as tf.contrib's sparsemax and softmax
    do) and zero gradient.
  """
  with tf.name_scope(name):
    return _sparsemax(tf.convert_to_tensor(logits))


@tf.custom_gradient
def _sparsemax(logits):
  """sparsemax's ops, with the sparsemax Jacobian diag(s) - s s^T / |S| (s: indicator of
  the support S = {p > 0}) as gradient. Autodiff through max(z - tau, 0) would also
  give gradient to an entry lying exactly at tau, which has weight 0 and is no part of S."""
  dtype = logits.dtype
  row_max = tf.reduce_max(logits, axis=-1, keepdims=True)
  # An all -inf row is not shifted (-inf - -inf would be NaN).
  shift = tf.where_v2(tf.is_finite(row_max), row_max, 0.0)
  z = logits - shift
  num = tf.shape(z)[-1]
  z_sorted, _ = tf.nn.top_k(z, k=num)
  k = tf.cast(tf.range(1, num + 1), dtype)
  in_support = 1.0 + k * z_sorted > tf.cumsum(z_sorted, axis=-1)
  support_size = tf.reduce_sum(tf.cast(in_support, dtype), axis=-1, keepdims=True)
  support_sum = tf.reduce_sum(tf.where_v2(in_support, z_sorted, 0.0), axis=-1, keepdims=True)
  # An all -inf row has an empty support: a size of 1 there makes tau = -1 and every
  # weight max(-inf + 1, 0) = 0.
  tau = (support_sum - 1.0) / tf.maximum(support_size, 1.0)
  valid = tf.reduce_all(logits < float("inf"), axis=-1, keepdims=True)  # False for NaN
  weights = tf.where_v2(valid, tf.maximum(z - tau, 0.0), float("nan"))

  def gradient(upstream):
    support = tf.cast(weights > 0, dtype)
    support_mean = (tf.reduce_sum(upstream * support, axis=-1, keepdims=True) /
                    tf.maximum(tf.reduce_sum(support, axis=-1, keepdims=True), 1.0))
    return support * (upstream - support_mean)

  return weights, gradient


def normalize_scores(scores, normalization):
  """Attention weights from scores [batch, n_cand]: sparsemax, softmax or none (raw)."""
  if normalization == "sparsemax":
    return sparsemax(scores)
  if normalization == "softmax":
    return tf.nn.softmax(scores)
  if normalization == "none":
    return scores
  raise ValueError("normalization=%r is not one of %s" % (normalization, NORMALIZATIONS))


def exclude_scores(scores, exclude, normalization):
  """Scores whose `exclude` [batch, n_cand] entries get exactly zero attention weight.

  Sparsemax takes -inf (exactly zero weight and gradient, see sparsemax); softmax gets
  -1e9; for "none" the weights themselves are zeroed in relational_attention.
  """
  if normalization == "softmax":
    return tf.where(exclude, tf.fill(tf.shape(scores), -1e9), scores)
  if normalization == "sparsemax":
    return tf.where(exclude, tf.fill(tf.shape(scores), -float("inf")), scores)
  return scores


def relational_attention(queries, cand_keys, cand_values, normalization="sparsemax",
                         exclude=None):
  """Returns (weighted values [batch, val_dim], weights [batch, n_cand]).

  `exclude` (optional bool [batch, n_cand]) marks candidates a query may not attend to,
  e.g. the query itself when the query batch doubles as the candidate database.
  """
  attention_dim = queries.shape.as_list()[-1]
  scores = tf.matmul(queries, cand_keys, transpose_b=True) / math.sqrt(attention_dim)
  if exclude is not None:
    scores = exclude_scores(scores, exclude, normalization)
  weights = normalize_scores(scores, normalization)
  if exclude is not None and normalization == "none":
    weights = tf.where(exclude, tf.zeros_like(weights), weights)
  return tf.matmul(weights, cand_values), weights


def classify(values, num_classes, name="classifier"):
  """Shared Dense(num_classes, no bias) -> logits; reuses its weights on every call."""
  with tf.variable_scope(name, reuse=tf.AUTO_REUSE):
    return layers.dense(values, num_classes, use_bias=False, name="dense")


def class_weights(weights, cand_labels, num_classes):
  """Attention weight summed per candidate label: [batch, n_cand] -> [batch, num_classes]."""
  return tf.matmul(weights, tf.one_hot(cand_labels, num_classes, dtype=weights.dtype))


def confidence(weights, cand_labels, num_classes):
  """Max over classes of the per-class summed weights, clipped to [0, 1] (float rounding)."""
  per_class = class_weights(weights, cand_labels, num_classes)
  return tf.clip_by_value(tf.reduce_max(per_class, axis=1), 0.0, 1.0)
