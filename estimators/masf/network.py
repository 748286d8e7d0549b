"""MASF's AlexNet (masf_func.py): the slim-style `build`, and the functional `forward` over a
weights dict that the meta-learning step needs.

`build(images, num_classes, is_training, config)` is the plain classifier (evaluation,
prediction, serving). Training cannot be one classifier call: the MASF step runs the
network again on the inner loop's fast weights `w - inner_lr * g`, so the variables are
created once (`construct_weights`, scope model/<layer>/{weights,biases}) and `forward` takes
any dict with the same keys without creating variables. DeepAll trains on the same weights
dict, which is also what the pretrained loader fills.

Convolutions are SAME + bias + ReLU (guerzhoy's forward script); LRN uses MASF's alpha 1e-5.
At 227x227 pool5 is 6x6x256 = 9,216, the fan-in of bvlc_alexnet's fc6. Other image sizes
(tests) change only fc6's fan-in (see `pool5_size`).
"""
import collections

import tensorflow.compat.v1 as tf

from estimators import layers

MODEL_SCOPE = "model"
METRIC_SCOPE = "metric"
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# name: (kernel, stride, input channels per group, filters, groups)
CONV_SPECS = collections.OrderedDict([
    ("conv1", (11, 4, 3, 96, 1)),
    ("conv2", (5, 1, 48, 256, 2)),
    ("conv3", (3, 1, 256, 384, 1)),
    ("conv4", (3, 1, 192, 384, 2)),
    ("conv5", (3, 1, 192, 256, 2)),
])
LRN_DEPTH_RADIUS = 2
LRN_ALPHA = 1e-5
LRN_BETA = 0.75
LRN_BIAS = 1.0
POOL_SIZE = 3
POOL_STRIDE = 2
FC_UNITS = 4096
DROPOUT_RATE = 0.5
METRIC_UNITS = (1024, 256)
REFERENCE_IMAGE_SIZE = 227


