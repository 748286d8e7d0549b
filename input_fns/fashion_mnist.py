"""Fashion-MNIST for ProtoAttend: IDX reader, the run's TFRecord cache, Estimator input_fns.

Why TFRecords (and not the decoded arrays straight into tf.data): the arrays would become
graph constants (47 MB for the training images), and the Estimator writes its graph into
graph.pbtxt and into every checkpoint's .meta file. TFRecords keep the graph small, keep the
whole input pipeline inside tf.data (so it runs on the host side of an NPU data pipeline,
no py_func) and are what the issue asks for. The files are built once from the official IDX
.gz files (about 2 s) into a cache directory and reused; a manifest records which IDX files
they came from, so a changed source is rebuilt instead of silently reused.
`python -m tools.build_fashion_mnist_tfrecords IDX_DIR OUTPUT_DIR` builds them ahead of time.

Every record holds the raw 28x28 uint8 image, its label, its stable id (the index of the
image in its IDX file, which is how prototypes are reported) and `is_ood`. Batches are
parsed with one `parse_example` call and augmented as a batch (preprocessing.pad_crop_flip),
which is several times cheaper on CPU than a per-element map.

Features of every step (TPUEstimator style: the query batch has params['batch_size']):
  image       [B, 28, 28, 1] float32, standardised (and augmented when training)
  id          [B] int32, index of the query in its set (test set or digits set)
  cand_image  [C, 28, 28, 1] float32, the candidate database, drawn from the training set
  cand_label  [C] int32
  cand_id     [C] int32, index of each candidate in the training set
  is_ood      [B] int32 (eval/predict only): 1 for the out-of-distribution digits
  weight      [B] float32 (eval only): 0 for the padding of the last batch
Training candidates are a fresh random batch of `example_cand_size` augmented training
images every step (as upstream); evaluation and prediction use one fixed database of
`eval_cand_size` training images (a seeded random subset, the same for every checkpoint),
preprocessed like evaluation images.

The out-of-distribution set is scikit-learn's handwritten digits (`load_digits`, 1,797 8x8
images with 17 grey levels, shipped with scikit-learn): scaled to 0..255, resized to 20x20
and centred on a 28x28 black canvas, the MNIST layout.
"""
import gzip
import json
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np
import tensorflow.compat.v1 as tf

import input_fns
from input_fns import record_checks
from preprocessing import pad_crop_flip

IMAGE_SIZE = 28
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}
OOD_SIZE = 1797
TFRECORD_FILES = {"train": "train.tfrecord", "test": "test.tfrecord",
                  "ood": "ood_digits.tfrecord"}
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
CROP_PADDING = 2
# Op seeds of the augmentation of queries and candidates: distinct, so the two streams do
# not draw identical crops/flips (the run's randomness still follows --tf_random_seed).
QUERY_AUGMENT_SEED = 11
CANDIDATE_AUGMENT_SEED = 23


class IdxError(ValueError):
  """An IDX file is malformed; the message names the file."""


def _read_gzip(path):
  if not os.path.isfile(path):
    raise IdxError("%s: file not found" % path)
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:  # not gzip, a cut or a corrupt gzip stream
    raise IdxError("%s: cannot be read as a gzip file (%s)" % (path, e))


def _read_idx(path, magic, num_dims):
  """Returns (dims, payload) of an IDX file, checking magic, header and payload size."""
  data = _read_gzip(path)
  header_size = 4 * (1 + num_dims)
  if len(data) < header_size:
    raise IdxError("%s: %d bytes, shorter than the %d-byte IDX header"
                   % (path, len(data), header_size))
  found_magic = struct.unpack(">i", data[:4])[0]
  if found_magic != magic:
    raise IdxError("%s: magic number %d, expected %d (%s file)"
                   % (path, found_magic, magic,
                      "an images" if magic == IMAGES_MAGIC else "a labels"))
  dims = struct.unpack(">" + "i" * num_dims, data[4:header_size])
  expected = int(np.prod(dims))
  payload = len(data) - header_size
  if payload != expected:
    raise IdxError("%s: %d bytes of data after the header, but the header (dims %s) "
                   "promises %d (%s)" % (path, payload, "x".join(map(str, dims)), expected,
                                         "truncated" if payload < expected else "extra bytes"))
  return dims, np.frombuffer(data, np.uint8, offset=header_size)


