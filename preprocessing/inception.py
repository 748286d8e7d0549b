"""Inception preprocessing, as in the AmoebaNet copy of `inception_preprocessing.py` (tpu repo).

Training: random crop from `sample_distorted_bounding_box` over the whole image (decoded with
`decode_and_crop_jpeg` for JPEGs, so only the crop is decoded), bilinear resize, random
left-right flip, colour distortion (the fast YCbCr-offset variant by default), scale to
[-1, 1]. Evaluation: central crop of 0.875, bilinear resize, scale to [-1, 1].

Encoded images may be JPEG or PNG. Before decoding, `check_encoded_image` asserts that the
bytes are one of the two and are not truncated, so a bad record fails with its name in the
message instead of the decoder's anonymous "Invalid JPEG data".
"""
import tensorflow.compat.v1 as tf

# sample_distorted_bounding_box settings of the AmoebaNet copy (area range is
# (min_object_covered, 1.0) there, so 0.1 rather than slim's 0.05).
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3. / 4., 4. / 3.)
AREA_RANGE = (0.1, 1.0)
MAX_ATTEMPTS = 100
EVAL_CENTRAL_FRACTION = 0.875
BRIGHTNESS_MAX_DELTA = 32. / 255.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # The IEND chunk type plus its (constant) CRC ends every PNG.
# A complete JPEG has its end-of-image marker FF D9 at the end; some writers append padding
# after it, so the marker is searched for in this many trailing bytes.
JPEG_EOI_SEARCH_BYTES = 65536


def jpeg_has_end_marker(data):
  """Python twin of the in-graph truncation check (used by the tfrecord builder)."""
  return b"\xff\xd9" in data[-JPEG_EOI_SEARCH_BYTES:]


def _jpeg_has_end_marker(image_bytes):
  length = tf.strings.length(image_bytes)
  tail = tf.strings.substr(image_bytes, tf.maximum(length - JPEG_EOI_SEARCH_BYTES, 0),
                           JPEG_EOI_SEARCH_BYTES)
  tail = tf.io.decode_raw(tail, tf.uint8)
  return tf.reduce_any(tf.logical_and(tf.equal(tail[:-1], 0xFF), tf.equal(tail[1:], 0xD9)))


def _is_png(image_bytes):
  return tf.equal(tf.strings.substr(image_bytes, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)


def _png_is_complete(image_bytes):
  length = tf.strings.length(image_bytes)
  tail = tf.strings.substr(image_bytes, tf.maximum(length - len(PNG_END), 0), len(PNG_END))
  return tf.equal(tail, PNG_END)


def check_encoded_image(image_bytes, image_name=None):
  """Returns `image_bytes` guarded by assertions that it is a complete JPEG or PNG.

  `image_name` (a string tensor, e.g. the record's image/filename) is put in the error.
  """
  if image_name is None:
    image_name = tf.constant("<unnamed>")
  is_jpeg = tf.io.is_jpeg(image_bytes)
  is_png = _is_png(image_bytes)
  known_format = tf.Assert(
      tf.logical_or(is_jpeg, is_png),
      [tf.strings.join(["image/encoded of record ", image_name, " is neither JPEG nor PNG"])])
  complete = tf.cond(is_jpeg, lambda: _jpeg_has_end_marker(image_bytes),
                     lambda: _png_is_complete(image_bytes))
  not_truncated = tf.Assert(
      tf.logical_or(complete, tf.logical_not(tf.logical_or(is_jpeg, is_png))),
      [tf.strings.join(["image/encoded of record ", image_name,
                        " is truncated (no end-of-image marker)"])])
  with tf.control_dependencies([known_format, not_truncated]):
    return tf.identity(image_bytes)


def _decode_rgb(image_bytes):
  """Decodes a JPEG or PNG to uint8 [height, width, 3] (static rank, unlike decode_image)."""
  return tf.cond(tf.io.is_jpeg(image_bytes),
                 lambda: tf.image.decode_jpeg(image_bytes, channels=3),
                 lambda: tf.image.decode_png(image_bytes, channels=3))


def _distorted_crop_window(image_shape):
  """Samples an Inception-style crop; returns (offset [y, x, 0], size [h, w, -1])."""
  whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
  begin, size, _ = tf.image.sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=whole_image,
      min_object_covered=MIN_OBJECT_COVERED,
      aspect_ratio_range=ASPECT_RATIO_RANGE,
      area_range=AREA_RANGE,
      max_attempts=MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def _decode_and_random_crop(image_bytes):
  """Decodes only the sampled crop of a JPEG; PNGs are decoded whole, then cropped."""

  def jpeg_crop():
    begin, size = _distorted_crop_window(tf.image.extract_jpeg_shape(image_bytes))
    crop_window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.image.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)

  def png_crop():
    image = tf.image.decode_png(image_bytes, channels=3)
    begin, size = _distorted_crop_window(tf.shape(image))
    return tf.slice(image, begin, size)

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg_crop, png_crop)


def _resize(image, image_size, method_index=None):
  """Resizes [h, w, 3] float to [image_size, image_size, 3]; bilinear unless a method index."""
  size = [image_size, image_size]
  batched = tf.expand_dims(image, 0)
  if method_index is None:
    return tf.image.resize_bilinear(batched, size, align_corners=False)[0]
  resizers = [
      lambda: tf.image.resize_bilinear(batched, size, align_corners=False),
      lambda: tf.image.resize_nearest_neighbor(batched, size, align_corners=False),
      lambda: tf.image.resize_bicubic(batched, size, align_corners=False),
      lambda: tf.image.resize_area(batched, size, align_corners=False),
  ]
  branches = [(tf.equal(method_index, i), fn) for i, fn in enumerate(resizers)]
  return tf.case(branches, exclusive=True)[0]


