"""Builds the TFDS layout of CIFAR-10/100 from the "python version" pickles.

    python -m tools.build_cifar_tfrecords --source_dir=cifar-100-python --output_dir=/data/tfds

Sources (the archives' folders):
  cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
  cifar-100-python/{train, test, meta}
Each batch is a pickled dict with b"data" (uint8 [N, 3072], channel-major 32x32) and
b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100). The pickles are read with an
unpickler that can only rebuild what these files contain (dicts, lists, bytes, numbers and
numpy arrays), so a tampered file cannot run code; the content is then checked.

`convert` writes <output_dir>/<cifar10|cifar100>/3.0.2/ in the TFDS layout (keys `image`
= PNG, `label`, `id`), examples in the files' order, which input_fns/cifar.py reads with
TFDS split strings (ViT: `train[:98%]` / `test`). Prints the folder written.
"""
import argparse
import io
import os
import pickle

import numpy as np
from PIL import Image
import tensorflow.compat.v1 as tf

from input_fns import cifar
from input_fns import tfds_layout

_PIXELS = 32 * 32 * 3

# The release of each input_fns.cifar.VARIANTS name: its pickle files and sizes.
RELEASES = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "splits": {"train": ["data_batch_%d" % i for i in range(1, 6)],
                   "test": ["test_batch"]},
        "meta": "batches.meta", "names_key": b"label_names", "labels_key": b"labels",
        "num_classes": 10, "num_examples": {"train": 50000, "test": 10000},
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "splits": {"train": ["train"], "test": ["test"]},
        "meta": "meta", "names_key": b"fine_label_names", "labels_key": b"fine_labels",
        "num_classes": 100, "num_examples": {"train": 50000, "test": 10000},
    },
}

# (module, name) pairs a CIFAR pickle needs: numpy array reconstruction, and the bytes
# decoder Python 3 uses when it writes bytes with protocol 2 (re-pickled copies).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _CifarUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError("global %s.%s is not allowed in a CIFAR pickle"
                                   % (module, name))
    return pickle.Unpickler.find_class(self, module, name)


def load_pickle(path):
  """The dict stored in a CIFAR pickle file (bytes keys), via the restricted unpickler."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    content = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
    raise ValueError("%s is not a CIFAR python pickle: %s" % (path, error))
  if not isinstance(content, dict):
    raise ValueError("%s holds a %s, expected the CIFAR dict" % (path, type(content).__name__))
  return content


def load_batch(path, labels_key, num_classes):
  """(uint8 images [N, 32, 32, 3], int64 labels [N]) of one CIFAR batch file."""
  content = load_pickle(path)
  for key in (b"data", labels_key):
    if key not in content:
      raise ValueError("%s has no %r entry (keys: %s)" % (path, key, sorted(content)))
  data = content[b"data"]
  if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
          and data.shape[1] == _PIXELS):
    raise ValueError("%s: b'data' must be a uint8 array [N, %d], got %s %s" % (
        path, _PIXELS, type(data).__name__, getattr(data, "shape", "")))
  labels = np.asarray(content[labels_key])
  if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
    raise ValueError("%s: %r must hold %d integer labels" % (path, labels_key, data.shape[0]))
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError("%s: labels must lie in [0, %d), found %d..%d" % (
        path, num_classes, labels.min(), labels.max()))
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int64)


def load_class_names(path, names_key, num_classes):
  content = load_pickle(path)
  names = content.get(names_key)
  if not isinstance(names, list) or len(names) != num_classes:
    raise ValueError("%s: %r must list %d class names" % (path, names_key, num_classes))
  return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def detect_variant(source_dir):
  """'cifar10' or 'cifar100' from the files in `source_dir`."""
  found = [name for name, spec in RELEASES.items()
           if all(tf.io.gfile.exists(os.path.join(source_dir, f))
                  for files in spec["splits"].values() for f in files)]
  if len(found) != 1:
    raise ValueError("%s holds neither the CIFAR-10 (data_batch_1..5, test_batch) nor the "
                     "CIFAR-100 (train, test) python pickles" % source_dir)
  return found[0]


def _png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "PNG")
  return buffer.getvalue()


def convert(source_dir, output_dir, num_shards=1, check_counts=True):
  """Writes the TFDS-layout tfrecords of the pickles in `source_dir`; returns the folder."""
  variant = detect_variant(source_dir)
  spec = RELEASES[variant]
  names = load_class_names(os.path.join(source_dir, spec["meta"]), spec["names_key"],
                           spec["num_classes"])
  splits = {}
  for split, files in spec["splits"].items():
    examples = []
    for filename in files:
      images, labels = load_batch(os.path.join(source_dir, filename), spec["labels_key"],
                                  spec["num_classes"])
      for image, label in zip(images, labels):
        example_id = ("%s_%05d" % (split, len(examples))).encode()
        examples.append(tfds_layout.image_example(_png(image), int(label),
                                                  {"id": example_id}))
    if check_counts and len(examples) != spec["num_examples"][split]:
      raise ValueError("%s: split %s has %d images, the %s release has %d" % (
          source_dir, split, len(examples), variant, spec["num_examples"][split]))
    splits[split] = examples
  return tfds_layout.write_dataset(output_dir, variant, cifar.VERSION, splits, names,
                                   num_shards, description="%s from %s" % (variant, source_dir))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source_dir", required=True,
                      help="cifar-10-batches-py or cifar-100-python folder")
  parser.add_argument("--output_dir", required=True, help="TFDS data dir to write into")
  parser.add_argument("--num_shards", type=int, default=1)
  args = parser.parse_args(argv)
  print(convert(args.source_dir, args.output_dir, args.num_shards))


if __name__ == "__main__":
  main()
