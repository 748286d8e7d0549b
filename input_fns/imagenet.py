"""ImageNet-format tfrecords (TF-slim / tpu `imagenet_to_gcs.py` layout) -> Estimator input_fn.

Shards are `<data_dir>/train-*` / `<data_dir>/validation-*` (upstream layout) or
`<data_dir>/train/train-*` / `<data_dir>/validation/validation-*` (Huawei layout). Labels
are 1-based (0 is the unused background class, hence 1001 classes for ImageNet).

Errors and where they are caught:
- no shards, ambiguous layouts, a labels.txt with more classes than `num_label_classes`:
  ValueError when the input_fn is built, before any graph;
- a label outside [0, num_label_classes), a non-JPEG/PNG or truncated image: an assertion in
  the parse function whose message names the value and the record's image/filename;
- a shard cut short or replaced: `check_record_counts` compares the shards with the
  manifest tools/build_image_tfrecords.py writes (each shard's records and bytes), before
  any graph; shards without one (e.g. Google's build_imagenet_data.py) are logged as
  unchecked;
- a corrupt shard (bad CRC): TFRecordDataset raises DataLossError without the file name, so
  `check_tfrecords(files)` scans shards and raises ValueError naming the file and record.
  `build_input_fn(..., check_records=True)` runs it before training (it reads every byte,
  so it is opt-in); after a DataLossError the run loop can call
  `check_tfrecords(input_fn.files)` to name the culprit.
"""
import fnmatch
import json
import os

from absl import logging
import tensorflow.compat.v1 as tf

import input_fns
from input_fns import record_checks
from input_fns import tfds_layout
from preprocessing import inception

TRAIN_PREFIX = "train"
VALIDATION_PREFIX = "validation"
LABELS_FILENAME = "labels.txt"
MANIFEST_FILENAME = "tfrecord_manifest.json"
READ_BUFFER_BYTES = 8 * 1024 * 1024
MAX_CYCLE_LENGTH = 16
DEFAULT_SHUFFLE_BUFFER = 1024

FEATURE_SPEC = {
    "image/encoded": tf.FixedLenFeature((), tf.string, ""),
    "image/format": tf.FixedLenFeature((), tf.string, "jpeg"),
    "image/filename": tf.FixedLenFeature((), tf.string, ""),
    "image/class/label": tf.FixedLenFeature((), tf.int64, -1),
    "image/class/text": tf.FixedLenFeature((), tf.string, ""),
    "image/object/bbox/xmin": tf.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.VarLenFeature(tf.float32),
    "image/object/class/label": tf.VarLenFeature(tf.int64),
}


def file_patterns(data_dir, is_training):
  """The two globs tried, upstream layout first."""
  prefix = TRAIN_PREFIX if is_training else VALIDATION_PREFIX
  return [os.path.join(data_dir, prefix + "-*"), os.path.join(data_dir, prefix, prefix + "-*")]


def glob(pattern):
  """Sorted matches; [] when the pattern's directory is missing (TF 1.15 raises there)."""
  try:
    return sorted(tf.io.gfile.glob(pattern))
  except tf.errors.NotFoundError:
    return []


def list_shards(data_dir, is_training):
  """Sorted shard paths of one split; ValueError naming the dir and both globs if none."""
  split = "training" if is_training else "validation"
  if not data_dir:
    raise ValueError("--data_dir is empty: it must name a directory of ImageNet-format "
                     "tfrecords (or use synthetic data)")
  if not tf.io.gfile.isdir(data_dir):
    raise ValueError("--data_dir=%s is not a directory" % data_dir)
  flat, nested = file_patterns(data_dir, is_training)
  flat_files = glob(flat)
  nested_files = glob(nested)
  if flat_files and nested_files:
    raise ValueError("--data_dir=%s holds %s shards in both layouts (%s and %s); keep one" %
                     (data_dir, split, flat, nested))
  files = flat_files or nested_files
  if not files:
    raise ValueError("--data_dir=%s has no %s tfrecord shards: tried %s and %s" %
                     (data_dir, split, flat, nested))
  return files


