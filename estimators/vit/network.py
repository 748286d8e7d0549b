"""Vision Transformer, the official architecture (google-research/vision_transformer).

`logits, end_points = build(images, num_classes, is_training, config)`: `config` is the
run's Config or any Mapping with `variant` (a VARIANTS name) and optionally
`dropout_rate`, `attention_dropout_rate`, `representation_size` (None or missing: the
variant's), or with `network_config`, a ViTConfig of any size (tests, benchmarks).

Variables are created at the top level with the Flax parameter paths of the official
`.npz` files as names (`embedding/kernel`, `cls`,
`Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`, ...), with the
official shapes (attention kernels (D, H, D/H) and (H, D/H, D)), so loading a file is a
name map. Flax numerics: LayerNorm epsilon 1e-6, tanh-approximated GELU, queries scaled
by 1/sqrt(D/H).
"""
import collections
import math

import tensorflow.compat.v1 as tf

from estimators import layers

ViTConfig = collections.namedtuple("ViTConfig", [
    "hidden_size", "mlp_dim", "num_heads", "num_layers", "patch_size", "dropout_rate",
    "attention_dropout_rate", "representation_size"])


def _config(hidden, mlp, heads, depth, patch, dropout):
  return ViTConfig(hidden_size=hidden, mlp_dim=mlp, num_heads=heads, num_layers=depth,
                   patch_size=patch, dropout_rate=dropout, attention_dropout_rate=0.0,
                   representation_size=None)


# vit_jax/configs/models.py (dropout as in the current configs).
VARIANTS = collections.OrderedDict([
    ("Ti/16", _config(192, 768, 3, 12, 16, 0.0)),
    ("S/16", _config(384, 1536, 6, 12, 16, 0.0)),
    ("B/16", _config(768, 3072, 12, 12, 16, 0.0)),
    ("B/32", _config(768, 3072, 12, 12, 32, 0.0)),
    ("L/16", _config(1024, 4096, 16, 24, 16, 0.1)),
    ("L/32", _config(1024, 4096, 16, 24, 32, 0.0)),
    ("H/14", _config(1280, 5120, 16, 32, 14, 0.1)),
])

LAYER_NORM_EPSILON = 1e-6


def get_config(variant, **overrides):
  """The named variant with `overrides` (e.g. dropout_rate=0.1, representation_size=768)."""
  if variant not in VARIANTS:
    raise ValueError("unknown ViT variant %r; known: %s" % (variant, ", ".join(VARIANTS)))
  return VARIANTS[variant]._replace(**overrides)


def num_tokens(config, image_size):
  """Patches plus the class token for a square `image_size` input."""
  grid = image_size // config.patch_size
  return grid * grid + 1


def _xavier_uniform():
  return tf.glorot_uniform_initializer()


def _attention_projection(x, num_heads, head_dim, name):
  """DenseGeneral D -> (H, D/H): kernel (D, H, D/H), bias (H, D/H)."""
  hidden = x.shape[-1].value if hasattr(x.shape[-1], "value") else x.shape[-1]
  with tf.variable_scope(name):
    kernel = tf.get_variable("kernel", [hidden, num_heads, head_dim],
                             initializer=_xavier_uniform())
    bias = tf.get_variable("bias", [num_heads, head_dim], initializer=tf.zeros_initializer())
    flat = tf.reshape(kernel, [hidden, num_heads * head_dim])
    y = tf.tensordot(x, flat, [[2], [0]]) + tf.reshape(bias, [num_heads * head_dim])
    shape = tf.shape(x)
    y = tf.reshape(y, [shape[0], shape[1], num_heads, head_dim])
    return tf.transpose(y, [0, 2, 1, 3])  # [batch, heads, tokens, head_dim]


def multi_head_attention(x, config, is_training, name="MultiHeadDotProductAttention_1"):
  heads = config.num_heads
  head_dim = config.hidden_size // heads
  with tf.variable_scope(name):
    query = _attention_projection(x, heads, head_dim, "query")
    key = _attention_projection(x, heads, head_dim, "key")
    value = _attention_projection(x, heads, head_dim, "value")
    query = query / math.sqrt(head_dim)
    weights = tf.nn.softmax(tf.matmul(query, key, transpose_b=True), axis=-1)
    weights = layers.dropout(weights, config.attention_dropout_rate, is_training)
    context = tf.matmul(weights, value)  # [batch, heads, tokens, head_dim]
    context = tf.transpose(context, [0, 2, 1, 3])
    shape = tf.shape(context)
    context = tf.reshape(context, [shape[0], shape[1], heads * head_dim])
    with tf.variable_scope("out"):
      kernel = tf.get_variable("kernel", [heads, head_dim, config.hidden_size],
                               initializer=_xavier_uniform())
      bias = tf.get_variable("bias", [config.hidden_size],
                             initializer=tf.zeros_initializer())
      flat = tf.reshape(kernel, [heads * head_dim, config.hidden_size])
      return tf.tensordot(context, flat, [[2], [0]]) + bias


