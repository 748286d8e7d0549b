"""Silent data shortfalls (issue #11, item 6): every model's tfrecords are checked against
their builder's manifest before any graph, and every corrupt record names its file.

Each input family is built tiny into tmp_path by its own builder, then cut: at a record
boundary (a shorter file that TensorFlow reads without complaint), inside a record, or
listed in no manifest. A cut at a boundary is caught by the byte size where the manifest
records it, and by the record count where it does not (older PACS summaries, TFDS
dataset_info.json, Fashion-MNIST's manifest).
"""
import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from estimators import run_loop
from input_fns import cifar
from input_fns import fashion_mnist
from input_fns import image_sources
from input_fns import imagenet
from input_fns import pacs
from input_fns import record_checks
from input_fns import tf_flowers
from input_fns import tfds_layout
from tests import conftest
from tools import build_cifar_tfrecords
from tools import build_image_tfrecords as builder
from tools import build_pacs_tfrecords

RECORD_OVERHEAD = 16  # length (8) + length CRC (4) + data CRC (4) around every record


def _records(path):
  return list(tf.io.tf_record_iterator(path))


def _truncate(path, size):
  with open(path, "r+b") as f:
    f.truncate(size)


def cut_at_record(path, keep):
  """Cuts `path` after its first `keep` records: a valid, shorter tfrecord file."""
  _truncate(path, sum(RECORD_OVERHEAD + len(r) for r in _records(path)[:keep]))


def cut_mid_record(path):
  _truncate(path, os.path.getsize(path) - 20)


def _read_all(path):
  """Reads `path` through tf.data in a graph; returns the record count."""
  with tf.Graph().as_default():
    element = tf.data.make_one_shot_iterator(tf.data.TFRecordDataset(path)).get_next()
    count = 0
    with tf.Session() as session:
      try:
        while True:
          session.run(element)
          count += 1
      except tf.errors.OutOfRangeError:
        return count


def _jpeg(value, size=8):
  return builder.encode_rgb_array(np.full((size, size, 3), value, np.uint8))


def _load_json(path):
  with open(path) as f:
    return json.load(f)


def _save_json(path, content):
  with open(path, "w") as f:
    json.dump(content, f)


def run_script(argv, timeout=300):
  """Runs an entry script; returns (exit code, stderr lines)."""
  proc = subprocess.run([sys.executable] + argv, cwd=conftest.REPO, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=timeout)
  return proc.returncode, proc.stderr.decode("utf-8", "replace").strip().splitlines()


def assert_no_graph_built(model_dir):
  written = os.listdir(model_dir) if os.path.isdir(model_dir) else []
  assert not [name for name in written if name.startswith(("graph", "events", "model.ckpt"))]


def assert_one_line_error(code, stderr, *names):
  assert code != 0
  assert not any("Traceback" in line for line in stderr), "\n".join(stderr[-30:])
  assert stderr[-1].startswith("error: "), "\n".join(stderr[-30:])
  for name in names:
    assert name in stderr[-1]


# ---- what TensorFlow does with a cut file (both stacks) --------------------------------


