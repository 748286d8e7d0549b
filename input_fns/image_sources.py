"""Labelled-image datasets behind one interface, and the fine-tuning input pipeline.

A source knows its classes, its split sizes, and yields serialized records that `parse`
turns into (encoded image, int32 label in [0, num_classes)), or, for prediction, records
with their keys that `parse_unlabeled` turns into (encoded image, identifier):
- `TfdsSource`: a TFDS-layout folder (tf_flowers, converted CIFAR), TFDS split strings;
- `ImageFolderSource`: ImageNet-format shards (tools/build_image_tfrecords.py, or the
  tpu/slim ImageNet build), read through input_fns.imagenet; splits `train` and
  `validation`; the stored 1-based labels are shifted to 0-based.

`check_records(split)` compares a split's files with their manifest before training
(input_fns/record_checks.py); `files(split)` are the files a split reads.

`build_input_fn` is the pipeline the ViT and BiT recipes share: records -> shuffle
(training) -> parse + preprocess -> batch -> MixUp (training, optional) -> prefetch.
"""
import os

import tensorflow.compat.v1 as tf

import input_fns
from input_fns import imagenet
from input_fns import record_checks
from input_fns import tfds_layout
from preprocessing import transfer


class TfdsSource(object):

  def __init__(self, tfds_dataset):
    self.dataset = tfds_dataset
    self.class_names = tfds_dataset.class_names()
    self.num_classes = len(self.class_names)

  def __repr__(self):
    return "TfdsSource(%r)" % self.dataset.path

  def num_examples(self, split):
    return self.dataset.num_examples(split)

  def check_split(self, split):
    if not self.dataset.read_plan(split):
      raise ValueError("split %r of %s is empty" % (split, self.dataset.path))

  def check_records(self, split):
    self.dataset.check_records(tfds_layout.parse_split(split)[0])

  def files(self, split):
    return [path for path, _, _ in self.dataset.read_plan(split)]

  def records(self, split, num_workers=1, worker_index=0, with_keys=False):
    return self.dataset.records(split, num_workers, worker_index, with_keys)

  @staticmethod
  def parse(serialized):
    return tfds_layout.parse(serialized)

  @staticmethod
  def parse_unlabeled(serialized, key):
    return tfds_layout.parse_unlabeled(serialized, key)


class ImageFolderSource(object):
  """ImageNet-format shards; classes from labels.txt, else the 1,000 ImageNet classes."""

  SPLITS = {"train": True, "validation": False}
  IMAGENET_CLASSES = 1000

  def __init__(self, data_dir):
    self.data_dir = data_dir
    self.class_names = None
    labels_path = os.path.join(data_dir or "", imagenet.LABELS_FILENAME)
    if data_dir and tf.io.gfile.exists(labels_path):
      with tf.io.gfile.GFile(labels_path) as f:
        self.class_names = [line.strip() for line in f if line.strip()]
    self.num_classes = len(self.class_names) if self.class_names else self.IMAGENET_CLASSES

  def __repr__(self):
    return "ImageFolderSource(%r)" % self.data_dir

  def files(self, split):
    if split not in self.SPLITS:
      raise ValueError("split %r of the image folder %s: only %s are available (no "
                       "slicing)" % (split, self.data_dir, ", ".join(sorted(self.SPLITS))))
    return imagenet.list_shards(self.data_dir, self.SPLITS[split])

  def num_examples(self, split):
    files = self.files(split)
    size = sum(tf.io.gfile.stat(f).length for f in files)
    if size > record_checks.MAX_BYTES_TO_COUNT:
      raise ValueError("the %s split of %s is %.1f GB: too big to count its records; pass "
                       "--num_train_examples" % (split, self.data_dir, size / 1024.0 ** 3))
    return sum(record_checks.count_records(f) for f in files)

  def check_split(self, split):
    self.files(split)

  def check_records(self, split):
    self.files(split)  # rejects other split names
    imagenet.check_record_counts(self.data_dir, self.SPLITS[split])

  def records(self, split, num_workers=1, worker_index=0, with_keys=False):
    files = self.files(split)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if num_workers > 1:
      dataset = dataset.shard(num_workers, worker_index)
    return dataset.flat_map(tfds_layout.keyed_records if with_keys else tf.data.TFRecordDataset)

  def parse(self, serialized):
    parsed = tf.parse_single_example(serialized, {
        "image/encoded": imagenet.FEATURE_SPEC["image/encoded"],
        "image/class/label": imagenet.FEATURE_SPEC["image/class/label"]})
    label = tf.cast(parsed["image/class/label"], tf.int32) - 1
    in_range = tf.Assert(tf.logical_and(label >= 0, label < self.num_classes), [
        tf.strings.format("1-based image/class/label {} outside [1, %d] in %s"
                          % (self.num_classes, self.data_dir), label + 1)])
    with tf.control_dependencies([in_range]):
      return parsed["image/encoded"], tf.identity(label)

  @staticmethod
  def parse_unlabeled(serialized, key):
    parsed = tf.parse_single_example(serialized, {
        k: imagenet.FEATURE_SPEC[k] for k in ("image/encoded", "image/filename")})
    return parsed["image/encoded"], imagenet.example_id(parsed["image/filename"], key)


