"""BiT: ResNet-v2 with GroupNorm and Weight Standardisation (google-research/big_transfer).

`logits, end_points = build(images, num_classes, is_training, config)`: `config` is the
run's Config or any Mapping with `variant` (a VARIANTS name), or with `network_config`, a
BiTConfig of any size (tests).

Variable names are the keys of the official `.npz` files
(`resnet/root_block/standardized_conv2d/kernel`,
`resnet/block1/unit01/a/group_norm/gamma`, `resnet/block1/unit01/a/proj/...`,
`resnet/head/conv2d/{kernel,bias}`), so loading a file is a name map. In a unit, the
group norm under `a`, `b` and `c` normalises the *input* of that conv (`a` is the
pre-activation of the unit).
"""
import collections

import tensorflow.compat.v1 as tf

from estimators import layers

BiTConfig = collections.namedtuple("BiTConfig", ["block_units", "width_factor"])

VARIANTS = collections.OrderedDict([
    ("R50x1", BiTConfig((3, 4, 6, 3), 1)),
    ("R50x3", BiTConfig((3, 4, 6, 3), 3)),
    ("R101x1", BiTConfig((3, 4, 23, 3), 1)),
    ("R101x3", BiTConfig((3, 4, 23, 3), 3)),
    ("R152x2", BiTConfig((3, 8, 36, 3), 2)),
    ("R152x4", BiTConfig((3, 8, 36, 3), 4)),
])

GROUPS = 32
GROUP_NORM_EPSILON = 1e-5
# Added to the kernel variance in weight standardisation (bit_tf2/models.py).
WEIGHT_STANDARDIZATION_EPSILON = 1e-10


def get_config(variant):
  if variant not in VARIANTS:
    raise ValueError("unknown BiT variant %r; known: %s" % (variant, ", ".join(VARIANTS)))
  return VARIANTS[variant]


def root_width(config):
  """Root conv width 64*wf; every width in the net is a multiple of it."""
  width = 64 * config.width_factor
  if width != int(width) or int(width) % GROUPS:
    raise ValueError("BiT width factor %r gives a root width of %r, which must be a "
                     "multiple of the %d GroupNorm groups" % (config.width_factor, width,
                                                              GROUPS))
  return int(width)


def feature_size(config):
  return root_width(config) * 32


def standardized_conv2d(x, filters, kernel_size, strides=1, name="standardized_conv2d"):
  """VALID conv, no bias, whose kernel is standardised per output channel over (H, W, I)."""
  in_channels = x.shape[-1].value if hasattr(x.shape[-1], "value") else x.shape[-1]
  with tf.variable_scope(name):
    kernel = tf.get_variable("kernel", [kernel_size, kernel_size, in_channels, filters],
                             initializer=layers.variance_scaling(mode="fan_out"))
    mean, variance = tf.nn.moments(kernel, [0, 1, 2], keep_dims=True)
    kernel = (kernel - mean) * tf.rsqrt(variance + WEIGHT_STANDARDIZATION_EPSILON)
    return tf.nn.conv2d(x, kernel, [1, strides, strides, 1], "VALID")


def _pad(x, amount):
  return tf.pad(x, [[0, 0], [amount, amount], [amount, amount], [0, 0]])


def _gn_relu(x):
  return tf.nn.relu(layers.group_norm(x, GROUPS, GROUP_NORM_EPSILON))


def bottleneck_unit(x, middle, strides, name):
  """Pre-activation bottleneck: out channels 4*middle."""
  out_channels = 4 * middle
  in_channels = x.shape[-1].value if hasattr(x.shape[-1], "value") else x.shape[-1]
  with tf.variable_scope(name):
    with tf.variable_scope("a"):
      activated = _gn_relu(x)
      shortcut = x
      if strides != 1 or in_channels != out_channels:
        with tf.variable_scope("proj"):
          shortcut = standardized_conv2d(activated, out_channels, 1, strides)
      y = standardized_conv2d(activated, middle, 1)
    with tf.variable_scope("b"):
      y = standardized_conv2d(_pad(_gn_relu(y), 1), middle, 3, strides)
    with tf.variable_scope("c"):
      y = standardized_conv2d(_gn_relu(y), out_channels, 1)
    return y + shortcut


def backbone(images, config):
  """Pre-logit features [batch, 2048*wf] (after the final GN -> ReLU -> global pool)."""
  width = root_width(config)
  with tf.variable_scope("resnet"):
    with tf.variable_scope("root_block"):
      x = standardized_conv2d(_pad(images, 3), width, 7, 2)
      x = tf.nn.max_pool(_pad(x, 1), [1, 3, 3, 1], [1, 2, 2, 1], "VALID")
    for block, units in enumerate(config.block_units):
      middle = width * 2 ** block
      with tf.variable_scope("block%d" % (block + 1)):
        for unit in range(units):
          strides = 2 if block > 0 and unit == 0 else 1
          x = bottleneck_unit(x, middle, strides, "unit%02d" % (unit + 1))
    x = _gn_relu(x)
    return tf.reduce_mean(x, axis=[1, 2])


def head(features, num_classes):
  """Zero-initialised 1x1 conv head on the pooled features (the .npz layout)."""
  with tf.variable_scope("resnet/head"):
    pooled = features[:, None, None, :]
    logits = layers.conv2d(pooled, num_classes, 1, padding="VALID", use_bias=True,
                           kernel_initializer=tf.zeros_initializer(), name="conv2d")
    return logits[:, 0, 0, :]


def network_config(config):
  """The BiTConfig `config` (a Mapping, see the module docstring) describes."""
  if config.get("network_config") is not None:
    return config["network_config"]
  return get_config(config["variant"])


def build(images, num_classes, is_training, config):
  """(logits [batch, num_classes], end_points) for float images [batch, h, w, 3] in
  [-1, 1]; end_points: pre_logits (the pooled features), logits."""
  del is_training  # GroupNorm and weight standardisation train as they infer; no dropout
  features = backbone(images, network_config(config))
  logits = head(features, num_classes)
  return logits, {"pre_logits": features, "logits": logits}