def test_a_cut_at_a_record_boundary_reads_as_a_valid_shorter_file(tmp_path):
  path = str(tmp_path / "f.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(5):
      writer.write(b"x" * (40 + i))
  boundary = sum(RECORD_OVERHEAD + len(r) for r in _records(path)[:3])
  _truncate(path, boundary + 11)  # inside the 4th record's 12-byte header
  assert _read_all(path) == 3  # no error at all: only a known count exposes it
  _truncate(path, boundary)
  assert _read_all(path) == 3


def test_a_cut_inside_a_record_is_a_data_loss_error_without_the_file_name(tmp_path):
  path = str(tmp_path / "f.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for _ in range(3):
      writer.write(b"x" * 100)
  cut_mid_record(path)
  with pytest.raises(tf.errors.DataLossError) as error:
    _read_all(path)
  assert "truncated record" in error.value.message and path not in error.value.message
  with pytest.raises(ValueError, match="corrupt tfrecord file %s: reading record 2" % path):
    record_checks.count_records(path)


# ---- ImageNet-format shards (tools/build_image_tfrecords.py): AmoebaNet, image_folder ---


def build_image_folder(output_dir, num_train=6, num_validation=3, train_shards=2):
  def items(count, split):
    return [builder.ImageItem(i, 1 + i % 2, "c%d" % (i % 2), "%s/%d.jpg" % (split, i))
            for i in range(count)]

  return builder.write_dataset(
      ["c0", "c1"], {"train": items(num_train, "train"),
                     "validation": items(num_validation, "validation")},
      output_dir, {"train": train_shards, "validation": 1},
      lambda i: (_jpeg(i * 20), 8, 8), strict=True, progress_every=0)


@pytest.fixture
def image_folder(tmp_path):
  data_dir = str(tmp_path / "records")
  build_image_folder(data_dir)
  return data_dir


def test_builder_manifest_lists_every_shard_with_records_and_bytes(image_folder):
  listed = _load_json(os.path.join(image_folder, imagenet.MANIFEST_FILENAME))["files"]
  assert sorted(listed) == ["train-00000-of-00002", "train-00001-of-00002",
                            "validation-00000-of-00001"]
  for name, entry in listed.items():
    path = os.path.join(image_folder, name)
    assert entry == {"records": len(_records(path)), "bytes": os.path.getsize(path)}
  assert sum(entry["records"] for entry in listed.values()) == 9


def test_intact_image_folder_passes(image_folder):
  imagenet.check_record_counts(image_folder, is_training=True)
  imagenet.check_record_counts(image_folder, is_training=False)


def test_image_shard_cut_at_a_record_boundary_fails_on_its_size(image_folder):
  shard = os.path.join(image_folder, "train-00001-of-00002")
  size = os.path.getsize(shard)
  cut_at_record(shard, 2)
  with pytest.raises(ValueError) as error:
    imagenet.check_record_counts(image_folder, is_training=True)
  assert str(error.value) == (
      "%s holds %d bytes, %s says %d bytes and 3 records (file truncated or replaced?)"
      % (shard, os.path.getsize(shard), os.path.join(image_folder, "tfrecord_manifest.json"),
         size))


def test_image_shard_count_is_the_exact_test_without_byte_sizes(image_folder):
  manifest = os.path.join(image_folder, imagenet.MANIFEST_FILENAME)
  content = _load_json(manifest)
  for entry in content["files"].values():
    del entry["bytes"]
  _save_json(manifest, content)
  shard = os.path.join(image_folder, "train-00000-of-00002")
  cut_at_record(shard, 1)
  with pytest.raises(ValueError, match="^%s holds 1 records, %s says 3 \\(file truncated or "
                     "replaced\\?\\)$" % (shard, manifest)):
    imagenet.check_record_counts(image_folder, is_training=True)
  imagenet.check_record_counts(image_folder, is_training=False)  # the other split is intact
  cut_mid_record(shard)
  with pytest.raises(ValueError, match="corrupt tfrecord file %s" % shard):
    imagenet.check_record_counts(image_folder, is_training=True)


def test_image_shard_missing_from_disk_or_from_the_manifest(image_folder):
  manifest = os.path.join(image_folder, imagenet.MANIFEST_FILENAME)
  shard = os.path.join(image_folder, "train-00001-of-00002")
  os.rename(shard, image_folder + ".moved")
  with pytest.raises(ValueError, match="^%s is missing: %s lists it with 3 records$"
                     % (shard, manifest)):
    imagenet.check_record_counts(image_folder, is_training=True)
  os.rename(image_folder + ".moved", shard)
  stray = os.path.join(image_folder, "train-00002-of-00003")
  with open(stray, "wb") as f:
    f.write(open(shard, "rb").read())
  with pytest.raises(ValueError, match="^%s is not in %s" % (stray, manifest)):
    imagenet.check_record_counts(image_folder, is_training=True)


def test_shards_without_a_manifest_are_logged_once_as_unchecked(image_folder, monkeypatch):
  os.remove(os.path.join(image_folder, imagenet.MANIFEST_FILENAME))
  cut_at_record(os.path.join(image_folder, "train-00000-of-00002"), 1)
  warnings = []
  monkeypatch.setattr(record_checks.logging, "warning",
                      lambda message, *args: warnings.append(message % args))
  monkeypatch.setattr(record_checks, "_UNCHECKED_FOLDERS", set())
  imagenet.check_record_counts(image_folder, is_training=True)
  imagenet.check_record_counts(image_folder, is_training=False)
  assert len(warnings) == 1
  assert warnings[0].startswith("%s has no tfrecord_manifest.json" % image_folder)
  assert "record counts not checked" in warnings[0]


def test_a_rebuild_replaces_the_manifest(image_folder):
  with pytest.raises(ValueError, match="pass --overwrite"):
    build_image_folder(image_folder, num_train=4, train_shards=1)
  assert os.path.exists(os.path.join(image_folder, imagenet.MANIFEST_FILENAME))
  builder.write_dataset(
      ["c0", "c1"], {"train": [builder.ImageItem(0, 1, "c0", "a.jpg")], "validation": []},
      image_folder, {"train": 1, "validation": 1}, lambda i: (_jpeg(9), 8, 8),
      overwrite=True, progress_every=0)
  listed = _load_json(os.path.join(image_folder, imagenet.MANIFEST_FILENAME))["files"]
  assert sorted(listed) == ["train-00000-of-00001"]
  imagenet.check_record_counts(image_folder, is_training=True)


def test_amoeba_net_entry_point_names_the_cut_shard_before_training(image_folder, tmp_path):
  shard = os.path.join(image_folder, "train-00001-of-00002")
  cut_at_record(shard, 2)
  model_dir = str(tmp_path / "model")
  code, stderr = run_script([
      "amoeba_net.py", "--mode=train", "--data_dir=" + image_folder, "--model_dir=" + model_dir,
      "--num_cells=3", "--reduction_size=8", "--stem_reduction_size=8", "--image_size=32",
      "--num_label_classes=3", "--num_train_images=6", "--num_eval_images=3",
      "--train_batch_size=2", "--eval_batch_size=1", "--use_aux_head=false"])
  assert_one_line_error(code, stderr, shard, "says", "3 records")
  assert_no_graph_built(model_dir)


# ---- image_sources (ViT/BiT): image folder and TFDS layouts ----------------------------


def test_image_folder_source_checks_and_exposes_its_files(image_folder, cpu_backend):
  del cpu_backend
  source = image_sources.ImageFolderSource(image_folder)
  source.check_records("train")
  input_fn = image_sources.build_input_fn(source, "validation", False,
                                          lambda encoded: tf.zeros([4, 4, 3]))
  assert input_fn.files == [os.path.join(image_folder, "validation-00000-of-00001")]
  cut_at_record(os.path.join(image_folder, "validation-00000-of-00001"), 1)
  with pytest.raises(ValueError, match="validation-00000-of-00001 holds .* bytes"):
    source.check_records("validation")


def build_flowers(data_dir, per_shard=(3, 3)):
  examples = [tfds_layout.image_example(_jpeg(i * 30), i % 5) for i in range(sum(per_shard))]
  return tfds_layout.write_dataset(data_dir, tf_flowers.NAME, tf_flowers.VERSION,
                                   {"train": examples}, tf_flowers.CLASS_NAMES,
                                   num_shards=len(per_shard))


@pytest.fixture
def flowers(tmp_path):
  return build_flowers(str(tmp_path / "tfds"))


def _flowers_shard(version_dir, index):
  return os.path.join(version_dir, "tf_flowers-train.tfrecord-%05d-of-00002" % index)


def test_intact_tfds_layout_passes(flowers):
  tf_flowers.dataset(flowers).check_records("train")


def test_tfds_shard_cut_at_a_record_boundary_names_both_counts(flowers):
  shard = _flowers_shard(flowers, 1)
  cut_at_record(shard, 1)
  info = os.path.join(flowers, tfds_layout.INFO_FILENAME)
  with pytest.raises(ValueError, match="^%s holds 1 records, %s says 3 \\(file truncated or "
                     "replaced\\?\\)$" % (shard, info)):
    tf_flowers.dataset(flowers).check_records("train")


def test_tfds_shard_cut_inside_a_record_is_named(flowers):
  shard = _flowers_shard(flowers, 0)
  cut_mid_record(shard)
  with pytest.raises(ValueError, match="corrupt tfrecord file %s" % shard):
    tf_flowers.dataset(flowers).check_records("train")


def test_tfds_shard_missing_or_not_listed(flowers):
  info = os.path.join(flowers, tfds_layout.INFO_FILENAME)
  shard = _flowers_shard(flowers, 1)
  os.rename(shard, flowers + ".moved")
  with pytest.raises(ValueError, match="^%s is missing: %s lists it with 3 records$"
                     % (shard, info)):
    tf_flowers.dataset(flowers).check_records("train")
  os.rename(flowers + ".moved", shard)
  stray = tfds_layout.shard_path(flowers, tf_flowers.NAME, "train", 2, 3)
  with open(stray, "wb") as f:
    f.write(open(shard, "rb").read())
  with pytest.raises(ValueError, match="^%s is not among the 2 shards %s lists" % (stray, info)):
    tf_flowers.dataset(flowers).check_records("train")


def prepared(model_name, *argv):
  """(model, Config) of a run of `model_name` with `argv`, every check passed."""
  runner = run_loop.prepare(model_name, ["--model_dir=/tmp/unused"] + list(argv))
  return runner.model, runner.config


def test_vit_check_inputs_checks_the_splits_its_mode_reads(flowers):
  model, config = prepared("vit", "--data_dir=" + flowers, "--mode=train", "--image_size=32")
  cut_at_record(_flowers_shard(flowers, 0), 2)
  with pytest.raises(ValueError, match="tf_flowers-train.tfrecord-00000-of-00002 holds 2 "
                     "records"):
    model.check_inputs(config)


def test_a_corrupt_record_met_while_running_names_the_file(flowers, cpu_backend, tmp_path):
  """What run_loop.run_reading does with a DataLossError, on this stack."""
  del cpu_backend
  source = image_sources.TfdsSource(tf_flowers.dataset(flowers))
  input_fn = image_sources.build_input_fn(source, "train", False,
                                          lambda encoded: tf.zeros([4, 4, 3]))
  shard = _flowers_shard(flowers, 1)
  assert shard in input_fn.files
  cut_mid_record(shard)

  def read_everything():
    with tf.Graph().as_default():
      element = tf.data.make_one_shot_iterator(input_fn({"batch_size": 2})).get_next()
      with tf.Session() as session:
        while True:
          session.run(element)

  with pytest.raises(run_loop.DataError, match="corrupt tfrecord file %s" % shard):
    run_loop.run_reading(input_fn, read_everything, types.SimpleNamespace(
        model_dir=str(tmp_path), data_dir=flowers))


def _cifar10_pickles(folder, per_batch=3):
  folder.mkdir()
  rng = np.random.RandomState(0)
  for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
    with open(str(folder / name), "wb") as f:
      pickle.dump({b"data": rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8),
                   b"labels": [i % 10 for i in range(per_batch)]}, f, protocol=2)
  with open(str(folder / "batches.meta"), "wb") as f:
    pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f, protocol=2)
  return str(folder)


