"""Predictions: one per input example, each naming its input (`id`) and its class
(`class_name`); the tf_flowers builder CLI.

End to end, each model trains one step then predicts through its entry script in new
processes (BiT and ProtoAttend also export a SavedModel, whose signature needs no `id`), on
small data: scikit-learn's digits as ImageNet-format
shards (AmoebaNet, ViT), a few real flower photos in the TFDS tf_flowers layout (BiT), a
synthetic mini PACS (MASF) and a synthetic Fashion-MNIST (ProtoAttend). The input
pipelines' predict paths are also checked directly.
"""
import glob
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow.compat.v1 as tf

from estimators import predictions as predictions_lib
from input_fns import fashion_mnist
from input_fns import image_sources
from input_fns import imagenet
from input_fns import pacs
from input_fns import tf_flowers
from input_fns import tfds_layout
from tests import conftest
from tests.test_masf import _make_mini_pacs
from tests.test_protoattend import _write_split
from tools import build_pacs_tfrecords
from tools import build_tfds_flowers

FLOWERS = "flowers_kaggle_128"
PHOTOS_PER_CLASS = 8
TINY_AMOEBA = ["--num_cells=3", "--reduction_size=8", "--stem_reduction_size=8",
               "--image_size=32", "--num_label_classes=11", "--num_train_images=1438",
               "--num_eval_images=359", "--train_batch_size=16", "--use_aux_head=false",
               "--optimizer=momentum", "--lr=0.1"]
DIGITS_VALIDATION = 359
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 200, 40


def run(cmd):
  """(exit status, stdout, stderr) of `python cmd` in the repository."""
  proc = subprocess.run([sys.executable] + cmd, cwd=conftest.REPO, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=600)
  return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8", "replace")


def train_then_predict(args, tmp_path, batch_size, export=False):
  """Trains one step (export: then exports to tmp_path/export), predicts; returns the
  JSON lines."""
  model_dir = str(tmp_path / "model")
  export_args = ["--export_dir=" + str(tmp_path / "export")] if export else []
  code, _, log = run(args + ["--mode=train", "--train_steps=1", "--model_dir=" + model_dir]
                     + export_args)
  assert code == 0, log[-3000:]
  if export:
    assert glob.glob(str(tmp_path / "export" / "*" / "saved_model.pb")), "no SavedModel"
  path = str(tmp_path / "predictions.jsonl")
  code, out, log = run(args + ["--mode=predict", "--model_dir=" + model_dir,
                               "--eval_batch_size=%d" % batch_size,
                               "--predictions_file=" + path])
  assert code == 0, log[-3000:]
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  final = out.strip().splitlines()[-1]
  assert json.loads(final[len("Final metrics: "):])["predictions"] == len(rows)
  return rows


def record_names(files, key):
  names = []
  for path in files:
    for record in tf.io.tf_record_iterator(path):
      feature = tf.train.Example.FromString(record).features.feature[key]
      names.append(feature.bytes_list.value[0].decode("utf-8"))
  return names


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """The first PHOTOS_PER_CLASS real photos of each class, copied."""
  source = os.path.join(conftest.data_root(), FLOWERS)
  if not os.path.isdir(source):
    pytest.skip("real flower photos not found at %s" % source)
  out = tmp_path_factory.mktemp("photos")
  for folder in sorted(os.listdir(source)):
    (out / folder).mkdir()
    for name in sorted(os.listdir(os.path.join(source, folder)))[:PHOTOS_PER_CLASS]:
      shutil.copy(os.path.join(source, folder, name), str(out / folder / name))
  return str(out)


# ------------------------------------------------------------------------------------------
# Every model end to end.

def test_amoeba_net_predicts_every_validation_image_by_file_name(digits_dir, tmp_path):
  rows = train_then_predict(["amoeba_net.py", "--data_dir=" + digits_dir] + TINY_AMOEBA,
                            tmp_path, batch_size=40)
  # 359 = 8 batches of 40 + 39: the last, partial batch is predicted too.
  names = record_names(imagenet.list_shards(digits_dir, False), "image/filename")
  assert len(rows) == len(names) == DIGITS_VALIDATION
  assert sorted(row["id"] for row in rows) == sorted(names)
  # labels.txt names labels 1..10 ("0".."9"); class 0 is ImageNet's unnamed background.
  assert all(row["class_name"] == ("" if row["classes"] == 0 else str(row["classes"] - 1))
             for row in rows)


