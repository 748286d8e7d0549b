"""Thin layers on tf.get_variable + tf.nn, identical on TF 1.15 and TF 2.15.

Why not tf-slim, which the reference AmoebaNet-D uses (README "Layers: not tf-slim",
measured by benchmarks/slim_layers.py): the same kernels and bit-identical logits and
gradients, but slim.batch_norm fails on TF 2.15 in two places that only patches to
TensorFlow internals fix, slim names variables weights/biases where the ViT/BiT files use
kernel/bias, and slim.dropout bypasses the NPU dropout (migration.ops). The reference's
own batch norm is fused BN + moving-average updates, as `batch_norm` here.
"""
import math

import tensorflow.compat.v1 as tf

from migration import ops

L2_LOSSES = "l2_weight_losses"


def _maybe_l2(var, weight_decay):
  if weight_decay:
    tf.add_to_collection(L2_LOSSES, weight_decay * tf.nn.l2_loss(var))


def l2_regularization_loss():
  """Sum of the weight-decay terms registered by the layers (0.0 when there are none)."""
  losses = tf.get_collection(L2_LOSSES)
  return tf.add_n(losses) if losses else tf.constant(0.0)


def variance_scaling(scale=2.0, mode="fan_in", distribution="truncated_normal"):
  return tf.variance_scaling_initializer(scale=scale, mode=mode, distribution=distribution)


def conv2d(x, filters, kernel_size, strides=1, padding="SAME", use_bias=False,
           kernel_initializer=None, bias_initializer=None, weight_decay=0.0, groups=1,
           dilation=1, name="conv2d"):
  """2-D convolution, NHWC. `kernel_size` is an int or (kh, kw); `groups` splits channels."""
  kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
  in_channels = x.shape[-1].value if hasattr(x.shape[-1], "value") else x.shape[-1]
  if in_channels % groups or filters % groups:
    raise ValueError("%s: channels %d -> %d not divisible by groups=%d"
                     % (name, in_channels, filters, groups))
  with tf.variable_scope(name):
    kernel = tf.get_variable(
        "kernel", [kh, kw, in_channels // groups, filters],
        initializer=kernel_initializer or variance_scaling(mode="fan_out"))
    _maybe_l2(kernel, weight_decay)
    stride = [1, strides, strides, 1]
    rate = [dilation, dilation]
    if (kh, kw, strides, dilation, groups) == (1, 1, 1, 1, 1):  # any padding is VALID
      y = ops.pointwise_conv2d(x, kernel)
    elif groups == 1:
      y = tf.nn.conv2d(x, kernel, stride, padding, dilations=[1] + rate + [1])
    else:
      xs = tf.split(x, groups, axis=3)
      ks = tf.split(kernel, groups, axis=3)
      y = tf.concat([tf.nn.conv2d(xi, ki, stride, padding) for xi, ki in zip(xs, ks)], 3)
    if use_bias:
      bias = tf.get_variable("bias", [filters],
                             initializer=bias_initializer or tf.zeros_initializer())
      y = tf.nn.bias_add(y, bias)
    return y


def dense(x, units, use_bias=True, kernel_initializer=None, bias_initializer=None,
          weight_decay=0.0, name="dense"):
  in_units = x.shape[-1].value if hasattr(x.shape[-1], "value") else x.shape[-1]
  with tf.variable_scope(name):
    kernel = tf.get_variable(
        "kernel", [in_units, units],
        initializer=kernel_initializer or tf.glorot_uniform_initializer())
    _maybe_l2(kernel, weight_decay)
    if len(x.shape) == 2:
      y = tf.matmul(x, kernel)
    else:
      y = tf.tensordot(x, kernel, [[len(x.shape) - 1], [0]])
    if use_bias:
      bias = tf.get_variable("bias", [units],
                             initializer=bias_initializer or tf.zeros_initializer())
      y = tf.nn.bias_add(y, bias)
    return y


def batch_norm(x, training, decay=0.9, epsilon=1e-5, center=True, scale=True,
               gamma_initializer=None, name="batch_norm"):
  """Fused batch norm (NHWC) with moving statistics updated through UPDATE_OPS.

  `training` is a Python bool: the train and eval graphs are built separately by the
  Estimator, so there is no need for a runtime switch.
  """
  channels = x.shape[-1].value if hasattr(x.shape[-1], "value") else x.shape[-1]
  with tf.variable_scope(name):
    gamma = tf.get_variable("gamma", [channels],
                            initializer=gamma_initializer or tf.ones_initializer(),
                            trainable=scale)
    beta = tf.get_variable("beta", [channels], initializer=tf.zeros_initializer(),
                           trainable=center)
    # Under tf.distribute each replica updates the moving statistics from its own batch;
    # MEAN keeps the mirrored copies equal (the average of the replicas' updates).
    moving_mean = tf.get_variable("moving_mean", [channels],
                                  initializer=tf.zeros_initializer(), trainable=False,
                                  aggregation=tf.VariableAggregation.MEAN)
    moving_var = tf.get_variable("moving_variance", [channels],
                                 initializer=tf.ones_initializer(), trainable=False,
                                 aggregation=tf.VariableAggregation.MEAN)
    squeeze = len(x.shape) == 2
    if squeeze:
      x = x[:, None, None, :]
    if training:
      y, mean, var = tf.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon,
                                            is_training=True)
      tf.add_to_collection(tf.GraphKeys.UPDATE_OPS,
                           tf.assign_sub(moving_mean, (1 - decay) * (moving_mean - mean)))
      tf.add_to_collection(tf.GraphKeys.UPDATE_OPS,
                           tf.assign_sub(moving_var, (1 - decay) * (moving_var - var)))
    else:
      y, _, _ = tf.nn.fused_batch_norm(x, gamma, beta, mean=moving_mean,
                                       variance=moving_var, epsilon=epsilon,
                                       is_training=False)
    return y[:, 0, 0, :] if squeeze else y


