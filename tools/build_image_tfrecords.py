"""Folder of class sub-folders -> ImageNet-format sharded tfrecords plus labels.txt.

    python tools/build_image_tfrecords.py --input_dir=photos --output_dir=records \
        [--validation_fraction=0.1 | --validation_dir=photos_val] [--num_train_shards=8]

Writes `<output_dir>/train-%05d-of-%05d`, `<output_dir>/validation-%05d-of-%05d` in the
TF-slim / tpu `imagenet_to_gcs.py` format (keys in input_fns/imagenet.py), with 1-based
labels in sorted class-name order, `<output_dir>/labels.txt` whose line i names label i,
and `<output_dir>/tfrecord_manifest.json` with each shard's record count and byte size
(checked by the models before training: a shard cut short is an error, not less data).
Images are .jpg/.jpeg/.png in any letter case; RGB JPEGs are stored as they are, anything
else (PNG, CMYK, grey, a JPEG without its end marker) is re-encoded as an RGB JPEG.
Unreadable images are reported by path, skipped and counted, or fatal with --strict.
Shards are written under temporary names and renamed when the split is complete, so a
failed build never leaves shards that the input pipeline would pick up.
"""
import argparse
import collections
import io
import os
import random
import sys
import time

from absl import logging
import numpy as np
from PIL import Image
import tensorflow.compat.v1 as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_fns import imagenet  # pylint: disable=g-import-not-at-top
from preprocessing import inception  # pylint: disable=g-import-not-at-top

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_JPEG_QUALITY = 95

# One image to write: `source` is what `load_fn(source)` turns into (jpeg_bytes, height,
# width); `filename` is stored as image/filename and used in messages.
ImageItem = collections.namedtuple("ImageItem", "source label class_name filename")


class CorruptImageError(ValueError):
  """An image that cannot be decoded; the message names the file."""


def encode_rgb_array(array, quality=DEFAULT_JPEG_QUALITY):
  """uint8 [H, W, 3] -> JPEG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB").save(buffer, "JPEG",
                                                                 quality=quality)
  return buffer.getvalue()


def load_image_file(path, quality=DEFAULT_JPEG_QUALITY):
  """Reads and fully decodes an image file -> (RGB JPEG bytes, height, width)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    image = Image.open(io.BytesIO(data))
    image.load()
    keep_bytes = (image.format == "JPEG" and image.mode == "RGB" and
                  inception.jpeg_has_end_marker(data))
    if not keep_bytes:
      buffer = io.BytesIO()
      image.convert("RGB").save(buffer, "JPEG", quality=quality)
      data = buffer.getvalue()
    return data, image.height, image.width
  except (IOError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise CorruptImageError("corrupt image %s: %s" % (path, error))


def _bytes_feature(value):
  if not isinstance(value, bytes):
    value = value.encode("utf-8")
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(encoded_jpeg, height, width, label, class_name, filename):
  """The tf.train.Example of one image (keys as written by imagenet_to_gcs.py)."""
  return tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": _bytes_feature(encoded_jpeg),
      "image/format": _bytes_feature(b"JPEG"),
      "image/colorspace": _bytes_feature(b"RGB"),
      "image/channels": _int64_feature(3),
      "image/height": _int64_feature(height),
      "image/width": _int64_feature(width),
      "image/class/label": _int64_feature(label),
      "image/class/synset": _bytes_feature(class_name),
      "image/class/text": _bytes_feature(class_name),
      "image/filename": _bytes_feature(filename),
  }))


def shard_name(split, index, num_shards):
  return "%s-%05d-of-%05d" % (split, index, num_shards)


def existing_shards(output_dir, split):
  found = []
  for pattern in imagenet.file_patterns(output_dir, split == imagenet.TRAIN_PREFIX):
    found.extend(imagenet.glob(pattern))
  return sorted(found)