def test_converted_cifar_is_checked_against_its_shard_lengths(tmp_path):
  build_cifar_tfrecords.convert(_cifar10_pickles(tmp_path / "cifar-10-batches-py"),
                                str(tmp_path / "tfds"), num_shards=2, check_counts=False)
  data = cifar.dataset(str(tmp_path / "tfds"), "cifar10")
  data.check_records("train")
  data.check_records("test")
  shard = tfds_layout.shard_path(data.path, "cifar10", "train", 1, 2)
  cut_at_record(shard, 5)
  with pytest.raises(ValueError, match="^%s holds 5 records, .*dataset_info.json says 8 "
                     % shard):
    data.check_records("train")


# ---- PACS (MASF) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs_release(tmp_path_factory):
  """A tiny PACS release: 2 train, 1 crossval and 3 test images per class and domain."""
  from tests import test_masf  # pylint: disable=g-import-not-at-top
  return test_masf._make_mini_pacs(str(tmp_path_factory.mktemp("pacs")))  # pylint: disable=protected-access


@pytest.fixture
def pacs_records(pacs_release, tmp_path):
  out = str(tmp_path / "pacs_records")
  build_pacs_tfrecords.build_tfrecords(pacs_release, out)
  return out


def test_pacs_summary_records_each_files_count_and_size(pacs_records):
  summary = _load_json(os.path.join(pacs_records, pacs.SUMMARY_FILE))
  path = pacs.tfrecord_path(pacs_records, "photo", "train")
  assert summary["counts"]["photo_train"] == len(_records(path)) == 14
  assert summary["bytes"]["photo_train"] == os.path.getsize(path)
  assert pacs.PacsSource(data_dir=pacs_records).count("photo", "train") == 14


