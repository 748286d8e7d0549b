"""PACS for MASF: split lists, the episodic / evaluation / predict inputs, from the raw
release or from the tfrecords tools/build_pacs_tfrecords.py writes.

Layout of the release (see ../shared/data/README.md):
  <dataroot>/kfold/<domain>/<class>/<file>           227x227 JPEG (sketch: PNG)
  <dataroot>/splits/<domain>_<split>_kfold.txt       "<domain>/<class>/<file> <label 1..7>"

Labels are made 0-based here (dog=0 ... person=6). The MASF code and its Ascend port feed the
1-based labels to `one_hot(., 7)`, which turns every "person" image into an all-zero row.

Every list line is checked before any long work: malformed lines, labels outside 1..7, a label
that disagrees with the class folder, a domain folder that is not the list's domain, a path
listed twice, and (builder) missing or undecodable images. By default all problems are
reported together in one PacsDataError naming file:line; with skip_bad_lines they are
dropped, counted and logged (and the builder records them in its summary json).

Tfrecords (built by `python -m tools.build_pacs_tfrecords --dataroot=<pacs> --output_dir=<dir>`,
which decodes every image once with PIL and stores the original bytes):
<dir>/pacs_<domain>_<split>.tfrecord and <dir>/pacs_summary.json, which records each file's
examples ("counts") and size ("bytes"). A run checks every tfrecord it takes a count from
against these before any graph (input_fns/record_checks.py): a file cut short is an
error naming it, not a run on part of the images.
"""
import collections
import json
import logging
import os

import tensorflow.compat.v1 as tf

from input_fns import data_root
from input_fns import record_checks
from preprocessing import alexnet as alexnet_preprocessing

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASS_NAMES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train", "crossval", "test")
SUMMARY_FILE = "pacs_summary.json"
_MAX_LISTED_PROBLEMS = 25

ListEntry = collections.namedtuple("ListEntry", ["relpath", "label", "list_file", "line"])

_log = logging.getLogger(__name__)


class PacsDataError(ValueError):
  """The PACS lists or images are not what the pipeline expects."""


def default_dataroot():
  """<data root>/pacs: $DATA_ROOT/pacs, else <repo>/../shared/data/pacs."""
  return os.path.join(data_root(), "pacs")


def split_list_path(dataroot, domain, split):
  return os.path.join(dataroot, "splits", "%s_%s_kfold.txt" % (domain, split))


def image_path(dataroot, relpath):
  return os.path.join(dataroot, "kfold", relpath)


def tfrecord_path(data_dir, domain, split):
  return os.path.join(data_dir, "pacs_%s_%s.tfrecord" % (domain, split))


def check_domain_split(domain, split):
  if domain not in DOMAINS:
    raise PacsDataError("unknown PACS domain %r; expected one of %s" % (domain, ", ".join(DOMAINS)))
  if split not in SPLITS:
    raise PacsDataError("unknown PACS split %r; expected one of %s" % (split, ", ".join(SPLITS)))


def _format_problems(problems, what):
  shown = ["  %s" % p for p in problems[:_MAX_LISTED_PROBLEMS]]
  if len(problems) > _MAX_LISTED_PROBLEMS:
    shown.append("  ... and %d more" % (len(problems) - _MAX_LISTED_PROBLEMS))
  return "%d %s:\n%s" % (len(problems), what, "\n".join(shown))


def parse_split_list(path, domain):
  """Parses one official list -> (entries with 0-based labels, problems as strings).

  A problem line is not returned as an entry; the caller decides to fail or to skip.
  """
  if not os.path.isfile(path):
    raise PacsDataError("PACS split list %s does not exist (expected "
                        "<dataroot>/splits/<domain>_<split>_kfold.txt)" % path)
  entries, problems, seen = [], [], {}
  with open(path) as f:
    for number, raw in enumerate(f, 1):
      line = raw.strip()
      if not line:
        continue
      where = "%s:%d" % (path, number)
      fields = line.rsplit(None, 1)
      if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        problems.append("%s: expected '<domain>/<class>/<file> <label>', got %r" % (where, line))
        continue
      relpath, label = fields[0], int(fields[1])
      parts = relpath.split("/")
      if not 1 <= label <= NUM_CLASSES:
        problems.append("%s: label %d of %s is outside 1..%d"
                        % (where, label, relpath, NUM_CLASSES))
        continue
      if len(parts) != 3 or parts[0] != domain:
        problems.append("%s: %s is not <%s>/<class>/<file>" % (where, relpath, domain))
        continue
      if parts[1] != CLASS_NAMES[label - 1]:
        problems.append("%s: label %d means %r but %s is in folder %r"
                        % (where, label, CLASS_NAMES[label - 1], relpath, parts[1]))
        continue
      if relpath in seen:
        problems.append("%s: %s is already listed on line %d" % (where, relpath, seen[relpath]))
        continue
      seen[relpath] = number
      entries.append(ListEntry(relpath, label - 1, path, number))
  if not entries and not problems:
    raise PacsDataError("PACS split list %s is empty" % path)
  return entries, problems


