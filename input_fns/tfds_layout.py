"""TFDS-prepared datasets read (and written) without tensorflow_datasets installed.

A prepared TFDS dataset lies as
  <data_dir>/<name>/<version>/dataset_info.json
  <data_dir>/<name>/<version>/<name>-<split>.tfrecord-<i>-of-<n>   (tf.train.Example)
  <data_dir>/<name>/<version>/label.labels.txt                      (one class per line)
dataset_info.json (DatasetInfo proto as JSON) gives each split's `shardLengths`, which
`check_records` compares with the shards before training (input_fns/record_checks.py).

Split strings follow the TFDS slicing API: `train`, `train[:85%]`, `train[85%:]`,
`train[10:20]`, `test[-5%:]`. Percent boundaries use TFDS's default "closest" rounding,
`int(round(pct * num_examples / 100))` (Python 3 round: half to even), over the
concatenated shards in shard order. Records are read in that order (shuffle afterwards).
"""
import json
import os
import re

import tensorflow.compat.v1 as tf

from input_fns import record_checks

INFO_FILENAME = "dataset_info.json"
FEATURES_FILENAME = "features.json"
LABELS_FILENAME = "label.labels.txt"

_SPLIT_RE = re.compile(
    r"^(?P<split>\w+)(\[(?P<from>-?\d+)?(?P<from_pct>%)?:(?P<to>-?\d+)?(?P<to_pct>%)?\])?$")


def parse_split(spec):
  """'train[:85%]' -> ('train', None, 85, '%'); 'test' -> ('test', None, None, 'abs')."""
  match = _SPLIT_RE.match(spec.replace(" ", ""))
  if not match:
    raise ValueError("split %r is not of the form name, name[a:b], name[a%%:b%%]" % spec)
  if match.group("from_pct") and match.group("to") and not match.group("to_pct") or (
      match.group("to_pct") and match.group("from") and not match.group("from_pct")):
    raise ValueError("split %r mixes percent and absolute boundaries" % spec)
  unit = "%" if match.group("from_pct") or match.group("to_pct") else "abs"
  to_int = lambda value: None if value is None else int(value)
  return match.group("split"), to_int(match.group("from")), to_int(match.group("to")), unit


def absolute_range(spec, num_examples):
  """[start, stop) example indices of `spec` in a split of `num_examples` examples."""
  _, start, stop, unit = parse_split(spec)
  if unit == "%":
    for value in (start, stop):
      if value is not None and abs(value) > 100:
        raise ValueError("split %r: percent boundaries must lie in [-100, 100]" % spec)
    convert = lambda pct: int(round(pct * num_examples / 100.0))
    start = None if start is None else convert(start)
    stop = None if stop is None else convert(stop)
  start = 0 if start is None else start
  stop = num_examples if stop is None else stop
  if start < 0:
    start = max(num_examples + start, 0)
  if stop < 0:
    stop = max(num_examples + stop, 0)
  return min(start, num_examples), min(max(stop, start), num_examples)


def find_dataset_dir(data_dir, name, version=None):
  """`data_dir` itself if it holds dataset_info.json, else <data_dir>/<name>/<version>.

  Without `version` the newest version folder present is taken.
  """
  if not data_dir:
    raise ValueError("--data_dir is empty: it must name a TFDS data dir holding %s/" % name)
  if tf.io.gfile.exists(os.path.join(data_dir, INFO_FILENAME)):
    return data_dir
  root = os.path.join(data_dir, name)
  if version is None and tf.io.gfile.isdir(root):
    versions = [v.rstrip("/") for v in tf.io.gfile.listdir(root)
                if re.match(r"^\d+\.\d+\.\d+/?$", v)]
    if versions:
      version = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
  path = os.path.join(root, version or "")
  if not tf.io.gfile.exists(os.path.join(path, INFO_FILENAME)):
    raise ValueError("--data_dir=%s holds no prepared TFDS dataset %s%s: expected %s" % (
        data_dir, name, "" if version is None else " " + version,
        os.path.join(root, version or "<version>", INFO_FILENAME)))
  return path