def write_split(items, output_dir, split, num_shards, load_fn, strict=False,
                progress_every=1000):
  """Writes `items` (ImageItems, already shuffled) to `num_shards` shards of `split`.

  Returns (shard paths, records written to each, [(filename, reason) of skipped images]).
  """
  num_shards = max(1, min(num_shards, len(items)))
  final_paths = [os.path.join(output_dir, shard_name(split, i, num_shards))
                 for i in range(num_shards)]
  temp_paths = [os.path.join(output_dir, ".tmp-" + os.path.basename(p)) for p in final_paths]
  skipped = []
  written = [0] * num_shards
  start = time.time()
  try:
    for shard, temp_path in enumerate(temp_paths):
      begin = shard * len(items) // num_shards
      end = (shard + 1) * len(items) // num_shards
      with tf.io.TFRecordWriter(temp_path) as writer:
        for position in range(begin, end):
          item = items[position]
          try:
            encoded, height, width = load_fn(item.source)
          except CorruptImageError as error:
            if strict:
              raise CorruptImageError("%s (--strict: stopping)" % error)
            logging.warning("Skipping %s", error)
            skipped.append((item.filename, str(error)))
            continue
          writer.write(make_example(encoded, height, width, item.label, item.class_name,
                                    item.filename).SerializeToString())
          written[shard] += 1
          if progress_every and (position + 1) % progress_every == 0:
            rate = (position + 1) / max(time.time() - start, 1e-6)
            logging.info("%s: %d/%d images (%.0f/s, about %.0f s left)", split, position + 1,
                         len(items), rate, (len(items) - position - 1) / rate)
    for temp_path, final_path in zip(temp_paths, final_paths):
      tf.io.gfile.rename(temp_path, final_path, overwrite=True)
  finally:
    for temp_path in temp_paths:
      if tf.io.gfile.exists(temp_path):
        tf.io.gfile.remove(temp_path)
  return final_paths, written, skipped


def write_labels_file(output_dir, class_names):
  path = os.path.join(output_dir, imagenet.LABELS_FILENAME)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(name + "\n" for name in class_names))
  return path


def write_dataset(class_names, splits, output_dir, num_shards, load_fn, strict=False,
                  overwrite=False, progress_every=1000):
  """Writes labels.txt, each split of `splits` ({split: [ImageItem]}) and the manifest of
  the shards written; returns a summary.

  `num_shards` maps split -> shard count. Existing shards of a split are an error unless
  `overwrite`, since leftovers with another shard count would be globbed together.
  """
  tf.io.gfile.makedirs(output_dir)
  for split in splits:
    old = existing_shards(output_dir, split)
    if old and not overwrite:
      raise ValueError("%s already has %s shards (e.g. %s); pass --overwrite to replace them"
                       % (output_dir, split, old[0]))
    for path in old:
      tf.io.gfile.remove(path)
  manifest = os.path.join(output_dir, imagenet.MANIFEST_FILENAME)
  if tf.io.gfile.exists(manifest):  # it described the shards just removed
    tf.io.gfile.remove(manifest)
  summary = {"output_dir": output_dir, "class_names": list(class_names),
             "labels_file": write_labels_file(output_dir, class_names),
             "files": {}, "counts": {}, "skipped": []}
  records_by_file = {}
  for split, items in splits.items():
    if not items:
      logging.warning("No %s images: no %s shards written", split, split)
      continue
    paths, written, skipped = write_split(items, output_dir, split, num_shards[split],
                                          load_fn, strict, progress_every)
    summary["files"][split] = paths
    summary["counts"][split] = sum(written)
    summary["skipped"].extend(skipped)
    records_by_file.update(zip(paths, written))
  summary["manifest"] = imagenet.write_manifest(output_dir, records_by_file)
  logging.info("Wrote %s to %s (%d classes, labels 1..%d in %s)",
               ", ".join("%d %s records in %d shards" % (summary["counts"][s], s,
                                                         len(summary["files"][s]))
                         for s in summary["counts"]),
               output_dir, len(class_names), len(class_names), summary["labels_file"])
  if summary["skipped"]:
    logging.warning("Skipped %d corrupt images:\n  %s", len(summary["skipped"]),
                    "\n  ".join(reason for _, reason in summary["skipped"]))
  return summary


def split_items(items_by_class, validation_fraction, seed):
  """Per-class deterministic split -> (train items, validation items), each shuffled."""
  rng = random.Random(seed)
  train, validation = [], []
  for class_name in sorted(items_by_class):
    items = list(items_by_class[class_name])
    rng.shuffle(items)
    num_validation = int(round(len(items) * validation_fraction))
    validation.extend(items[:num_validation])
    train.extend(items[num_validation:])
  rng.shuffle(train)
  rng.shuffle(validation)
  return train, validation