def read_split_list(dataroot, domain, split, skip_bad_lines=False, check_files=True):
  """Entries of `<domain>_<split>_kfold.txt` with 0-based labels; problems fail or are skipped.

  check_files also requires each listed image to exist (decodability is the builder's job).
  """
  check_domain_split(domain, split)
  path = split_list_path(dataroot, domain, split)
  entries, problems = parse_split_list(path, domain)
  if check_files:
    present = []
    for entry in entries:
      if os.path.isfile(image_path(dataroot, entry.relpath)):
        present.append(entry)
      else:
        problems.append("%s:%d: image %s does not exist"
                        % (path, entry.line, image_path(dataroot, entry.relpath)))
    entries = present
  resolve_problems(problems, skip_bad_lines, "bad line(s) in %s" % path)
  return entries


def resolve_problems(problems, skip_bad_lines, what):
  if not problems:
    return
  if not skip_bad_lines:
    raise PacsDataError(_format_problems(problems, what) +
                        "\nFix the list, or pass skip_bad_lines (--skip_bad_lines / "
                        "--skip_bad_list_lines) to drop and count these lines.")
  _log.warning("skipping %s", _format_problems(problems, what))


def read_summary(data_dir):
  path = os.path.join(data_dir, SUMMARY_FILE)
  if not os.path.isfile(path):
    raise PacsDataError("%s not found: --data_dir must hold PACS tfrecords written by "
                        "`python -m tools.build_pacs_tfrecords --dataroot=... --output_dir=%s`"
                        % (path, data_dir))
  with open(path) as f:
    return json.load(f)


class PacsSource(object):
  """Where the examples come from: tfrecords in data_dir if given, else the raw lists."""

  def __init__(self, data_dir=None, dataroot=None, skip_bad_lines=False):
    self.data_dir = data_dir or None
    self.dataroot = dataroot or default_dataroot()
    self.skip_bad_lines = skip_bad_lines
    self._summary = read_summary(self.data_dir) if self.data_dir else None
    self._entries = {}

  def describe(self):
    return ("tfrecords in %s" % self.data_dir if self.data_dir
            else "split lists under %s" % self.dataroot)

  def _list_entries(self, domain, split):
    key = (domain, split)
    if key not in self._entries:
      self._entries[key] = read_split_list(self.dataroot, domain, split,
                                           skip_bad_lines=self.skip_bad_lines)
    return self._entries[key]

  def check(self, domain_splits):
    """Fails (one error, every missing file or bad line) before any graph is built."""
    for domain, split in domain_splits:
      self.count(domain, split)

  def count(self, domain, split):
    """Examples of the list; with tfrecords, the summary's count, once the file is found to
    hold it (by its size first where the summary records one; older summaries do not)."""
    check_domain_split(domain, split)
    if self.data_dir:
      key = "%s_%s" % (domain, split)
      summary_path = os.path.join(self.data_dir, SUMMARY_FILE)
      if key not in self._summary["counts"]:
        raise PacsDataError("%s has no %s: rebuild the tfrecords with it included"
                            % (summary_path, key))
      count = self._summary["counts"][key]
      record_checks.check_files([record_checks.Expected(
          tfrecord_path(self.data_dir, domain, split), count,
          self._summary.get("bytes", {}).get(key))], summary_path)
      return count
    return len(self._list_entries(domain, split))

  def encoded_dataset(self, domain, split, with_names=False):
    """Dataset of (encoded image bytes, 0-based int32 label), with_names plus the image's
    <domain>/<class>/<file>."""
    if self.data_dir:
      spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
              "image/class/label": tf.io.FixedLenFeature([], tf.int64)}
      if with_names:
        spec["image/filename"] = tf.io.FixedLenFeature([], tf.string)

      def _parse(record):
        parsed = tf.io.parse_single_example(record, spec)
        fields = (parsed["image/encoded"], tf.cast(parsed["image/class/label"], tf.int32))
        return fields + (parsed["image/filename"],) if with_names else fields

      self.count(domain, split)
      return tf.data.TFRecordDataset(tfrecord_path(self.data_dir, domain, split)).map(_parse)
    entries = self._list_entries(domain, split)
    paths = [image_path(self.dataroot, e.relpath) for e in entries]
    labels = [e.label for e in entries]
    names = [e.relpath for e in entries]
    files = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32), names))
    return files.map(lambda path, label, name: (tf.io.read_file(path), label) + (
        (name,) if with_names else ()))


_AUTOTUNE = tf.data.experimental.AUTOTUNE


def _decoded(dataset, image_size):
  return dataset.map(
      lambda encoded, label: (alexnet_preprocessing.resize_uint8(
          alexnet_preprocessing.decode_rgb(encoded), image_size), label),
      num_parallel_calls=_AUTOTUNE)