def mlp_block(x, config, is_training, name="MlpBlock_3"):
  bias_init = tf.random_normal_initializer(stddev=1e-6)
  with tf.variable_scope(name):
    y = layers.dense(x, config.mlp_dim, kernel_initializer=_xavier_uniform(),
                     bias_initializer=bias_init, name="Dense_0")
    y = layers.gelu_tanh(y)
    y = layers.dropout(y, config.dropout_rate, is_training)
    y = layers.dense(y, config.hidden_size, kernel_initializer=_xavier_uniform(),
                     bias_initializer=bias_init, name="Dense_1")
    return layers.dropout(y, config.dropout_rate, is_training)


def encoder_block(x, config, is_training, name):
  with tf.variable_scope(name):
    y = layers.layer_norm(x, LAYER_NORM_EPSILON, name="LayerNorm_0")
    y = multi_head_attention(y, config, is_training)
    x = x + layers.dropout(y, config.dropout_rate, is_training)
    y = layers.layer_norm(x, LAYER_NORM_EPSILON, name="LayerNorm_2")
    return x + mlp_block(y, config, is_training)


def network_config(config):
  """The ViTConfig `config` (a Mapping, see the module docstring) describes."""
  if config.get("network_config") is not None:
    return config["network_config"]
  overrides = {name: config[name] for name in
               ("dropout_rate", "attention_dropout_rate", "representation_size")
               if config.get(name) is not None}
  return get_config(config["variant"], **overrides)


def _embed_patches(images, vit_config):
  """Patch embeddings [batch, patches, D] and the tokens [batch, 1 + patches, D] (the
  class token first)."""
  hidden = vit_config.hidden_size
  x = layers.conv2d(images, hidden, vit_config.patch_size, strides=vit_config.patch_size,
                    padding="VALID", use_bias=True,
                    kernel_initializer=tf.variance_scaling_initializer(
                        1.0, "fan_in", "truncated_normal"),
                    name="embedding")
  grid_h, grid_w = x.shape.as_list()[1:3]
  batch = tf.shape(x)[0]
  patches = tf.reshape(x, [batch, grid_h * grid_w, hidden])
  cls = tf.get_variable("cls", [1, 1, hidden], initializer=tf.zeros_initializer())
  return patches, tf.concat([tf.tile(cls, [batch, 1, 1]), patches], axis=1)


def build(images, num_classes, is_training, config):
  """(logits [batch, num_classes], end_points) for float images [batch, h, w, 3] in
  [-1, 1]; end_points: embedding (the patches), encoded (every token after the encoder),
  pre_logits (the class token's representation), logits."""
  vit_config = network_config(config)
  end_points = {}
  end_points["embedding"], x = _embed_patches(images, vit_config)
  with tf.variable_scope("Transformer"):
    with tf.variable_scope("posembed_input"):
      position = tf.get_variable("pos_embedding", [1, x.shape.as_list()[1],
                                                   vit_config.hidden_size],
                                 initializer=tf.random_normal_initializer(stddev=0.02))
    x = layers.dropout(x + position, vit_config.dropout_rate, is_training)
    for index in range(vit_config.num_layers):
      x = encoder_block(x, vit_config, is_training, "encoderblock_%d" % index)
    x = layers.layer_norm(x, LAYER_NORM_EPSILON, name="encoder_norm")
  end_points["encoded"] = x
  x = x[:, 0]
  if vit_config.representation_size:
    x = tf.tanh(layers.dense(x, vit_config.representation_size,
                             kernel_initializer=tf.variance_scaling_initializer(
                                 1.0, "fan_in", "truncated_normal"),
                             name="pre_logits"))
  end_points["pre_logits"] = x
  logits = layers.dense(x, num_classes, kernel_initializer=tf.zeros_initializer(),
                        name="head")
  end_points["logits"] = logits
  return logits, end_points
