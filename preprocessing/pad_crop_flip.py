"""CIFAR-style augmentation for small images, vectorised over a batch.

Per image: zero-pad by `pad` pixels on every side, take a random crop of the original size,
flip left-right with probability 1/2, then standardise (tf.image.per_image_standardization).
This is the ProtoAttend `parse_function_train` (pad 28 -> 32, crop 28), but applied to a
whole batch at once: per-element `map` calls would cost more CPU time than the crops.
"""
import tensorflow.compat.v1 as tf


def standardize(images):
  """Per-image standardisation of a [batch, h, w, c] (any dtype) batch -> float32."""
  return tf.image.per_image_standardization(tf.cast(images, tf.float32))


def _op_seed(seed, offset):
  return None if seed is None else seed + offset


def random_crop_after_padding(images, pad, seed=None):
  """Pads [batch, h, w, c] by `pad` on each side and crops each image at its own offset."""
  static = images.shape.as_list()
  height, width = static[1], static[2]
  batch = tf.shape(images)[0]
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  offset_y = tf.random.uniform([batch], 0, 2 * pad + 1, dtype=tf.int32,
                               seed=_op_seed(seed, 0))
  offset_x = tf.random.uniform([batch], 0, 2 * pad + 1, dtype=tf.int32,
                               seed=_op_seed(seed, 1))
  rows = offset_y[:, None] + tf.range(height)[None, :]
  cols = offset_x[:, None] + tf.range(width)[None, :]
  cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
  cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
  cropped.set_shape(static)
  return cropped


def random_flip_left_right(images, seed=None):
  batch = tf.shape(images)[0]
  flip = tf.random.uniform([batch], seed=seed) < 0.5
  return tf.where(flip, tf.reverse(images, axis=[2]), images)


def train_preprocess(images, pad=2, seed=None):
  """Training augmentation: pad, random crop, random flip, standardise.

  Give different `seed`s to pipelines that must not share random draws (tf.data functions
  otherwise derive the same op seeds from the graph seed).
  """
  images = tf.cast(images, tf.float32)
  images = random_crop_after_padding(images, pad, seed=seed)
  images = random_flip_left_right(images, seed=_op_seed(seed, 2))
  return standardize(images)


def eval_preprocess(images):
  """Evaluation / prediction: standardisation only."""
  return standardize(images)