def domain_train_dataset(source, domain, image_size, batch_size, cache_decoded=True,
                         split="train"):
  """Endless uint8 batches of one domain, reshuffled every epoch (the reference re-initialises
  each domain's iterator every epoch and shuffles its whole list)."""
  count = source.count(domain, split)
  if count < batch_size:
    raise PacsDataError("%s/%s has %d images, fewer than --meta_batch_size=%d"
                        % (domain, split, count, batch_size))
  dataset = source.encoded_dataset(domain, split)
  if cache_decoded:
    # Decode once; shuffled copies share the cached uint8 buffers.
    dataset = _decoded(dataset, image_size).cache()
    dataset = dataset.shuffle(count, reshuffle_each_iteration=True).repeat()
  else:
    dataset = dataset.shuffle(count, reshuffle_each_iteration=True).repeat()
    dataset = _decoded(dataset, image_size)
  return dataset.batch(batch_size, drop_remainder=True)


def episode_dataset(source, source_domains, meta_batch_size, image_size, flip_probability,
                    cache_decoded=True):
  """One element per step: meta_batch_size images from each of the three source domains in
  a random order drawn per step, so that roles are [meta-train a | meta-train a1 | meta-test b].

  features: images [3B, S, S, 3] float32 BGR; domains [3B] int32 (index in DOMAINS).
  labels: [3B] int32, 0-based.
  """
  if len(source_domains) != 3 or len(set(source_domains)) != 3:
    raise PacsDataError("an episode needs 3 distinct source domains, got %s" % (source_domains,))
  per_domain = tuple(domain_train_dataset(source, d, image_size, meta_batch_size, cache_decoded)
                     for d in source_domains)
  domain_ids = tf.constant([DOMAINS.index(d) for d in source_domains], tf.int32)
  total = 3 * meta_batch_size

  def _episode(*batches):
    images = tf.stack([b[0] for b in batches])
    labels = tf.stack([b[1] for b in batches])
    order = tf.random.shuffle(tf.range(3))
    images = tf.reshape(tf.gather(images, order), [total, image_size, image_size, 3])
    images = alexnet_preprocessing.preprocess_batch_for_train(images, flip_probability)
    labels = tf.reshape(tf.gather(labels, order), [total])
    domains = tf.reshape(tf.tile(tf.gather(domain_ids, order)[:, None], [1, meta_batch_size]),
                         [total])
    return {"images": images, "domains": domains}, labels

  return tf.data.Dataset.zip(per_domain).map(_episode).prefetch(1)


def _eval_image(encoded, image_size):
  image = alexnet_preprocessing.resize_uint8(alexnet_preprocessing.decode_rgb(encoded),
                                             image_size)
  return alexnet_preprocessing.preprocess_for_eval(image)


def _concatenate(datasets):
  dataset = datasets[0]
  for other in datasets[1:]:
    dataset = dataset.concatenate(other)
  return dataset


def eval_dataset(source, domain_splits, image_size, batch_size):
  """Every image of the given (domain, split) lists once, in order.

  features: images, domains (index in DOMAINS), weights; labels 0-based. Every batch has
  exactly batch_size rows (static shapes for the NPU): the last one is padded with
  weight-0 rows of domain -1.
  """
  dataset = _concatenate([
      source.encoded_dataset(domain, split).map(
          lambda encoded, label, i=DOMAINS.index(domain): (encoded, label, i))
      for domain, split in domain_splits])

  def _prepare(encoded, label, domain_id):
    return _eval_image(encoded, image_size), label, domain_id

  dataset = dataset.map(_prepare, num_parallel_calls=_AUTOTUNE).batch(batch_size)

  def _finish(images, labels, domain_ids):
    real = tf.shape(labels)[0]
    missing = batch_size - real
    images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, missing]])
    domain_ids = tf.pad(domain_ids, [[0, missing]], constant_values=-1)
    weights = tf.pad(tf.ones([real], tf.float32), [[0, missing]])
    for tensor in (images, labels, domain_ids, weights):
      tensor.set_shape([batch_size] + tensor.shape.as_list()[1:])
    return {"images": images, "domains": domain_ids, "weights": weights}, labels

  return dataset.map(_finish).prefetch(1)


def predict_dataset(source, domain_splits, image_size, batch_size):
  """Features only, every image of the (domain, split) lists once, in order: images and
  id (the image's <domain>/<class>/<file>). The last batch is not padded: one prediction
  per image."""
  dataset = _concatenate([source.encoded_dataset(domain, split, with_names=True)
                          for domain, split in domain_splits])
  dataset = dataset.map(
      lambda encoded, label, name: {"images": _eval_image(encoded, image_size), "id": name},
      num_parallel_calls=_AUTOTUNE)
  return dataset.batch(batch_size).prefetch(1)