def check_label_file(data_dir, num_label_classes, label_offset=0):
  """If data_dir has labels.txt (written by tools/build_image_tfrecords.py), checks its size."""
  path = os.path.join(data_dir, LABELS_FILENAME)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    names = [line.strip() for line in f if line.strip()]
  needed = len(names) + 1 - label_offset
  if needed > num_label_classes:
    raise ValueError(
        "%s lists %d classes (labels 1..%d, label_offset %d) so num_label_classes must be at "
        "least %d, got %d" % (path, len(names), len(names), label_offset, needed,
                              num_label_classes))
  return names


def class_name_table(data_dir, num_label_classes):
  """[name of class id i] from data_dir's labels.txt (line i names label i), "" for the
  ids it does not name (0, the background class); None without labels.txt."""
  names = check_label_file(data_dir, num_label_classes)
  if names is None:
    return None
  return [""] + names + [""] * (num_label_classes - 1 - len(names))


def check_tfrecords(files, max_records_per_file=None):
  """Reads every record (checking CRCs); returns {file: records read}.

  Raises ValueError naming the file and the failing record on a corrupt or truncated shard.
  """
  return {path: record_checks.read_records(path, max_records_per_file) for path in files}


def write_manifest(data_dir, records_by_file):
  """Writes data_dir/MANIFEST_FILENAME: each file's record count and byte size, by its path
  relative to data_dir (so the folder can be moved)."""
  files = {os.path.relpath(path, data_dir): record_checks.manifest_entry(path, records)
           for path, records in records_by_file.items()}
  path = os.path.join(data_dir, MANIFEST_FILENAME)
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    f.write(json.dumps({"files": files}, indent=1, sort_keys=True))
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  return path


