"""Builds the TFDS `tf_flowers` 3.0.1 layout from a folder of flower photos.

    python -m tools.build_tfds_flowers --photos=../shared/data/flowers_kaggle_128 --output=DIR

--photos holds one sub-folder of .jpg files per class (daisy, dandelion, roses, sunflowers,
tulips; the singular folder names of the Kaggle set are accepted). DIR/tf_flowers/3.0.1
then holds what `vit.py` / `bit.py --dataset=tf_flowers --data_dir=DIR` read (layout in
input_fns/tf_flowers.py). Prints each file written; an error is one line naming the flag,
exit status 1.
"""
import argparse
import os
import sys

import tensorflow.compat.v1 as tf

from input_fns import tf_flowers
from input_fns import tfds_layout


def build(photos, output, num_shards=tf_flowers.NUM_SHARDS, seed=0, max_per_class=None):
  """Builds DIR/tf_flowers/3.0.1; returns the lines that describe it. ValueError (one
  line naming the flag) on a missing or empty photo folder or an output folder in use."""
  if not os.path.isdir(photos):
    raise ValueError("--photos=%s is not a folder" % photos)
  for name, value in (("num_shards", num_shards), ("max_per_class", max_per_class)):
    if value is not None and value < 1:
      raise ValueError("--%s=%d must be >= 1" % (name, value))
  target = os.path.join(output, tf_flowers.NAME, tf_flowers.VERSION)
  # Shards of an earlier build that this one does not overwrite would be read as part of it.
  if os.path.isdir(target) and os.listdir(target):
    raise ValueError("--output=%s already holds %s: remove it or choose another folder"
                     % (output, target))
  try:
    path = tf_flowers.build_from_image_folder(photos, output, num_shards, seed,
                                              max_per_class)
  except ValueError as error:
    raise ValueError("--photos: %s" % error)
  except (OSError, tf.errors.OpError) as error:
    reason = getattr(error, "message", None) or str(error)
    raise ValueError("--output=%s: cannot write (%s)" % (output, reason.splitlines()[0]))
  dataset = tfds_layout.TfdsDataset(path)
  shards = dataset.shard_files("train")
  lengths = dataset.shard_lengths("train")
  lines = ["wrote %s: %d examples of %d classes (%s)" % (
      path, sum(lengths), len(tf_flowers.CLASS_NAMES), ", ".join(tf_flowers.CLASS_NAMES))]
  lines.extend("  %s: %d examples" % (os.path.basename(shard), length)
               for shard, length in zip(shards, lengths))
  lines.extend("  %s" % name for name in sorted(os.listdir(path))
               if os.path.join(path, name) not in shards)
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--photos", required=True, help="folder of class sub-folders of .jpg")
  parser.add_argument("--output", required=True, help="TFDS data dir to write into")
  parser.add_argument("--num_shards", type=int, default=tf_flowers.NUM_SHARDS)
  parser.add_argument("--seed", type=int, default=0, help="seed of the example order")
  parser.add_argument("--max_per_class", type=int, default=None,
                      help="keep the first N photos (sorted) of each class")
  args = parser.parse_args(argv)
  try:
    lines = build(args.photos, args.output, args.num_shards, args.seed, args.max_per_class)
  except ValueError as error:
    print("error: %s" % error, file=sys.stderr)
    return 1
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
