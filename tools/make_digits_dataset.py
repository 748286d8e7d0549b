"""A small real dataset in ImageNet tfrecord format: scikit-learn's handwritten digits.

    python tools/make_digits_dataset.py --output_dir=/tmp/digits

`sklearn.datasets.load_digits` ships 1,797 real 8x8 greyscale digits (10 classes) inside
scikit-learn, so no download is needed. Each is upscaled (bilinear) to an RGB JPEG of
--image_size pixels and written through tools/build_image_tfrecords.py's writer: classes
"0".."9" get labels 1..10 (so models use num_label_classes=11, label 0 unused, as for
ImageNet), and a deterministic per-class split holds out --validation_fraction.
"""
import argparse
import os
import sys

from absl import logging
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_fns import imagenet  # pylint: disable=g-import-not-at-top
from tools import build_image_tfrecords as builder  # pylint: disable=g-import-not-at-top

NUM_CLASSES = 10
DIGITS_MAX_VALUE = 16.0  # load_digits pixels are counts in 0..16


def digit_to_rgb(pixels, image_size):
  """8x8 array in 0..16 -> uint8 [image_size, image_size, 3]."""
  grey = np.round(np.asarray(pixels, np.float64) * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)
  grey = Image.fromarray(grey, "L").resize((image_size, image_size), Image.BILINEAR)
  return np.stack([np.asarray(grey)] * 3, axis=-1)


def make_digits_dataset(output_dir, image_size=64, validation_fraction=0.2, seed=0,
                        num_train_shards=2, num_validation_shards=1, overwrite=False):
  """Writes the digits dataset; returns the builder's summary dict."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  if image_size < 8:
    raise ValueError("image_size must be >= 8 (the digits are 8x8), got %r" % (image_size,))
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError("validation_fraction must be in (0, 1), got %r" % (validation_fraction,))
  digits = load_digits()
  class_names = [str(digit) for digit in range(NUM_CLASSES)]
  items_by_class = {name: [] for name in class_names}
  for index, (pixels, digit) in enumerate(zip(digits.images, digits.target)):
    name = str(int(digit))
    items_by_class[name].append(builder.ImageItem(
        pixels, int(digit) + 1, name, "digits/%s/%04d.jpg" % (name, index)))
  train, validation = builder.split_items(items_by_class, validation_fraction, seed)

  def load_digit(pixels):
    return builder.encode_rgb_array(digit_to_rgb(pixels, image_size)), image_size, image_size

  return builder.write_dataset(
      class_names, {imagenet.TRAIN_PREFIX: train, imagenet.VALIDATION_PREFIX: validation},
      output_dir,
      {imagenet.TRAIN_PREFIX: num_train_shards,
       imagenet.VALIDATION_PREFIX: num_validation_shards},
      load_digit, strict=True, overwrite=overwrite, progress_every=0)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--validation_fraction", type=float, default=0.2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_train_shards", type=int, default=2)
  parser.add_argument("--num_validation_shards", type=int, default=1)
  parser.add_argument("--overwrite", action="store_true", help="replace existing shards")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    summary = make_digits_dataset(args.output_dir, args.image_size, args.validation_fraction,
                                  args.seed, args.num_train_shards, args.num_validation_shards,
                                  args.overwrite)
  except ValueError as error:
    print("error: %s" % error, file=sys.stderr)
    return 1
  print("digits dataset in %s: %s; use num_label_classes=%d" % (
      summary["output_dir"],
      ", ".join("%s: %d records" % item for item in sorted(summary["counts"].items())),
      NUM_CLASSES + 1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