def check_record_counts(data_dir, is_training):
  """Checks the split's shards against data_dir's manifest (see input_fns/record_checks.py);
  without a manifest, logs once that they cannot be checked."""
  files = {os.path.normpath(path): path for path in list_shards(data_dir, is_training)}
  manifest = os.path.join(data_dir, MANIFEST_FILENAME)
  if not tf.io.gfile.exists(manifest):
    record_checks.log_unchecked(data_dir, "has no %s (shards not written by "
                                "tools/build_image_tfrecords.py)" % MANIFEST_FILENAME)
    return
  patterns = file_patterns(data_dir, is_training)
  expected = {}
  with tf.io.gfile.GFile(manifest) as f:
    try:
      for name, entry in json.load(f)["files"].items():
        path = os.path.join(data_dir, name)
        if any(fnmatch.fnmatch(path, pattern) for pattern in patterns):
          expected[os.path.normpath(path)] = record_checks.Expected(
              path, int(entry["records"]), entry.get("bytes"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
      raise ValueError("%s is not a tfrecord manifest ({\"files\": {name: {\"records\": n, "
                       "\"bytes\": size}}}): %s" % (manifest, error))
  unlisted = sorted(set(files) - set(expected))
  if unlisted:
    raise record_checks.RecordCountError(
        "%s is not in %s: a shard of another build? Rebuild the folder, or remove the shard"
        % (files[unlisted[0]], manifest))
  record_checks.check_files([expected[key] for key in sorted(expected)], manifest)


def parse_record(serialized, is_training, image_size, num_label_classes, label_offset=0,
                 use_fast_color_distort=True, cb_distortion_range=0.1,
                 cr_distortion_range=0.1, fast_mode=True):
  """Serialized tf.Example -> (float32 image [H, W, 3] in [-1, 1], int32 label)."""
  parsed = tf.parse_single_example(serialized, FEATURE_SPEC)
  name = parsed["image/filename"]
  label = tf.cast(parsed["image/class/label"], tf.int32) - label_offset
  label_ok = tf.Assert(
      tf.logical_and(label >= 0, label < num_label_classes),
      [tf.strings.join([
          "image/class/label ", tf.strings.as_string(label + label_offset), " of record ",
          name, " is outside [0, %d)%s (-1 means the record has no label)" % (
              num_label_classes,
              " after subtracting label_offset %d" % label_offset if label_offset else "")])])
  image = inception.preprocess_image(
      parsed["image/encoded"], is_training, image_size,
      use_fast_color_distort=use_fast_color_distort,
      cb_distortion_range=cb_distortion_range, cr_distortion_range=cr_distortion_range,
      fast_mode=fast_mode, image_name=name)
  with tf.control_dependencies([label_ok]):
    label = tf.identity(label)
  return image, label


def example_id(filename, key):
  """A record's identifier: its image/filename, else (empty) its record key."""
  return tf.where(tf.equal(filename, ""), key, filename)


def parse_unlabeled(serialized, key, image_size, fast_mode=True):
  """Serialized tf.Example and its record key -> {"image": the eval-preprocessed image,
  "id": example_id}. The label is not read: records to predict may have none."""
  parsed = tf.parse_single_example(
      serialized, {k: FEATURE_SPEC[k] for k in ("image/encoded", "image/filename")})
  name = example_id(parsed["image/filename"], key)
  image = inception.preprocess_image(parsed["image/encoded"], False, image_size,
                                     fast_mode=fast_mode, image_name=name)
  return {"image": image, "id": name}


def _read_records(path):
  return tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)


def _parallel_interleave(files, cycle_length, sloppy):
  """Reads `cycle_length` files in parallel.

  TF 1.15's Dataset.interleave(num_parallel_calls=...) segfaults when a session is closed
  while it is reading (as the Estimator does after each train/evaluate call), so TF 1.x
  uses the older parallel_interleave, as the upstream AmoebaNet code does.
  """
  if tf.__version__.startswith("1."):
    return files.apply(tf.data.experimental.parallel_interleave(
        _read_records, cycle_length=cycle_length, sloppy=sloppy))
  return files.interleave(_read_records, cycle_length=cycle_length,
                          num_parallel_calls=tf.data.experimental.AUTOTUNE)


def _set_deterministic(dataset, deterministic):
  options = tf.data.Options()
  if hasattr(options, "deterministic"):
    options.deterministic = deterministic
  else:  # TF 1.15
    options.experimental_deterministic = deterministic
  return dataset.with_options(options)


def synthetic_dataset(batch_size, image_size, num_label_classes, is_training,
                      num_eval_batches=10):
  """One random batch (images in [-1, 1]) repeated: measures the model, not the input."""

  def random_batch(_):
    images = tf.random.uniform([batch_size, image_size, image_size, 3], -1.0, 1.0)
    labels = tf.random.uniform([batch_size], 0, num_label_classes, dtype=tf.int32)
    return images, labels

  dataset = tf.data.Dataset.range(1).map(random_batch).cache().repeat()
  if not is_training:
    dataset = dataset.take(num_eval_batches)
  return dataset


def build_input_fn(data_dir, is_training, image_size, num_label_classes=1001,
                   use_fast_color_distort=True, cb_distortion_range=0.1,
                   cr_distortion_range=0.1, synthetic=False, label_offset=0,
                   fast_mode=True, shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, cycle_length=None,
                   drop_remainder=None, seed=None, check_records=False,
                   synthetic_eval_batches=10, predict=False):
  """Returns input_fn(params, input_context=None) -> Dataset of (images, labels).

  images: float32 [B, image_size, image_size, 3] in [-1, 1]; labels: int32 [B] (the stored
  label minus `label_offset`); B = params['batch_size'], per worker. Training repeats
  forever; evaluation reads the validation split once; `predict` reads it once into
  features {"image": images, "id": [B] strings (parse_unlabeled)}, without labels.
  `drop_remainder`: evaluation and prediction skip the last partial batch (True: static
  shapes, as the NPU needs); None: evaluation does, as upstream, and prediction keeps it
  (one prediction per record). The function has attribute `files` (none if synthetic).
  """
  if image_size <= 0:
    raise ValueError("image_size must be positive, got %r" % (image_size,))
  if num_label_classes < 2:
    raise ValueError("num_label_classes must be >= 2, got %r" % (num_label_classes,))
  if drop_remainder is None:
    drop_remainder = not predict
  files = _input_files(data_dir, is_training, synthetic, image_size, num_label_classes,
                       label_offset, check_records)

  def parse(record):
    return parse_record(record, is_training, image_size, num_label_classes, label_offset,
                        use_fast_color_distort, cb_distortion_range, cr_distortion_range,
                        fast_mode)

  def input_fn(params, input_context=None):
    batch_size = params["batch_size"]
    if synthetic:
      return synthetic_dataset(batch_size, image_size, num_label_classes, is_training,
                               synthetic_eval_batches)
    # Training is split over the workers; evaluation and prediction run on the chief
    # (rank 0) alone, over the whole split.
    num_workers, worker_index = (input_fns.worker_shard(input_context) if is_training
                                 else (1, 0))
    if predict:
      return _predict_dataset(files, image_size, fast_mode, batch_size, num_workers,
                              worker_index, drop_remainder)
    dataset = _worker_records(files, is_training, num_workers, worker_index,
                              shuffle_buffer, cycle_length, seed)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=is_training or drop_remainder)
    dataset = dataset.prefetch(tf.data.experimental.AUTOTUNE)
    return _set_deterministic(dataset, deterministic=not is_training)

  input_fn.files = files
  return input_fn