def test_pacs_tfrecord_cut_at_a_record_boundary_fails_on_its_size(pacs_records):
  path = pacs.tfrecord_path(pacs_records, "photo", "train")
  cut_at_record(path, 4)
  with pytest.raises(ValueError, match="^%s holds %d bytes, %s says .* bytes and 14 records "
                     % (path, os.path.getsize(path),
                        os.path.join(pacs_records, pacs.SUMMARY_FILE))):
    pacs.PacsSource(data_dir=pacs_records).count("photo", "train")


def test_pacs_summary_without_sizes_is_checked_by_counting(pacs_records):
  """Summaries written before they recorded sizes: the record count is the test."""
  summary_path = os.path.join(pacs_records, pacs.SUMMARY_FILE)
  summary = _load_json(summary_path)
  summary.pop("bytes", None)
  _save_json(summary_path, summary)
  path = pacs.tfrecord_path(pacs_records, "photo", "train")
  cut_at_record(path, 4)
  source = pacs.PacsSource(data_dir=pacs_records)
  with pytest.raises(ValueError) as error:
    source.count("photo", "train")
  assert str(error.value) == ("%s holds 4 records, %s says 14 (file truncated or replaced?)"
                              % (path, summary_path))
  cut_mid_record(path)
  with pytest.raises(ValueError, match="corrupt tfrecord file %s: reading record 3" % path):
    source.count("photo", "train")
  assert source.count("cartoon", "train") == 14