def layer_norm(x, epsilon=1e-6, name="LayerNorm"):
  """LayerNorm over the last axis with `scale`/`bias` (Flax names)."""
  channels = x.shape[-1].value if hasattr(x.shape[-1], "value") else x.shape[-1]
  with tf.variable_scope(name):
    scale = tf.get_variable("scale", [channels], initializer=tf.ones_initializer())
    bias = tf.get_variable("bias", [channels], initializer=tf.zeros_initializer())
    mean, var = tf.nn.moments(x, [len(x.shape) - 1], keep_dims=True)
    return (x - mean) * tf.rsqrt(var + epsilon) * scale + bias


def group_norm(x, groups=32, epsilon=1e-5, name="group_norm"):
  """GroupNorm over NHWC with `gamma`/`beta` (BiT names)."""
  _, h, w, c = [d.value if hasattr(d, "value") else d for d in x.shape]
  with tf.variable_scope(name):
    gamma = tf.get_variable("gamma", [c], initializer=tf.ones_initializer())
    beta = tf.get_variable("beta", [c], initializer=tf.zeros_initializer())
    shape = tf.shape(x)
    grouped = tf.reshape(x, [shape[0], shape[1], shape[2], groups, c // groups])
    mean, var = tf.nn.moments(grouped, [1, 2, 4], keep_dims=True)
    grouped = (grouped - mean) * tf.rsqrt(var + epsilon)
    return tf.reshape(grouped, shape) * gamma + beta


def dropout(x, rate, training):
  """Dropout by drop rate; on the NPU it is npu_ops.dropout (see migration.ops)."""
  return ops.dropout(x, rate, training=training)


def gelu_tanh(x):
  """GELU, tanh approximation (Flax `nn.gelu` default)."""
  return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


def count_trainable_parameters(var_list=None):
  var_list = tf.trainable_variables() if var_list is None else var_list
  return int(sum(v.shape.num_elements() for v in var_list))