def _predict_input_fn(source, split, preprocess_fn):
  def predict_input_fn(params):  # one process predicts: the whole split
    dataset = source.records(split, with_keys=True)

    def _parse_and_preprocess(serialized, key):
      encoded, identifier = source.parse_unlabeled(serialized, key)
      return {"image": preprocess_fn(encoded), "id": identifier}

    dataset = dataset.map(_parse_and_preprocess,
                          num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return dataset.batch(params["batch_size"]).prefetch(tf.data.experimental.AUTOTUNE)

  return predict_input_fn


def _mixup(num_classes, alpha):
  def mix(features, labels):
    images, soft_labels = transfer.mixup(features["image"], tf.one_hot(labels, num_classes),
                                         alpha)
    return {"image": images}, soft_labels
  return mix


def _labelled_input_fn(source, split, is_training, preprocess_fn, mixup_alpha,
                       shuffle_buffer, seed, drop_remainder):
  def input_fn(params, input_context=None):
    # Training is split over the workers; the chief (rank 0) evaluates the whole split.
    num_workers, worker_index = (input_fns.worker_shard(input_context) if is_training
                                 else (1, 0))
    dataset = source.records(split, num_workers, worker_index)
    if is_training:
      dataset = dataset.shuffle(shuffle_buffer, seed=seed).repeat()

    def _parse_and_preprocess(serialized):
      encoded, label = source.parse(serialized)
      return {"image": preprocess_fn(encoded)}, label

    dataset = dataset.map(_parse_and_preprocess,
                          num_parallel_calls=tf.data.experimental.AUTOTUNE)
    dataset = dataset.batch(params["batch_size"], drop_remainder=drop_remainder)
    if is_training and mixup_alpha:
      dataset = dataset.map(_mixup(source.num_classes, mixup_alpha),
                            num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return dataset.prefetch(tf.data.experimental.AUTOTUNE)

  return input_fn


def build_input_fn(source, split, is_training, preprocess_fn, mixup_alpha=0.0,
                   shuffle_buffer=10000, seed=None, fixed_batch_shapes=False, predict=False):
  """input_fn(params, input_context=None) -> Dataset of ({"image": images}, labels).

  images: float32 [B, size, size, 3] (preprocess_fn(encoded) gives one image); labels:
  int32 [B], or float32 one-hot [B, num_classes] mixed by MixUp when `mixup_alpha` > 0.
  Training repeats forever in full batches. Evaluation reads the split once; it drops the
  last partial batch only with `fixed_batch_shapes` (the run's config.fixed_batch_shapes:
  on the NPU every batch keeps one shape).
  `predict` reads the split once into features {"image": images, "id": [B] strings} (the
  record's file name, else its TFDS id), without labels and keeping the last partial
  batch: one prediction per example.
  The returned function has attribute `files` (what it reads, so that the run loop can
  name a corrupt one).
  """
  source.check_split(split)
  if predict:
    input_fn = _predict_input_fn(source, split, preprocess_fn)
  else:
    input_fn = _labelled_input_fn(source, split, is_training, preprocess_fn, mixup_alpha,
                                  shuffle_buffer, seed, is_training or fixed_batch_shapes)
  input_fn.files = source.files(split)
  return input_fn
