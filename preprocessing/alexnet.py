"""Caffe-AlexNet preprocessing as in MASF's `data_generator.py`.

Decode -> bilinear resize (no crop) -> subtract the ImageNet mean (RGB) -> RGB to BGR, on the
0-255 scale; training adds a random left-right flip. Decoding and resizing are split from the
float steps so that the input pipeline can cache the small uint8 images once.
"""
import tensorflow.compat.v1 as tf

IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
# MASF flips with probability 0.5 (outer cond) x 0.25 (augment's cond) x 0.5
# (random_flip_left_right), i.e. 6.25% of the training images.
REFERENCE_FLIP_PROBABILITY = 0.0625


def decode_rgb(encoded):
  """JPEG or PNG bytes -> uint8 [H, W, 3] (grey and RGBA images become RGB)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize_uint8(image, size):
  """Bilinear resize (TF1 `resize_images` semantics, no crop) to size x size, kept as uint8.

  The PACS release is already 227x227, for which this is the identity. Rounding to uint8
  at other sizes (test configurations) costs at most half a grey level.
  """
  resized = tf.image.resize_images(image, [size, size], method=tf.image.ResizeMethod.BILINEAR)
  resized = tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
  resized.set_shape([size, size, 3])
  return resized


def normalize(image):
  """uint8/float RGB [..., 3] on 0-255 -> float32 BGR with the ImageNet mean removed."""
  centered = tf.cast(image, tf.float32) - tf.constant(IMAGENET_MEAN_RGB, tf.float32)
  return tf.reverse(centered, axis=[-1])


def random_flip_batch(images, probability):
  """Flips each image of [N, H, W, C] left-right independently with `probability`.

  Drawing all flips in one op (rather than one random op per image inside per-domain
  tf.data functions) keeps the draws independent across domains under a graph seed.
  """
  if probability <= 0.0:
    return images
  flip = tf.random.uniform(tf.shape(images)[:1], 0.0, 1.0) < probability
  flip = tf.broadcast_to(flip[:, None, None, None], tf.shape(images))
  where = getattr(tf, "where_v2", tf.where)  # TF 1.15's tf.where warns; same result here
  return where(flip, tf.reverse(images, axis=[2]), images)


def preprocess_batch_for_train(images_uint8, flip_probability=REFERENCE_FLIP_PROBABILITY):
  return normalize(random_flip_batch(images_uint8, flip_probability))


def preprocess_for_eval(image_uint8):
  return normalize(image_uint8)