class TfdsDataset(object):
  """A prepared dataset folder: its info, splits, shard files and class names."""

  def __init__(self, path):
    self.path = path
    info_path = os.path.join(path, INFO_FILENAME)
    with tf.io.gfile.GFile(info_path) as f:
      try:
        self.info = json.load(f)
      except ValueError as error:
        raise ValueError("%s is not valid JSON: %s" % (info_path, error))
    self.name = self.info.get("name") or os.path.basename(os.path.dirname(path))
    self.splits = {s["name"]: s for s in self.info.get("splits", [])}

  def _check_split(self, split):
    if split not in self.splits:
      raise ValueError("%s has no split %r; it has %s" % (
          os.path.join(self.path, INFO_FILENAME), split, ", ".join(sorted(self.splits))))

  def shard_files(self, split):
    self._check_split(split)
    pattern = os.path.join(self.path, "%s-%s.tfrecord-*-of-*" % (self.name, split))
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
      raise ValueError("no shards %s" % pattern)
    return files

  def shard_lengths(self, split):
    """Examples per shard, from shardLengths (or by counting records if it is absent)."""
    files = self.shard_files(split)
    lengths = self.splits[split].get("shardLengths")
    if lengths is None:
      return [record_checks.count_records(path) for path in files]
    if len(lengths) != len(files):
      raise ValueError("%s lists %d shards for split %s but %d files match in %s" % (
          INFO_FILENAME, len(lengths), split, len(files), self.path))
    return [int(n) for n in lengths]

  def check_records(self, split):
    """Fails (one line naming the shard) when a shard of `split` holds other than its
    shardLengths entry; without shardLengths, logs once that it cannot be checked."""
    info_path = os.path.join(self.path, INFO_FILENAME)
    self._check_split(split)
    lengths = self.splits[split].get("shardLengths")
    if lengths is None:
      record_checks.log_unchecked(self.path, "has no shardLengths for split %s in %s"
                                  % (split, INFO_FILENAME))
      return
    expected = [record_checks.Expected(shard_path(self.path, self.name, split, index,
                                                  len(lengths)), int(length), None)
                for index, length in enumerate(lengths)]
    unlisted = sorted(set(self.shard_files(split)) - set(file.path for file in expected))
    if unlisted:
      raise record_checks.RecordCountError(
          "%s is not among the %d shards %s lists for split %s: a shard of another build?"
          % (unlisted[0], len(lengths), info_path, split))
    record_checks.check_files(expected, info_path)

  def num_examples(self, spec):
    split = parse_split(spec)[0]
    start, stop = absolute_range(spec, sum(self.shard_lengths(split)))
    return stop - start

  def class_names(self, feature="label"):
    path = os.path.join(self.path, "%s.labels.txt" % feature)
    if not tf.io.gfile.exists(path):
      raise ValueError("%s is missing: it names the classes of %s" % (path, self.name))
    with tf.io.gfile.GFile(path) as f:
      return [line.strip() for line in f if line.strip()]

  def read_plan(self, spec):
    """[(file, records to skip, records to take)] covering `spec`, in shard order."""
    split = parse_split(spec)[0]
    lengths = self.shard_lengths(split)
    start, stop = absolute_range(spec, sum(lengths))
    plan, offset = [], 0
    for path, length in zip(self.shard_files(split), lengths):
      first, last = max(start - offset, 0), min(stop - offset, length)
      if last > first:
        plan.append((path, first, last - first))
      offset += length
    return plan

  def records(self, spec, num_workers=1, worker_index=0, with_keys=False):
    """Dataset of serialized tf.Examples of `spec`, in order (with_keys: of (example, its
    TFDS id), see keyed_records); sharded by worker if > 1."""
    plan = self.read_plan(spec)
    if not plan:
      raise ValueError("split %r of %s is empty" % (spec, self.path))
    files, skips, takes = [list(column) for column in zip(*plan)]
    dataset = tf.data.Dataset.from_tensor_slices(
        (files, tf.constant(skips, tf.int64), tf.constant(takes, tf.int64)))
    if with_keys:
      dataset = dataset.flat_map(keyed_records)
    else:
      dataset = dataset.flat_map(
          lambda path, skip, take: tf.data.TFRecordDataset(path).skip(skip).take(take))
    if num_workers > 1:
      dataset = dataset.shard(num_workers, worker_index)
    return dataset