def read_idx_images(path, image_size=IMAGE_SIZE):
  """uint8 [N, image_size, image_size] from an IDX3 .gz images file (magic 2051)."""
  (count, rows, cols), pixels = _read_idx(path, IMAGES_MAGIC, 3)
  if (rows, cols) != (image_size, image_size):
    raise IdxError("%s: images are %dx%d, expected %dx%d"
                   % (path, rows, cols, image_size, image_size))
  return pixels.reshape(count, rows, cols)


def read_idx_labels(path, num_classes=NUM_CLASSES):
  """uint8 [N] from an IDX1 .gz labels file (magic 2049), checked to lie in [0, classes)."""
  (_,), labels = _read_idx(path, LABELS_MAGIC, 1)
  if labels.size and labels.max() >= num_classes:
    raise IdxError("%s: label %d out of range [0, %d)" % (path, labels.max(), num_classes))
  return labels


def load_split(idx_dir, split, expected_count=None):
  """(images uint8 [N,28,28], labels uint8 [N]) of 'train' or 'test' from the IDX .gz files.

  Raises IdxError naming the file when a file is malformed, when the image and label counts
  disagree, or when the count differs from `expected_count`.
  """
  if split not in IDX_FILES:
    raise ValueError("split %r is not one of %s" % (split, sorted(IDX_FILES)))
  images_path, labels_path = [os.path.join(idx_dir, name) for name in IDX_FILES[split]]
  images = read_idx_images(images_path)
  labels = read_idx_labels(labels_path)
  if len(images) != len(labels):
    raise IdxError("%s holds %d images but %s holds %d labels"
                   % (images_path, len(images), labels_path, len(labels)))
  if expected_count is not None and len(images) != expected_count:
    other_sizes = {size: other for other, size in SPLIT_SIZES.items() if other != split}
    hint = ("; %d is the %s set's size: are the train and test files swapped?"
            % (len(images), other_sizes[len(images)]) if len(images) in other_sizes else "")
    raise IdxError("%s holds %d images, expected %d for the Fashion-MNIST %s set%s"
                   % (images_path, len(images), expected_count, split, hint))
  return images, labels