def test_vit_predicts_an_image_folder_by_file_name(digits_dir, tmp_path):
  rows = train_then_predict(
      ["vit.py", "--dataset=image_folder", "--data_dir=" + digits_dir, "--vit_model=Ti/16",
       "--image_size=32", "--warmup_steps=0", "--train_batch_size=4"], tmp_path,
      batch_size=64)
  names = record_names(imagenet.list_shards(digits_dir, False), "image/filename")
  assert sorted(row["id"] for row in rows) == sorted(names)
  assert all(row["class_name"] == str(row["classes"]) for row in rows)


def test_bit_predicts_tf_flowers_by_file_name_and_serves_without_one(photos, tmp_path):
  data_dir = str(tmp_path / "tfds")
  assert build_tfds_flowers.main(["--photos=" + photos, "--output=" + data_dir]) == 0
  rows = train_then_predict(
      ["bit.py", "--dataset=tf_flowers", "--data_dir=" + data_dir, "--hyperrule=false",
       "--image_size=32", "--resize_size=36", "--warmup_steps=0", "--train_batch_size=4"],
      tmp_path, batch_size=4, export=True)
  names = record_names(tf_flowers.dataset(data_dir).shard_files("train"), "file_name")
  assert len(names) == 5 * PHOTOS_PER_CLASS
  expected = names[int(round(0.85 * len(names))):]  # train[85%:], in order
  assert [row["id"] for row in rows] == expected
  assert all(row["class_name"] == tf_flowers.CLASS_NAMES[row["classes"]] for row in rows)

  # The SavedModel takes raw pixels without a name; it still names the class.
  export = sorted(glob.glob(str(tmp_path / "export" / "*")))[-1]
  with tf.Graph().as_default(), tf.Session() as session:
    meta_graph = tf.saved_model.loader.load(session, ["serve"], export)
    signature = meta_graph.signature_def["serving_default"]
    assert set(signature.inputs) == {"image"}
    assert predictions_lib.ID_KEY not in signature.outputs
    outputs = session.run(
        {key: tensor.name for key, tensor in signature.outputs.items()},
        {signature.inputs["image"].name: np.full((2, 32, 32, 3), 128.0, np.float32)})
  assert [name.decode() for name in outputs["class_name"]] == [
      tf_flowers.CLASS_NAMES[c] for c in outputs["classes"]]


def test_masf_predicts_the_target_test_list_by_relative_path(tmp_path):
  root = _make_mini_pacs(str(tmp_path / "pacs"))
  rows = train_then_predict(
      ["masf.py", "--dataroot=" + root, "--image_size=64", "--fc_units=32",
       "--meta_batch_size=6", "--cache_decoded_images=false"], tmp_path, batch_size=8)
  entries = pacs.read_split_list(root, "cartoon", "test")
  assert [row["id"] for row in rows] == [entry.relpath for entry in entries]
  assert all(row["class_name"] == pacs.CLASS_NAMES[row["classes"]] for row in rows)


def synthetic_fashion_mnist_records(tmp_path, include_ood):
  """Synthetic IDX files (SYNTHETIC_TRAIN/TEST images) built into ProtoAttend's records."""
  idx_dir = str(tmp_path / "idx")
  os.mkdir(idx_dir)
  _write_split(idx_dir, "train", SYNTHETIC_TRAIN, SYNTHETIC_TRAIN)
  _write_split(idx_dir, "test", SYNTHETIC_TEST, SYNTHETIC_TEST)
  return fashion_mnist.build_tfrecords(idx_dir, str(tmp_path / "records"),
                                       include_ood=include_ood, expected_counts=None)