def keyed_records(path, skip=0, take=-1):
  """Dataset of (serialized record, TFDS id) of `path` from record `skip` on, `take` of
  them (-1: all). The TFDS id `<file name>__<index in the file>` is what
  tensorflow_datasets' ReadConfig(add_tfds_id=True) gives: a stable name for a record
  that holds none."""
  name = tf.strings.regex_replace(path, r"^.*/", "")
  ids = tf.data.experimental.Counter(skip).map(
      lambda index: tf.strings.join([name, "__", tf.strings.as_string(index)]))
  return tf.data.Dataset.zip((tf.data.TFRecordDataset(path).skip(skip).take(take), ids))


def shard_path(path, name, split, index, num_shards):
  """The TFDS name of shard `index` of `num_shards` of `split`."""
  return os.path.join(path, "%s-%s.tfrecord-%05d-of-%05d" % (name, split, index, num_shards))


def _int64_feature(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _bytes_feature(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def image_example(encoded, label, extra=None):
  """tf.Example with TFDS keys: `image` (encoded bytes), `label` (int64), plus `extra`."""
  feature = {"image": _bytes_feature(encoded), "label": _int64_feature(label)}
  for key, value in (extra or {}).items():
    feature[key] = _bytes_feature(value) if isinstance(value, bytes) else _int64_feature(value)
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_dataset(data_dir, name, version, splits, class_names, num_shards=1,
                  features=None, description=""):
  """Writes {split: [serialized example, ...]} in the TFDS layout; returns the folder.

  Each split is cut into `num_shards` (or fewer, if it is smaller) consecutive shards, as
  even as possible; files are written under a temporary name and renamed at the end.
  """
  path = os.path.join(data_dir, name, version)
  tf.io.gfile.makedirs(path)
  split_infos = []
  for split, examples in splits.items():
    count = len(examples)
    shards = max(1, min(num_shards, count))
    bounds = [count * i // shards for i in range(shards + 1)]
    lengths, num_bytes = [], 0
    for index in range(shards):
      filename = shard_path(path, name, split, index, shards)
      with tf.io.TFRecordWriter(filename + ".incomplete") as writer:
        for example in examples[bounds[index]:bounds[index + 1]]:
          writer.write(example)
          num_bytes += len(example)
      tf.io.gfile.rename(filename + ".incomplete", filename, overwrite=True)
      lengths.append(str(bounds[index + 1] - bounds[index]))
    split_infos.append({"name": split, "numBytes": str(num_bytes), "shardLengths": lengths,
                        "statistics": {"numExamples": str(count)}})
  info = {"name": name, "version": version, "description": description,
          "splits": split_infos, "supervisedKeys": {"input": "image", "output": "label"}}
  with tf.io.gfile.GFile(os.path.join(path, INFO_FILENAME), "w") as f:
    f.write(json.dumps(info, indent=2))
  with tf.io.gfile.GFile(os.path.join(path, LABELS_FILENAME), "w") as f:
    f.write("".join(n + "\n" for n in class_names))
  if features is not None:
    with tf.io.gfile.GFile(os.path.join(path, FEATURES_FILENAME), "w") as f:
      f.write(json.dumps(features, indent=2))
  return path


FEATURE_SPEC = {
    "image": tf.FixedLenFeature((), tf.string),
    "label": tf.FixedLenFeature((), tf.int64),
}


# Features naming an example, most specific first: TFDS imagenet2012's `file_name` (which
# tf_flowers.build_from_image_folder writes too) and cifar's `id`.
NAME_FEATURES = ("file_name", "id")


def parse(serialized):
  """Serialized TFDS image example -> (encoded image bytes, int32 label)."""
  parsed = tf.parse_single_example(serialized, FEATURE_SPEC)
  return parsed["image"], tf.cast(parsed["label"], tf.int32)


def parse_unlabeled(serialized, key):
  """Serialized TFDS image example and its TFDS id -> (encoded image bytes, identifier):
  the first NAME_FEATURES the example has, else `key`. The label is not read."""
  spec = {name: tf.FixedLenFeature((), tf.string, "") for name in NAME_FEATURES}
  spec["image"] = FEATURE_SPEC["image"]
  parsed = tf.parse_single_example(serialized, spec)
  identifier = key
  for name in reversed(NAME_FEATURES):
    identifier = tf.where(tf.equal(parsed[name], ""), identifier, parsed[name])
  return parsed["image"], identifier