def load_digits_ood(image_size=IMAGE_SIZE, digit_size=20):
  """scikit-learn's 8x8 digits as uint8 [1797, 28, 28] (digit in the central 20x20) + labels."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  scaled = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
  margin = (image_size - digit_size) // 2
  out = np.zeros((len(scaled), image_size, image_size), np.uint8)
  for i, small in enumerate(scaled):
    big = Image.fromarray(small).resize((digit_size, digit_size), Image.BILINEAR)
    out[i, margin:margin + digit_size, margin:margin + digit_size] = np.asarray(big)
  return out, digits.target.astype(np.uint8)


def _example(image, label, index, is_ood):
  feature = {
      "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
      "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(index)])),
      "is_ood": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(is_ood)])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecord(path, images, labels, is_ood=0):
  with tf.io.TFRecordWriter(path) as writer:
    for index, (image, label) in enumerate(zip(images, labels)):
      writer.write(_example(image, label, index, is_ood))


def _source_signature(idx_dir):
  signature = {"version": MANIFEST_VERSION}
  for names in IDX_FILES.values():
    for name in names:
      signature[name] = os.path.getsize(os.path.join(idx_dir, name))
  return signature


def build_tfrecords(idx_dir, output_dir, include_ood=True, expected_counts=SPLIT_SIZES):
  """Writes train/test (and the OOD digits) TFRecords + manifest into output_dir.

  The IDX files are fully checked first (expected_counts: split -> image count, None to
  accept any). The files are written into a temporary sibling directory and moved into
  place, so concurrent builders never see half-written files.
  """
  splits = {split: load_split(idx_dir, split, (expected_counts or {}).get(split))
            for split in IDX_FILES}
  parent = os.path.dirname(os.path.abspath(output_dir))
  os.makedirs(parent, exist_ok=True)  # another process (a cluster's task) may make it too
  staging = tempfile.mkdtemp(prefix=".tfrecords-", dir=parent)
  try:
    for split, (images, labels) in splits.items():
      write_tfrecord(os.path.join(staging, TFRECORD_FILES[split]), images, labels)
    manifest = dict(_source_signature(idx_dir), counts={s: len(v[0]) for s, v in
                                                        splits.items()})
    if include_ood:
      images, labels = load_digits_ood()
      write_tfrecord(os.path.join(staging, TFRECORD_FILES["ood"]), images, labels, is_ood=1)
      manifest["counts"]["ood"] = len(images)
    with open(os.path.join(staging, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
    if _manifest_matches(idx_dir, output_dir, include_ood):  # another builder finished
      shutil.rmtree(staging)
      return output_dir
    if os.path.isdir(output_dir):
      shutil.rmtree(output_dir)
    os.rename(staging, output_dir)
  except OSError:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
    if not _manifest_matches(idx_dir, output_dir, include_ood):  # lost a race is fine
      raise
  return output_dir


def _manifest_matches(idx_dir, tfrecord_dir, include_ood):
  path = os.path.join(tfrecord_dir, MANIFEST)
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    manifest = json.load(f)
  counts = manifest.pop("counts", {})
  if include_ood and "ood" not in counts:
    return False
  return manifest == _source_signature(idx_dir)


def has_idx_files(directory):
  return all(os.path.isfile(os.path.join(directory, name))
             for names in IDX_FILES.values() for name in names)


def has_tfrecords(directory, include_ood=True):
  needed = ["train", "test"] + (["ood"] if include_ood else [])
  return all(os.path.isfile(os.path.join(directory, TFRECORD_FILES[s])) for s in needed)


def ensure_tfrecords(data_dir, cache_dir, include_ood=True):
  """Returns a directory holding the TFRecords.

  `data_dir` may already hold them (train.tfrecord, test.tfrecord, ood_digits.tfrecord);
  otherwise it must hold the four official IDX .gz files, which are converted into
  `cache_dir` unless an up-to-date conversion is already there.
  """
  if has_tfrecords(data_dir, include_ood):
    return data_dir
  if not has_idx_files(data_dir):
    missing = [n for names in IDX_FILES.values() for n in names
               if not os.path.isfile(os.path.join(data_dir, n))]
    raise IdxError("%s holds neither the Fashion-MNIST TFRecords (%s) nor the IDX files "
                   "(missing %s)" % (data_dir, ", ".join(sorted(TFRECORD_FILES.values())),
                                     ", ".join(missing)))
  if has_tfrecords(cache_dir, include_ood) and _manifest_matches(data_dir, cache_dir,
                                                                   include_ood):
    return cache_dir
  return build_tfrecords(data_dir, cache_dir, include_ood)


def _manifest_counts(tfrecord_dir):
  """{split: records} of the folder's manifest ({} without one)."""
  path = os.path.join(tfrecord_dir, MANIFEST)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f).get("counts", {})


def _release_size(split):
  return OOD_SIZE if split == "ood" else SPLIT_SIZES[split]


def _splits(include_ood):
  return ["train", "test"] + (["ood"] if include_ood else [])


def split_size(tfrecord_dir, split):
  """Number of records of `split`, from the manifest when there is one."""
  return _manifest_counts(tfrecord_dir).get(split, _release_size(split))


def record_counts(data_dir, include_ood=True):
  """{split: records} of the TFRecords a run reads from `data_dir`, known before any
  build: the manifest's counts when data_dir holds the TFRecords, else the release's
  sizes, the only ones ensure_tfrecords accepts from the IDX files."""
  listed = _manifest_counts(data_dir) if has_tfrecords(data_dir, include_ood) else {}
  return {split: listed.get(split, _release_size(split)) for split in _splits(include_ood)}


def check_record_counts(tfrecord_dir, include_ood=True):
  """Fails (one line naming the file) unless each TFRecord file holds split_size() records:
  a file cut at a record boundary reads as a shorter, valid file (record_checks.py)."""
  manifest = os.path.join(tfrecord_dir, MANIFEST)
  listed = _manifest_counts(tfrecord_dir)
  for split in _splits(include_ood):
    record_checks.check_files(
        [record_checks.Expected(os.path.join(tfrecord_dir, TFRECORD_FILES[split]),
                                listed.get(split, _release_size(split)), None)],
        manifest if split in listed else "the Fashion-MNIST release")


# ------------------------------------------------------------------------------------------
# tf.data pipelines