def test_protoattend_predicts_each_test_image_once(tmp_path):
  records = synthetic_fashion_mnist_records(tmp_path, include_ood=False)
  rows = train_then_predict(
      ["protoattend.py", "--data_dir=" + records, "--resnet_depth=8", "--final_units=32",
       "--val_dim=16", "--example_cand_size=64", "--eval_cand_size=64",
       "--train_batch_size=32", "--ood_eval=false"], tmp_path, batch_size=16, export=True)
  # 40 = 16 + 16 + 8: no padding rows.
  assert [row["id"] for row in rows] == list(range(SYNTHETIC_TEST))
  assert all(row["class_name"] == fashion_mnist.CLASS_NAMES[row["class"]] for row in rows)
  assert all("weight" not in row for row in rows)


# ------------------------------------------------------------------------------------------
# Predict input pipelines.

def read_all(input_fn, batch_size):
  with tf.Graph().as_default():
    element = tf.data.make_one_shot_iterator(input_fn({"batch_size": batch_size})).get_next()
    batches = []
    with tf.Session() as session:
      while True:
        try:
          batches.append(session.run(element))
        except tf.errors.OutOfRangeError:
          return batches


def _jpeg(seed):
  pixels = np.random.RandomState(seed).randint(0, 256, (12, 12, 3)).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG")
  return buffer.getvalue()


def test_tfds_predict_ids_are_the_file_name_else_the_id_else_the_tfds_id(tmp_path, cpu_backend):
  del cpu_backend
  extras = [{"file_name": b"daisy/a.jpg"}, {"id": b"train_00001"}] + [None] * 8
  examples = [tfds_layout.image_example(b"encoded", 0, extra) for extra in extras]
  tfds_layout.write_dataset(str(tmp_path), tf_flowers.NAME, tf_flowers.VERSION,
                            {"train": examples}, tf_flowers.CLASS_NAMES, num_shards=2)
  source = image_sources.TfdsSource(tf_flowers.dataset(str(tmp_path)))
  # No decoding needed to check the names: the "image" is the byte count.
  for split, expected in (
      ("train[:30%]", ["daisy/a.jpg", "train_00001",
                       "tf_flowers-train.tfrecord-00000-of-00002__2"]),
      ("train[60%:]", ["tf_flowers-train.tfrecord-00001-of-00002__%d" % i
                       for i in range(1, 5)])):
    input_fn = image_sources.build_input_fn(source, split, False, tf.strings.length,
                                            predict=True)
    batches = read_all(input_fn, 3)
    assert all(set(batch) == {"image", "id"} for batch in batches)
    assert [i.decode() for batch in batches for i in batch["id"]] == expected


def test_imagenet_predict_keeps_the_last_batch_reads_no_label_and_names_records(tmp_path):
  path = str(tmp_path / "validation-00000-of-00001")
  with tf.io.TFRecordWriter(path) as writer:
    for index, name in enumerate([b"a.jpg", b"b.jpg", b"", b"d.jpg", b"e.jpg"]):
      feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[_jpeg(index)])),
                 "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                     value=[name]))}  # no image/class/label: an unlabelled record
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())
  batches = read_all(imagenet.build_input_fn(str(tmp_path), False, 8, predict=True), 2)
  assert [len(batch["id"]) for batch in batches] == [2, 2, 1]
  assert batches[0]["image"].shape == (2, 8, 8, 3)
  assert [i.decode() for batch in batches for i in batch["id"]] == [
      "a.jpg", "b.jpg", "validation-00000-of-00001__2", "d.jpg", "e.jpg"]


def test_imagenet_class_name_table_from_labels_txt(tmp_path):
  (tmp_path / "labels.txt").write_text(u"cat\ndog\n")
  assert imagenet.class_name_table(str(tmp_path), 4) == ["", "cat", "dog", ""]
  assert imagenet.class_name_table(str(tmp_path / "none"), 4) is None