def pool5_size(image_size):
  """Spatial size after pool5 (conv1 SAME stride 4, three 3x3/2 VALID pools)."""
  size = -(-image_size // 4)
  for _ in range(3):
    size = (size - POOL_SIZE) // POOL_STRIDE + 1
    if size < 1:
      return 0
  return size


def min_image_size():
  size = 1
  while pool5_size(size) < 1:
    size += 1
  return size


def weight_shapes(image_size=REFERENCE_IMAGE_SIZE, num_classes=7, fc_units=FC_UNITS):
  """layer -> (weights shape, biases shape); the layout of bvlc_alexnet.npy at 227."""
  side = pool5_size(image_size)
  if side < 1:
    raise ValueError("image size %d is too small for AlexNet (minimum %d)"
                     % (image_size, min_image_size()))
  shapes = collections.OrderedDict()
  for name, (kernel, _, in_channels, filters, _) in CONV_SPECS.items():
    shapes[name] = ((kernel, kernel, in_channels, filters), (filters,))
  shapes["fc6"] = ((side * side * 256, fc_units), (fc_units,))
  shapes["fc7"] = ((fc_units, fc_units), (fc_units,))
  shapes["fc8"] = ((fc_units, num_classes), (num_classes,))
  return shapes


def weight_key(layer, kind):
  return "%s/%s" % (layer, kind)


def construct_weights(image_size=REFERENCE_IMAGE_SIZE, num_classes=7, fc_units=FC_UNITS):
  """Creates model/<layer>/{weights,biases}; returns an OrderedDict 'conv1/weights' -> var.

  Initialisation as masf_func.py (Glorot-uniform everywhere, fc8 included) except that the
  biases start at zero (the reference's get_variable default is Glorot there too); it only
  matters for from-scratch runs, pretrained weights overwrite conv1..fc7.
  """
  weights = collections.OrderedDict()
  with tf.variable_scope(MODEL_SCOPE, reuse=tf.AUTO_REUSE):
    for layer, (w_shape, b_shape) in weight_shapes(image_size, num_classes, fc_units).items():
      with tf.variable_scope(layer):
        weights[weight_key(layer, "weights")] = tf.get_variable(
            "weights", w_shape, initializer=tf.glorot_uniform_initializer())
        weights[weight_key(layer, "biases")] = tf.get_variable(
            "biases", b_shape, initializer=tf.zeros_initializer())
  return weights


def construct_metric_weights(in_units=FC_UNITS):
  """Metric head variables model/metric/{w1,b1,w2,b2} (fc7 -> 1024 -> 256)."""
  weights = collections.OrderedDict()
  with tf.variable_scope(MODEL_SCOPE, reuse=tf.AUTO_REUSE):
    with tf.variable_scope(METRIC_SCOPE):
      fan_in = in_units
      for index, units in enumerate(METRIC_UNITS, 1):
        weights["w%d" % index] = tf.get_variable(
            "w%d" % index, [fan_in, units], initializer=tf.glorot_uniform_initializer())
        weights["b%d" % index] = tf.get_variable(
            "b%d" % index, [units], initializer=tf.zeros_initializer())
        fan_in = units
  return weights


def _conv(x, kernel, biases, stride, groups):
  strides = [1, stride, stride, 1]
  if groups == 1:
    y = tf.nn.conv2d(x, kernel, strides, "SAME")
  else:
    y = tf.concat([tf.nn.conv2d(xi, ki, strides, "SAME")
                   for xi, ki in zip(tf.split(x, groups, axis=3),
                                     tf.split(kernel, groups, axis=3))], axis=3)
  return tf.nn.relu(tf.nn.bias_add(y, biases))


def _lrn(x):
  return tf.nn.local_response_normalization(x, depth_radius=LRN_DEPTH_RADIUS, alpha=LRN_ALPHA,
                                            beta=LRN_BETA, bias=LRN_BIAS)


def _pool(x):
  return tf.nn.max_pool(x, [1, POOL_SIZE, POOL_SIZE, 1], [1, POOL_STRIDE, POOL_STRIDE, 1],
                        "VALID")


def forward(images, weights, is_training, dropout_rate=DROPOUT_RATE):
  """images [N, S, S, 3] (BGR, mean-subtracted) -> (fc7 [N, 4096] before dropout, logits)."""
  x = images
  for layer, (_, stride, _, _, groups) in CONV_SPECS.items():
    x = _conv(x, weights[weight_key(layer, "weights")], weights[weight_key(layer, "biases")],
              stride, groups)
    if layer in ("conv1", "conv2"):
      x = _pool(_lrn(x))
    elif layer == "conv5":
      x = _pool(x)
  fan_in = weights[weight_key("fc6", "weights")].shape[0]
  x = tf.reshape(x, [-1, int(fan_in)])
  fc6 = tf.nn.relu(tf.nn.xw_plus_b(x, weights["fc6/weights"], weights["fc6/biases"]))
  fc6 = layers.dropout(fc6, dropout_rate, is_training)
  fc7 = tf.nn.relu(tf.nn.xw_plus_b(fc6, weights["fc7/weights"], weights["fc7/biases"]))
  logits = tf.nn.xw_plus_b(layers.dropout(fc7, dropout_rate, is_training),
                           weights["fc8/weights"], weights["fc8/biases"])
  return fc7, logits


def build(images, num_classes, is_training, config):
  """images [N, S, S, 3] (BGR, mean-subtracted) -> (logits, end_points); end_points holds
  `fc7` (the embedding, before dropout) and `logits`. `config` gives image_size and
  fc_units (any Mapping)."""
  weights = construct_weights(config["image_size"], num_classes, config["fc_units"])
  fc7, logits = forward(images, weights, is_training)
  return logits, {"fc7": fc7, "logits": logits}


def metric_forward(features, metric_weights):
  """fc7 features -> 256-d embedding (two leaky-ReLU dense layers, slope 0.2)."""
  x = features
  for index in range(1, len(METRIC_UNITS) + 1):
    x = tf.nn.leaky_relu(tf.nn.xw_plus_b(x, metric_weights["w%d" % index],
                                         metric_weights["b%d" % index]))
  return x
