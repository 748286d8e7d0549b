"""TFDS `tf_flowers` 3.0.1 as prepared on disk, read without tensorflow_datasets.

Layout (as the Huawei BiT port expects it, models.md §3.6):
  <data_dir>/tf_flowers/3.0.1/{dataset_info.json, features.json, label.labels.txt,
                               tf_flowers-train.tfrecord-0000{0,1}-of-00002}
Examples have `image` (the encoded JPEG) and `label` (int64; TFDS class order below).
The only split, `train` (3,670 photos in the real set), is divided as in keras-io / the
BiT port: `train[:85%]` for training, `train[85%:]` for validation.

`build_from_image_folder` writes this layout from a folder of class sub-folders (e.g. the
Kaggle flower photos, whose folder names are the singular forms) for tests and offline use
(CLI: tools/build_tfds_flowers.py). Its examples also hold `file_name`
(`<sub-folder>/<file>`, the key TFDS imagenet2012 uses), which predictions report.
"""
import os
import random

import tensorflow.compat.v1 as tf

from input_fns import tfds_layout

NAME = "tf_flowers"
VERSION = "3.0.1"
NUM_SHARDS = 2
# tensorflow_datasets/image_classification/flowers.py: ClassLabel names, in label order.
CLASS_NAMES = ("dandelion", "daisy", "tulips", "sunflowers", "roses")
TRAIN_SPLIT = "train[:85%]"
EVAL_SPLIT = "train[85%:]"
IMAGE_EXTENSIONS = (".jpg", ".jpeg")

# features.json in the TFDS 4 proto-JSON form (informative; the reader does not need it).
FEATURES = {
    "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
    "featuresDict": {"features": {
        "image": {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                  "image": {"shape": {"dimensions": ["-1", "-1", "3"]}, "dtype": "uint8"}},
        "label": {"pythonClassName":
                      "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
                  "classLabel": {"numClasses": str(len(CLASS_NAMES))}},
    }},
}


def dataset(data_dir):
  """The prepared tf_flowers under a TFDS data dir (or the version folder itself)."""
  return tfds_layout.TfdsDataset(tfds_layout.find_dataset_dir(data_dir, NAME, VERSION))


def class_for_folder(folder):
  """'rose' -> 'roses', 'daisy' -> 'daisy': the TFDS class a sub-folder holds."""
  name = folder.lower()
  for candidate in (name, name + "s"):
    if candidate in CLASS_NAMES:
      return candidate
  raise ValueError("image folder %r is not one of the tf_flowers classes %s (singular "
                   "forms accepted)" % (folder, ", ".join(CLASS_NAMES)))


def build_from_image_folder(image_dir, data_dir, num_shards=NUM_SHARDS, seed=0,
                            max_per_class=None):
  """Writes <data_dir>/tf_flowers/3.0.1 from `image_dir`/<class>/*.jpg; returns the folder.

  JPEG bytes are stored unchanged, examples in a seeded random order (TFDS shuffles at
  preparation too). `max_per_class` keeps the first N files (sorted) of each class.
  """
  if not tf.io.gfile.isdir(image_dir):
    raise ValueError("image folder %s does not exist" % image_dir)
  items = []
  for folder in sorted(tf.io.gfile.listdir(image_dir)):
    folder = folder.rstrip("/")
    path = os.path.join(image_dir, folder)
    if not tf.io.gfile.isdir(path):
      continue
    label = CLASS_NAMES.index(class_for_folder(folder))
    files = sorted(f for f in tf.io.gfile.listdir(path)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    items.extend((folder + "/" + f, label) for f in files[:max_per_class])
  if not items:
    raise ValueError("image folder %s has no class sub-folders with .jpg files" % image_dir)
  random.Random(seed).shuffle(items)
  examples = []
  for name, label in items:
    with tf.io.gfile.GFile(os.path.join(image_dir, name), "rb") as f:
      examples.append(tfds_layout.image_example(f.read(), label,
                                                {"file_name": name.encode("utf-8")}))
  return tfds_layout.write_dataset(
      data_dir, NAME, VERSION, {"train": examples}, CLASS_NAMES, num_shards,
      features=FEATURES, description="Flower photos (built from %s)" % image_dir)