def test_fashion_mnist_predict_input_has_one_row_per_example(tmp_path):
  records = synthetic_fashion_mnist_records(tmp_path, include_ood=True)
  batches = read_all(fashion_mnist.make_input_fn(
      records, tf.estimator.ModeKeys.PREDICT, 32, 64, 7), 500)
  total = SYNTHETIC_TEST + fashion_mnist.OOD_SIZE
  assert [len(batch["id"]) for batch in batches] == [500, 500, 500, total - 1500]
  assert all("weight" not in batch for batch in batches)
  is_ood = np.concatenate([batch["is_ood"] for batch in batches])
  ids = np.concatenate([batch["id"] for batch in batches])
  assert sorted(ids[is_ood == 0]) == list(range(SYNTHETIC_TEST))
  assert sorted(ids[is_ood == 1]) == list(range(fashion_mnist.OOD_SIZE))


@pytest.mark.parametrize("from_records", [False, True])
def test_pacs_predict_dataset_names_images_by_relative_path(tmp_path, from_records):
  root = _make_mini_pacs(str(tmp_path / "pacs"))
  data_dir = None
  if from_records:
    data_dir = str(tmp_path / "records")
    build_pacs_tfrecords.build_tfrecords(root, data_dir, domains=("cartoon",),
                                         splits=("test",))
  source = pacs.PacsSource(data_dir=data_dir, dataroot=root)
  batches = read_all(lambda params: pacs.predict_dataset(
      source, [("cartoon", "test")], 64, params["batch_size"]), 8)
  assert [len(batch["id"]) for batch in batches] == [8, 8, 5]
  assert all(set(batch) == {"images", "id"} for batch in batches)
  assert [i.decode() for batch in batches for i in batch["id"]] == [
      entry.relpath for entry in pacs.read_split_list(root, "cartoon", "test")]


# ------------------------------------------------------------------------------------------
# tools/build_tfds_flowers.py

def test_build_tfds_flowers_cli_writes_the_layout_and_prints_it(photos, tmp_path):
  output = str(tmp_path / "tfds")
  code, out, log = run(["-m", "tools.build_tfds_flowers", "--photos=" + photos,
                        "--output=" + output, "--max_per_class=5"])
  assert code == 0, log
  folder = os.path.join(output, "tf_flowers", "3.0.1")
  lines = out.strip().splitlines()
  assert lines[0] == ("wrote %s: 25 examples of 5 classes (dandelion, daisy, tulips, "
                      "sunflowers, roses)" % folder)
  assert lines[1:] == ["  tf_flowers-train.tfrecord-00000-of-00002: 12 examples",
                       "  tf_flowers-train.tfrecord-00001-of-00002: 13 examples",
                       "  dataset_info.json", "  features.json", "  label.labels.txt"]
  data = tf_flowers.dataset(output)
  assert data.num_examples("train") == 25
  names = record_names(data.shard_files("train"), "file_name")
  assert sorted(names) == sorted(
      "%s/%s" % (folder_name, name) for folder_name in os.listdir(photos)
      for name in sorted(os.listdir(os.path.join(photos, folder_name)))[:5])


def test_build_tfds_flowers_errors_are_one_line_naming_the_flag(photos, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  built = str(tmp_path / "built")
  assert build_tfds_flowers.main(["--photos=" + photos, "--output=" + built,
                                  "--max_per_class=1"]) == 0
  capsys.readouterr()
  for argv, message in (
      (["--photos=%s" % (tmp_path / "missing")],
       "error: --photos=%s is not a folder" % (tmp_path / "missing")),
      (["--photos=%s" % empty],
       "error: --photos: image folder %s has no class sub-folders with .jpg files" % empty),
      (["--photos=" + photos, "--max_per_class=0"], "error: --max_per_class=0 must be >= 1"),
  ):
    assert build_tfds_flowers.main(argv + ["--output=%s" % (tmp_path / "out")]) == 1
    assert capsys.readouterr().err == message + "\n"
  assert build_tfds_flowers.main(["--photos=" + photos, "--output=" + built]) == 1
  assert capsys.readouterr().err == (
      "error: --output=%s already holds %s: remove it or choose another folder\n"
      % (built, os.path.join(built, "tf_flowers", "3.0.1")))
  assert not (tmp_path / "out").exists()