def test_pacs_tfrecord_missing_or_not_in_the_summary(pacs_records):
  summary_path = os.path.join(pacs_records, pacs.SUMMARY_FILE)
  path = pacs.tfrecord_path(pacs_records, "sketch", "test")
  os.remove(path)
  with pytest.raises(ValueError, match="^%s is missing: %s lists it with 21 records$"
                     % (path, summary_path)):
    pacs.PacsSource(data_dir=pacs_records).count("sketch", "test")
  summary = _load_json(summary_path)
  del summary["counts"]["sketch_test"]
  _save_json(summary_path, summary)
  with pytest.raises(pacs.PacsDataError, match="^%s has no sketch_test" % summary_path):
    pacs.PacsSource(data_dir=pacs_records).count("sketch", "test")


def test_masf_entry_point_names_the_cut_tfrecord_before_training(pacs_records, tmp_path):
  path = pacs.tfrecord_path(pacs_records, "photo", "train")
  cut_at_record(path, 4)
  model_dir = str(tmp_path / "model")
  code, stderr = run_script([
      "masf.py", "--data_dir=" + pacs_records, "--model_dir=" + model_dir,
      "--target_domain=cartoon", "--meta_batch_size=3", "--image_size=64", "--fc_units=32"])
  assert_one_line_error(code, stderr, path, pacs.SUMMARY_FILE, "14 records")
  assert_no_graph_built(model_dir)


# ---- Fashion-MNIST (ProtoAttend) --------------------------------------------------------


def _write_idx(path, magic, dims, payload):
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">i", magic) + struct.pack(">" + "i" * len(dims), *dims) + payload)