def list_class_folders(root):
  """{class name: sorted image paths} of root's sub-folders; counts other files."""
  if not os.path.isdir(root):
    raise ValueError("image folder %s does not exist or is not a directory" % root)
  classes = {}
  ignored = 0
  for entry in sorted(os.listdir(root)):
    folder = os.path.join(root, entry)
    if entry.startswith("."):
      continue
    if not os.path.isdir(folder):
      ignored += 1
      continue
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder):
      dirnames.sort()
      for name in sorted(filenames):
        if name.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(dirpath, name))
        else:
          ignored += 1
    if not paths:
      logging.warning("Class folder %s has no .jpg/.jpeg/.png images", folder)
    classes[entry] = paths
  if not classes:
    raise ValueError("image folder %s has no class sub-folders" % root)
  if ignored:
    logging.info("Ignored %d files in %s that are not .jpg/.jpeg/.png in a class folder",
                 ignored, root)
  return classes


def _items(paths_by_class, labels, root):
  return {name: [ImageItem(path, labels[name], name, os.path.relpath(path, root))
                 for path in paths]
          for name, paths in paths_by_class.items()}


def build_image_tfrecords(input_dir, output_dir, validation_fraction=None, validation_dir=None,
                          num_train_shards=8, num_validation_shards=2, seed=0, strict=False,
                          overwrite=False, jpeg_quality=DEFAULT_JPEG_QUALITY,
                          progress_every=1000):
  """Builds the dataset; returns the summary dict of `write_dataset`.

  Validation images come either from a per-class random `validation_fraction` of input_dir
  (default 0.1) or from `validation_dir` (same class sub-folder names), not both.
  """
  if validation_dir is not None and validation_fraction:
    raise ValueError("give either validation_fraction or validation_dir, not both")
  if validation_fraction is None:
    validation_fraction = 0.0 if validation_dir else DEFAULT_VALIDATION_FRACTION
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError("validation_fraction must be in [0, 1), got %r" % (validation_fraction,))
  if num_train_shards < 1 or num_validation_shards < 1:
    raise ValueError("shard counts must be >= 1, got num_train_shards=%r, "
                     "num_validation_shards=%r" % (num_train_shards, num_validation_shards))
  train_paths = list_class_folders(input_dir)
  class_names = sorted(train_paths)
  labels = {name: index + 1 for index, name in enumerate(class_names)}
  train_by_class = _items(train_paths, labels, input_dir)
  if sum(len(paths) for paths in train_paths.values()) == 0:
    raise ValueError("image folder %s has no .jpg/.jpeg/.png images" % input_dir)
  if validation_dir is not None:
    validation_paths = list_class_folders(validation_dir)
    unknown = sorted(set(validation_paths) - set(class_names))
    if unknown:
      raise ValueError("validation_dir %s has class folders missing from %s: %s" %
                       (validation_dir, input_dir, ", ".join(unknown)))
    train, _ = split_items(train_by_class, 0.0, seed)
    validation, _ = split_items(_items(validation_paths, labels, validation_dir), 0.0, seed)
  else:
    train, validation = split_items(train_by_class, validation_fraction, seed)
  logging.info("%d classes; %d training and %d validation images", len(class_names),
               len(train), len(validation))
  return write_dataset(
      class_names, {imagenet.TRAIN_PREFIX: train, imagenet.VALIDATION_PREFIX: validation},
      output_dir,
      {imagenet.TRAIN_PREFIX: num_train_shards,
       imagenet.VALIDATION_PREFIX: num_validation_shards},
      lambda path: load_image_file(path, jpeg_quality), strict, overwrite, progress_every)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input_dir", required=True, help="folder of class sub-folders")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--validation_fraction", type=float, default=None,
                      help="per-class fraction held out for validation (default 0.1)")
  parser.add_argument("--validation_dir", default=None,
                      help="explicit validation images (class sub-folders)")
  parser.add_argument("--num_train_shards", type=int, default=8)
  parser.add_argument("--num_validation_shards", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--strict", action="store_true", help="stop at the first corrupt image")
  parser.add_argument("--overwrite", action="store_true", help="replace existing shards")
  parser.add_argument("--jpeg_quality", type=int, default=DEFAULT_JPEG_QUALITY)
  parser.add_argument("--progress_every", type=int, default=1000)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    summary = build_image_tfrecords(
        args.input_dir, args.output_dir, args.validation_fraction, args.validation_dir,
        args.num_train_shards, args.num_validation_shards, args.seed, args.strict,
        args.overwrite, args.jpeg_quality, args.progress_every)
  except ValueError as error:
    print("error: %s" % error, file=sys.stderr)
    return 1
  print("%s; %d corrupt images skipped" % (
      ", ".join("%s: %d records" % item for item in sorted(summary["counts"].items())),
      len(summary["skipped"])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