_FEATURES = {
    "image_raw": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "id": tf.io.FixedLenFeature([], tf.int64),
    "is_ood": tf.io.FixedLenFeature([], tf.int64),
}


def parse_batch(serialized):
  """Serialized examples [n] -> dict of uint8 images [n,28,28,1] and int32 label/id/is_ood."""
  parsed = tf.io.parse_example(serialized, _FEATURES)
  images = tf.io.decode_raw(parsed["image_raw"], tf.uint8)
  images = tf.reshape(images, [-1, IMAGE_SIZE, IMAGE_SIZE, 1])
  return {"image": images,
          "label": tf.cast(parsed["label"], tf.int32),
          "id": tf.cast(parsed["id"], tf.int32),
          "is_ood": tf.cast(parsed["is_ood"], tf.int32)}


def _records(tfrecord_dir, split):
  return tf.data.TFRecordDataset(os.path.join(tfrecord_dir, TFRECORD_FILES[split]))


def _train_candidates(tfrecord_dir, cand_size, train_size):
  records = _records(tfrecord_dir, "train").shuffle(train_size)
  return records.repeat().batch(cand_size, drop_remainder=True).map(parse_batch)


def fixed_candidate_ids(cand_size, seed, train_size=SPLIT_SIZES["train"]):
  """The sorted training-set ids of the fixed evaluation candidate database."""
  if not 0 < cand_size <= train_size:
    raise ValueError("--eval_cand_size=%d must lie in [1, %d] (the training images)"
                     % (cand_size, train_size))
  rng = np.random.RandomState(seed)
  return np.sort(rng.choice(train_size, cand_size, replace=False)).astype(np.int32)


def _fixed_candidates(tfrecord_dir, cand_size, seed, train_size):
  """One batch of the fixed candidates (eval preprocessing), repeated every step."""
  chosen = np.zeros([train_size], np.bool_)
  chosen[fixed_candidate_ids(cand_size, seed, train_size)] = True

  def _keep_chosen(batch):
    mask = tf.gather(tf.constant(chosen), batch["id"])
    return {k: tf.boolean_mask(v, mask) for k, v in batch.items()}

  records = _records(tfrecord_dir, "train").batch(4096).map(parse_batch)
  selected = records.map(_keep_chosen)
  cands = selected.unbatch() if hasattr(selected, "unbatch") else selected.apply(
      tf.data.experimental.unbatch())
  cands = cands.batch(cand_size, drop_remainder=True).take(1).cache().repeat()
  return cands.map(lambda c: _candidate_features(c, pad_crop_flip.eval_preprocess))


def _candidate_features(cands, preprocess):
  return {"cand_image": preprocess(cands["image"]), "cand_label": cands["label"],
          "cand_id": cands["id"]}


def _pad_batch(batch, batch_size):
  """Pads a (possibly short) last batch to batch_size; padding rows get weight 0."""
  size = tf.shape(batch["id"])[0]
  missing = batch_size - size
  out = {}
  for key, value in batch.items():
    paddings = [[0, missing]] + [[0, 0]] * (len(value.shape) - 1)
    padded = tf.pad(value, paddings)
    padded.set_shape([batch_size] + value.shape.as_list()[1:])
    out[key] = padded
  weight = tf.pad(tf.ones([size], tf.float32), [[0, missing]])
  weight.set_shape([batch_size])
  out["weight"] = weight
  return out


def _interleaved_eval_records(tfrecord_dir, counts):
  """Test records, with the OOD digits (when `counts` has them) spread evenly among them
  (deterministic order).

  Spreading (instead of appending) keeps a partial evaluation (--eval_steps) meaningful
  for the OOD AUROC.
  """
  test = _records(tfrecord_dir, "test")
  if "ood" not in counts:
    return test
  num_ood = counts["ood"]
  total = counts["test"] + num_ood

  def _choice(i):  # 1 when the OOD count of the first i+1 records grows
    return (i + 1) * num_ood // total - i * num_ood // total

  choices = tf.data.Dataset.range(total).map(_choice)
  return tf.data.experimental.choose_from_datasets(
      [test, _records(tfrecord_dir, "ood")], choices)


def num_eval_examples(tfrecord_dir, include_ood):
  return split_size(tfrecord_dir, "test") + (split_size(tfrecord_dir, "ood")
                                             if include_ood else 0)


