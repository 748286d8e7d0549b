"""TFRecord files checked against what their builder wrote down, before any graph is built.

A tfrecord file cut at a record boundary, or inside a record's 12-byte header, reads as a
shorter valid file on TF 1.15 and TF 2.15 alike; a cut inside a record, or a flipped
byte, raises DataLossError ("truncated record at <offset>", "corrupted record at
<offset>") without the file's name. So every reader compares its files with its builder's
manifest (or the dataset's published layout), cheapest test first:

- the file is there, and (when the manifest records byte sizes) a stat() gives the size
  recorded: any truncation is caught without reading anything;
- the records are counted, the exact test (every record read and CRC-checked, once per
  process and file version). Skipped, with a log line, only when the byte sizes already
  matched and the files hold more than MAX_BYTES_TO_COUNT (ImageNet: minutes of reading).

A mismatch is one line naming the file and both figures; a corrupt record names the file
and the record. Data without a manifest cannot be count-checked: `log_unchecked` says so
once per folder, and its corrupt records are named when the run reads them (the run loop
calls `read_records` on the input_fn's `files`).
"""
import collections

from absl import logging
import tensorflow.compat.v1 as tf

# Counting reads every byte: file sets larger than this are counted only when no byte size
# vouches for them, and image_sources asks for --num_train_examples instead of counting one.
MAX_BYTES_TO_COUNT = 2 * 1024 ** 3

# One file as its manifest describes it; num_bytes is None when the manifest has no size.
Expected = collections.namedtuple("Expected", "path records num_bytes")

# {(path, size, mtime): records}: readers ask for a file's count several times per run.
_COUNTS = {}
_UNCHECKED_FOLDERS = set()


class RecordCountError(ValueError):
  """A tfrecord file is missing or holds other than its manifest says (names the file)."""


def read_records(path, max_records=None):
  """Reads the records of `path` (checking CRCs); returns how many were read.

  Raises ValueError naming the file and the failing record on a corrupt or truncated file.
  """
  count = 0
  try:
    for _ in tf.io.tf_record_iterator(path):
      count += 1
      if max_records and count >= max_records:
        break
  except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as error:
    raise ValueError("corrupt tfrecord file %s: reading record %d failed (%s)" %
                     (path, count, error.message))
  return count


def count_records(path):
  """`read_records(path)`, read once per process as long as the file's size and mtime hold."""
  stat = tf.io.gfile.stat(path)
  key = (path, stat.length, stat.mtime_nsec)
  if key not in _COUNTS:
    _COUNTS[key] = read_records(path)
  return _COUNTS[key]


def manifest_entry(path, records):
  """{"records": n, "bytes": size} of a file a builder has just written."""
  return {"records": records, "bytes": tf.io.gfile.stat(path).length}


def check_files(expected, manifest):
  """Raises RecordCountError (one line) unless every file of `expected` (Expected tuples)
  is what `manifest` (the manifest's path, or what else the figures come from) says."""
  for file in expected:
    if not tf.io.gfile.exists(file.path):
      raise RecordCountError("%s is missing: %s lists it with %d records"
                             % (file.path, manifest, file.records))
    size = tf.io.gfile.stat(file.path).length
    if file.num_bytes is not None and size != file.num_bytes:
      raise RecordCountError("%s holds %d bytes, %s says %d bytes and %d records (file "
                             "truncated or replaced?)" % (file.path, size, manifest,
                                                          file.num_bytes, file.records))
  total_bytes = sum(file.num_bytes or 0 for file in expected)
  if all(file.num_bytes is not None for file in expected) and total_bytes > MAX_BYTES_TO_COUNT:
    logging.info("%d files (%.1f GB) have the byte sizes %s gives; their records are not "
                 "counted (that would read every byte)", len(expected),
                 total_bytes / 1024.0 ** 3, manifest)
    return
  for file in expected:
    found = count_records(file.path)
    if found != file.records:
      raise RecordCountError("%s holds %d records, %s says %d (file truncated or replaced?)"
                             % (file.path, found, manifest, file.records))


def log_unchecked(folder, reason):
  """Logs, once per folder, that its record counts cannot be checked and why."""
  if folder not in _UNCHECKED_FOLDERS:
    _UNCHECKED_FOLDERS.add(folder)
    logging.warning("%s %s: record counts not checked (a corrupt record is still named "
                    "when read)", folder, reason)