def distort_color_fast(image, cb_distortion_range=0.1, cr_distortion_range=0.1):
  """Random brightness plus random Cb/Cr offsets mapped to RGB offsets; clips to [0, 1]."""
  brightness = tf.random.uniform([], -BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA)
  cb = tf.random.uniform([], -cb_distortion_range, cb_distortion_range)
  cr = tf.random.uniform([], -cr_distortion_range, cr_distortion_range)
  # YCbCr -> RGB conversion (ITU-R BT.601 / JFIF) applied to the chroma offsets only.
  offsets = tf.stack([
      1.402 * cr + brightness,
      -0.344136 * cb - 0.714136 * cr + brightness,
      1.772 * cb + brightness,
  ])
  return tf.clip_by_value(image + offsets, 0.0, 1.0)


def distort_color(image, color_ordering=0, fast_mode=True):
  """The classic Inception colour distortion; fast mode skips hue and contrast."""
  if fast_mode:
    orderings = [("brightness", "saturation"), ("saturation", "brightness")]
  else:
    orderings = [
        ("brightness", "saturation", "hue", "contrast"),
        ("saturation", "brightness", "contrast", "hue"),
        ("contrast", "hue", "brightness", "saturation"),
        ("hue", "saturation", "contrast", "brightness"),
    ]
  if not 0 <= color_ordering < len(orderings):
    raise ValueError("color_ordering must be in [0, %d), got %r" %
                     (len(orderings), color_ordering))
  ops = {
      "brightness": lambda x: tf.image.random_brightness(x, max_delta=BRIGHTNESS_MAX_DELTA),
      "saturation": lambda x: tf.image.random_saturation(x, lower=0.5, upper=1.5),
      "hue": lambda x: tf.image.random_hue(x, max_delta=0.2),
      "contrast": lambda x: tf.image.random_contrast(x, lower=0.5, upper=1.5),
  }
  for name in orderings[color_ordering]:
    image = ops[name](image)
  return tf.clip_by_value(image, 0.0, 1.0)


def _random_color_distortion(image, fast_mode):
  """Classic distortion with a random ordering (one ordering in fast mode, as upstream)."""
  if fast_mode:
    return distort_color(image, 0, fast_mode=True)
  ordering = tf.random.uniform([], maxval=4, dtype=tf.int32)
  branches = [(tf.equal(ordering, i), (lambda i=i: distort_color(image, i, fast_mode=False)))
              for i in range(4)]
  return tf.case(branches, exclusive=True)


def _scale_to_minus_one_one(image):
  return (image - 0.5) * 2.0


def preprocess_for_train(image_bytes, image_size, use_fast_color_distort=True,
                         cb_distortion_range=0.1, cr_distortion_range=0.1, fast_mode=True):
  """Encoded (already checked) bytes -> float32 [image_size, image_size, 3] in [-1, 1]."""
  image = tf.image.convert_image_dtype(_decode_and_random_crop(image_bytes), tf.float32)
  if fast_mode:
    image = _resize(image, image_size)
  else:
    image = _resize(image, image_size, tf.random.uniform([], maxval=4, dtype=tf.int32))
  image = tf.image.random_flip_left_right(image)
  if use_fast_color_distort:
    image = distort_color_fast(image, cb_distortion_range, cr_distortion_range)
  else:
    image = _random_color_distortion(image, fast_mode)
  image = _scale_to_minus_one_one(image)
  image.set_shape([image_size, image_size, 3])
  return image


def preprocess_for_eval(image_bytes, image_size):
  """Encoded (already checked) bytes -> central 87.5% crop, resized, in [-1, 1]."""
  image = tf.image.convert_image_dtype(_decode_rgb(image_bytes), tf.float32)
  image = tf.image.central_crop(image, central_fraction=EVAL_CENTRAL_FRACTION)
  image = _scale_to_minus_one_one(_resize(image, image_size))
  image.set_shape([image_size, image_size, 3])
  return image


def preprocess_image(image_bytes, is_training, image_size, use_fast_color_distort=True,
                     cb_distortion_range=0.1, cr_distortion_range=0.1, fast_mode=True,
                     image_name=None):
  """Encoded JPEG/PNG scalar string -> float32 [image_size, image_size, 3] in [-1, 1].

  `fast_mode` (upstream default True) keeps bilinear resizing and, when the fast colour
  distortion is off, the single brightness/saturation ordering; False samples among 4
  resize methods and 4 colour orderings. `image_name` names the image in errors.
  """
  if image_size <= 0:
    raise ValueError("image_size must be positive, got %r" % (image_size,))
  for name, value in (("cb_distortion_range", cb_distortion_range),
                      ("cr_distortion_range", cr_distortion_range)):
    if value < 0:
      raise ValueError("%s must be >= 0, got %r" % (name, value))
  image_bytes = check_encoded_image(image_bytes, image_name)
  if is_training:
    return preprocess_for_train(image_bytes, image_size, use_fast_color_distort,
                                cb_distortion_range, cr_distortion_range, fast_mode)
  return preprocess_for_eval(image_bytes, image_size)