def _merge(queries, cands):
  features = dict(queries)
  features.update(cands)
  return features


def _train_dataset(tfrecord_dir, batch_size, example_cand_size, in_batch_candidates,
                   train_size, num_workers=1, worker_index=0):
  """Shuffled, augmented query batches (this worker's share of the queries), each with a
  fresh candidate batch from the whole training set unless in_batch_candidates."""
  queries = _records(tfrecord_dir, "train")
  if num_workers > 1:
    queries = queries.shard(num_workers, worker_index)
  queries = queries.shuffle(train_size).repeat()
  queries = queries.batch(batch_size, drop_remainder=True).map(parse_batch)
  if in_batch_candidates:
    return queries.map(lambda q: _split_labels(_train_query(q)))
  cands = _train_candidates(tfrecord_dir, example_cand_size, train_size).map(
      lambda c: _candidate_features(c, lambda x: _train_preprocess(
          x, CANDIDATE_AUGMENT_SEED)))
  return tf.data.Dataset.zip((queries, cands)).map(
      lambda q, c: _split_labels(_merge(_train_query(q), c)), num_parallel_calls=2)


def _eval_dataset(tfrecord_dir, mode, batch_size, eval_cand_size, eval_cand_seed, counts):
  """One pass over the test set (+ OOD digits), each batch with the fixed candidates;
  EVAL pads the last batch, PREDICT yields features only."""
  predict = mode == tf.estimator.ModeKeys.PREDICT
  queries = _interleaved_eval_records(tfrecord_dir, counts).batch(batch_size)
  queries = queries.map(parse_batch)
  if not predict:
    queries = queries.map(lambda b: _pad_batch(b, batch_size))
  cands = _fixed_candidates(tfrecord_dir, eval_cand_size, eval_cand_seed, counts["train"])
  dataset = tf.data.Dataset.zip((queries, cands)).map(
      lambda q, c: _split_labels(_merge(_eval_query(q), c)))
  if predict:
    dataset = dataset.map(lambda features, labels: features)
  return dataset


def make_input_fn(tfrecord_dir, mode, example_cand_size, eval_cand_size, eval_cand_seed,
                  include_ood=True, in_batch_candidates=False, counts=None):
  """Returns input_fn(params) -> Dataset of (features, labels) for a tf.estimator mode.

  TRAIN repeats forever over shuffled, augmented training images with a fresh candidate
  batch per step. EVAL and PREDICT make one pass over the test set (plus, when
  include_ood, the OOD digits), each step carrying the fixed candidate database. EVAL pads
  the last batch to a whole one (static shapes; padding has weight 0); PREDICT yields
  features only and does not pad: one prediction per example. With in_batch_candidates,
  TRAIN features carry no candidates (the model uses the batch). `counts`: record_counts()
  of the run (default: read from tfrecord_dir now).
  """
  counts = counts or record_counts(tfrecord_dir, include_ood)

  def input_fn(params, input_context=None):
    if mode == tf.estimator.ModeKeys.TRAIN:
      num_workers, worker_index = input_fns.worker_shard(input_context)
      dataset = _train_dataset(tfrecord_dir, params["batch_size"], example_cand_size,
                               in_batch_candidates, counts["train"], num_workers,
                               worker_index)
    else:
      dataset = _eval_dataset(tfrecord_dir, mode, params["batch_size"], eval_cand_size,
                              eval_cand_seed, counts)
    return dataset.prefetch(2)

  # The files it reads, so that a record found corrupt while running is named (run_loop).
  splits = ["train"] if mode == tf.estimator.ModeKeys.TRAIN else _splits(include_ood)
  input_fn.files = [os.path.join(tfrecord_dir, TFRECORD_FILES[s]) for s in splits]
  return input_fn


def _train_preprocess(images, seed):
  return pad_crop_flip.train_preprocess(images, CROP_PADDING, seed=seed)


def _train_query(batch):
  return {"image": _train_preprocess(batch["image"], QUERY_AUGMENT_SEED),
          "label": batch["label"],
          "id": batch["id"]}


def _eval_query(batch):
  out = dict(batch)
  out["image"] = pad_crop_flip.eval_preprocess(batch["image"])
  return out


def _split_labels(features):
  features = dict(features)
  labels = features.pop("label")
  return features, labels
