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
model_fn adds them only when --weight_decay > 0 (default 0, the upstream behaviour).
LayerNorm uses eps 1e-12, the tf.contrib.layers.layer_norm value upstream relies on.
"""
import math

import tensorflow.compat.v1 as tf

from estimators import layers

NORMALIZATIONS = ("sparsemax", "softmax", "none")
LAYER_NORM_EPSILON = 1e-12


def _he_normal():
  return layers.variance_scaling(scale=2.0, mode="fan_in", distribution="truncated_normal")


def resnet_layer(x, filters, training, kernel_size=3, strides=1, relu=True,
                 normalization=True, weight_decay=0.0, name="resnet_layer"):
  """conv (no bias, He-normal) -> [BN] -> [ReLU], the upstream `resnet_layer`."""
  with tf.variable_scope(name):
    x = layers.conv2d(x, filters, kernel_size, strides=strides, use_bias=False,
                      kernel_initializer=_he_normal(), weight_decay=weight_decay)
    if normalization:
      x = layers.batch_norm(x, training, decay=0.9, epsilon=1e-5)
    if relu:
      x = tf.nn.relu(x)
    return x


def resnet_blocks_per_stage(depth):
  if depth < 8 or (depth - 2) % 6:
    raise ValueError("resnet_depth=%d: expected 6n+2 with n >= 1 (8, 14, 20, 26, 32, ...)"
                     % depth)
  return (depth - 2) // 6


def encoder(images, training, attention_dim=16, val_dim=64, final_units=256, depth=32,
            base_filters=16, weight_decay=0.0, name="encoder"):
  """images [N, H, W, C] -> (keys [N, attention_dim], queries [N, attention_dim],
  values [N, val_dim])."""
  blocks = resnet_blocks_per_stage(depth)
  with tf.variable_scope(name):
    x = resnet_layer(images, base_filters, training, weight_decay=weight_decay, name="stem")
    filters = base_filters
    for stage in range(3):
      for block in range(blocks):
        downsample = stage > 0 and block == 0
        strides = 2 if downsample else 1
        with tf.variable_scope("stage%d_block%d" % (stage + 1, block + 1)):
          y = resnet_layer(x, filters, training, strides=strides,
                           weight_decay=weight_decay, name="conv1")
          y = resnet_layer(y, filters, training, relu=False, weight_decay=weight_decay,
                           name="conv2")
          if downsample:
            x = resnet_layer(x, filters, training, kernel_size=1, strides=strides,
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


def sparsemax(logits, name="sparsemax"):
  """Sparsemax over the last axis of a [batch, n] tensor (Martins & Astudillo, 2016).

  The Euclidean projection of the logits onto the probability simplex:
  p = max(z - tau, 0), with z sorted descending, support size
  k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)} and tau = (sum_{j<=k(z)} z_(j) - 1) / k(z).
  Logits are centred first (the result is shift-invariant) for float32 accuracy. The
  gradient comes from autodiff through these ops and equals the closed form
  dp/dz = diag(s) - s s^T / |S| (s = support indicator).
  """
  with tf.name_scope(name):
    logits = tf.convert_to_tensor(logits)
    num = tf.shape(logits)[-1]
    z = logits - tf.reduce_mean(logits, axis=-1, keepdims=True)
    z_sorted, _ = tf.nn.top_k(z, k=num)
    cumsum = tf.cumsum(z_sorted, axis=-1)
    k = tf.cast(tf.range(1, num + 1), z.dtype)
    in_support = tf.cast(1.0 + k * z_sorted > cumsum, z.dtype)
    support_size = tf.reduce_sum(in_support, axis=-1, keepdims=True)
    tau = (tf.reduce_sum(z_sorted * in_support, axis=-1, keepdims=True) - 1.0) / support_size
    return tf.maximum(z - tau, 0.0)


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

  Sparsemax gives zero weight to every score below (row max - 1), since tau >= max - 1;
  excluded scores are set to (max of the kept scores - 2), which keeps the values
  moderate (no float32 cancellation in sparsemax's centring). Softmax gets -1e9; for
  "none" the weights themselves are zeroed in relational_attention.
  """
  if normalization == "softmax":
    return tf.where(exclude, tf.fill(tf.shape(scores), -1e9), scores)
  if normalization == "sparsemax":
    lowest = tf.fill(tf.shape(scores), scores.dtype.min)
    kept_max = tf.reduce_max(tf.where(exclude, lowest, scores), axis=1, keepdims=True)
    return tf.where(exclude, tf.zeros_like(scores) + (kept_max - 2.0), scores)
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