def _input_files(data_dir, is_training, synthetic, image_size, num_label_classes,
                 label_offset, check_records):
  """The split's shards, after the labels.txt check (and the CRC scan when asked); none
  with synthetic data."""
  if synthetic:
    logging.warning("Input: SYNTHETIC data (random %dx%d images, %d classes); data_dir is "
                    "ignored", image_size, image_size, num_label_classes)
    return []
  files = list_shards(data_dir, is_training)
  check_label_file(data_dir, num_label_classes, label_offset)
  if check_records:
    counts = check_tfrecords(files)
    logging.info("Checked %d shards: %d records", len(files), sum(counts.values()))
  logging.info("Input: %d %s shards from %s", len(files),
               "training" if is_training else "validation", data_dir)
  return files


def _worker_records(files, is_training, num_workers, worker_index, shuffle_buffer,
                    cycle_length, seed):
  """This worker's serialized records: its shards (or, with fewer shards than workers,
  its share of the records), shuffled and repeated in training."""
  dataset = tf.data.Dataset.from_tensor_slices(files)
  shard_files = len(files) >= num_workers
  if num_workers > 1 and shard_files:
    dataset = dataset.shard(num_workers, worker_index)
  worker_files = len(files) // num_workers if shard_files else len(files)
  if is_training:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
  cycle = cycle_length or min(max(worker_files, 1), MAX_CYCLE_LENGTH, os.cpu_count() or 1)
  dataset = _parallel_interleave(dataset, cycle, sloppy=is_training)
  if num_workers > 1 and not shard_files:
    dataset = dataset.shard(num_workers, worker_index)
  if is_training:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  return dataset


def _predict_dataset(files, image_size, fast_mode, batch_size, num_workers, worker_index,
                     drop_remainder):
  """The records in shard order (each keyed by its TFDS-style id), eval-preprocessed."""
  dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(tfds_layout.keyed_records)
  if num_workers > 1:
    dataset = dataset.shard(num_workers, worker_index)
  dataset = dataset.map(lambda record, key: parse_unlabeled(record, key, image_size, fast_mode),
                        num_parallel_calls=tf.data.experimental.AUTOTUNE)
  return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(
      tf.data.experimental.AUTOTUNE)
