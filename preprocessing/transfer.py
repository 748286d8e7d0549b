"""Fine-tuning preprocessing of the ViT and BiT recipes (encoded image -> [-1, 1] float).

ViT (vit_jax `input_pipeline.py`):
  train: random crop from `sample_distorted_bounding_box` (area 5%-100%, no object to
         cover) -> resize to the crop size -> random left-right flip;
  eval:  resize to the crop size (no central crop).
BiT (big_transfer `input_pipeline_tf2_or_jax.py`, BiT-HyperRule):
  train: resize to resize_size -> random crop of crop_size -> random left-right flip
         (upstream flips every image with `flip_left_right`; a random flip is meant);
  eval:  resize to crop_size.
Both then scale to [-1, 1], the range the official `.npz` weights expect (the TF-Hub BiT
SavedModels expect [0, 1]: models.md §3.7). Resizing is bilinear with half-pixel centres
(TF2 `tf.image.resize`), spelled so that TF 1.15 computes the same.
MixUp (`mixup`) mixes a batch with its reverse, one Beta(alpha, alpha) weight per batch.
"""
import tensorflow.compat.v1 as tf

VIT_AREA_RANGE = (0.05, 1.0)


def decode(encoded):
  """JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, 3]."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize(image, size):
  """Bilinear resize (half-pixel centres) of [h, w, c] to [size, size, c] float32."""
  resized = tf.image.resize_bilinear(tf.cast(image, tf.float32)[None], [size, size],
                                     half_pixel_centers=True)
  return resized[0]


def to_minus_one_one(image):
  return (tf.cast(image, tf.float32) - 127.5) / 127.5


def inception_crop(image, area_range=VIT_AREA_RANGE):
  begin, size, _ = tf.image.sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4], tf.float32), area_range=area_range,
      min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, size)
  crop.set_shape([None, None, image.shape[-1]])
  return crop


def vit_train(encoded, crop_size):
  image = resize(inception_crop(decode(encoded)), crop_size)
  return to_minus_one_one(tf.image.random_flip_left_right(image))


def vit_eval(encoded, crop_size):
  return to_minus_one_one(resize(decode(encoded), crop_size))


def bit_train(encoded, resize_size, crop_size):
  image = resize(decode(encoded), resize_size)
  image = tf.image.random_crop(image, [crop_size, crop_size, 3])
  return to_minus_one_one(tf.image.random_flip_left_right(image))


def bit_eval(encoded, crop_size):
  return to_minus_one_one(resize(decode(encoded), crop_size))


def sample_beta(alpha):
  """One Beta(alpha, alpha) sample from two Gamma(alpha) samples."""
  first = tf.random.gamma([], alpha)
  second = tf.random.gamma([], alpha)
  return first / (first + second)


def mixup(images, one_hot_labels, alpha):
  """(images, labels) mixed with the batch reversed: weight ~ Beta(alpha, alpha)."""
  weight = sample_beta(alpha)
  images = weight * images + (1.0 - weight) * tf.reverse(images, axis=[0])
  labels = weight * one_hot_labels + (1.0 - weight) * tf.reverse(one_hot_labels, axis=[0])
  return images, labels