def build_fashion_mnist(idx_dir, output_dir, sizes=(("train", 12), ("test", 5))):
  os.makedirs(idx_dir)
  rng = np.random.RandomState(0)
  for split, count in sizes:
    images, labels = fashion_mnist.IDX_FILES[split]
    _write_idx(os.path.join(idx_dir, images), fashion_mnist.IMAGES_MAGIC, (count, 28, 28),
               rng.randint(0, 256, count * 784).astype(np.uint8).tobytes())
    _write_idx(os.path.join(idx_dir, labels), fashion_mnist.LABELS_MAGIC, (count,),
               (np.arange(count) % 10).astype(np.uint8).tobytes())
  return fashion_mnist.build_tfrecords(idx_dir, output_dir, include_ood=False,
                                       expected_counts=None)


@pytest.fixture
def fashion_records(tmp_path):
  return build_fashion_mnist(str(tmp_path / "idx"), str(tmp_path / "records"))


def _fashion_file(records, split):
  return os.path.join(records, fashion_mnist.TFRECORD_FILES[split])


def test_intact_fashion_mnist_records_pass(fashion_records):
  fashion_mnist.check_record_counts(fashion_records, include_ood=False)


def test_fashion_mnist_cut_at_a_record_boundary_names_both_counts(fashion_records):
  path = _fashion_file(fashion_records, "test")
  cut_at_record(path, 3)
  with pytest.raises(ValueError) as error:
    fashion_mnist.check_record_counts(fashion_records, include_ood=False)
  assert str(error.value) == ("%s holds 3 records, %s says 5 (file truncated or replaced?)"
                              % (path, os.path.join(fashion_records, fashion_mnist.MANIFEST)))


def test_fashion_mnist_cut_inside_a_record_is_named(fashion_records):
  path = _fashion_file(fashion_records, "train")
  cut_mid_record(path)
  with pytest.raises(ValueError, match="corrupt tfrecord file %s" % path):
    fashion_mnist.check_record_counts(fashion_records, include_ood=False)


def test_fashion_mnist_without_a_manifest_count_uses_the_release_size(fashion_records):
  manifest = os.path.join(fashion_records, fashion_mnist.MANIFEST)
  content = _load_json(manifest)
  del content["counts"]["train"]
  _save_json(manifest, content)
  with pytest.raises(ValueError, match="train.tfrecord holds 12 records, the Fashion-MNIST "
                     "release says 60000"):
    fashion_mnist.check_record_counts(fashion_records, include_ood=False)


def test_protoattend_check_inputs_checks_the_record_counts(fashion_records):
  model, config = prepared("protoattend", "--data_dir=" + fashion_records, "--ood_eval=false",
                           "--eval_cand_size=8")
  path = _fashion_file(fashion_records, "train")
  cut_at_record(path, 10)
  with pytest.raises(ValueError, match="%s holds 10 records, .* says 12" % path):
    model.check_inputs(config)


@pytest.mark.parametrize("mode,splits", [("train", ["train"]),
                                         ("eval", ["train", "test"])])  # eval: candidates too
def test_protoattend_input_fn_names_the_files_it_reads(fashion_records, mode, splits):
  model, config = prepared("protoattend", "--data_dir=" + fashion_records, "--ood_eval=false",
                           "--eval_cand_size=8")
  input_fn = model.input_fn(config, mode)
  assert input_fn.files == [_fashion_file(fashion_records, s) for s in splits]


def test_masf_input_fns_name_the_tfrecords_they_read(pacs_records):
  model, config = prepared("masf", "--data_dir=" + pacs_records, "--target_domain=sketch",
                           "--meta_batch_size=6")
  sources = ["art_painting", "cartoon", "photo"]
  assert model.input_fn(config, "train").files == [
      pacs.tfrecord_path(pacs_records, d, "train") for d in sources]
  assert model.input_fn(config, "eval").files == [
      pacs.tfrecord_path(pacs_records, d, "crossval") for d in sources] + [
          pacs.tfrecord_path(pacs_records, "sketch", "test")]
  assert model.input_fn(config, "infer").files == [
      pacs.tfrecord_path(pacs_records, "sketch", "test")]
