"""ImageNet-format input: Inception preprocessing, the tfrecord input_fn, the builders."""
import glob
import io
import os
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow.compat.v1 as tf

from input_fns import imagenet
from input_fns import throughput
from preprocessing import inception
from tools import build_image_tfrecords as builder
from tools import make_digits_dataset

def _image_array(height=40, width=56, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


def _encode(array, fmt="JPEG", mode="RGB"):
  buffer = io.BytesIO()
  Image.fromarray(array, "RGB").convert(mode).save(buffer, fmt)
  return buffer.getvalue()


def _run(fetches, feed_dict=None):
  with tf.Session() as session:
    return session.run(fetches, feed_dict)


def _preprocess(data, is_training, image_size=24, **kwargs):
  with tf.Graph().as_default():
    image = inception.preprocess_image(tf.constant(data), is_training, image_size, **kwargs)
    assert image.shape.as_list() == [image_size, image_size, 3]
    return _run(image)


def _write_records(path, examples):
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      writer.write(example.SerializeToString())


def _example(label=1, encoded=None, filename="img.jpg"):
  encoded = _encode(_image_array()) if encoded is None else encoded
  return builder.make_example(encoded, 40, 56, label, "class", filename)


def _batches(input_fn, batch_size, max_batches=100):
  """All (images, labels) batches of input_fn (at most max_batches), in graph mode."""
  with tf.Graph().as_default():
    iterator = tf.data.make_initializable_iterator(input_fn({"batch_size": batch_size}))
    element = iterator.get_next()
    batches = []
    with tf.Session() as session:
      session.run(iterator.initializer)
      try:
        while len(batches) < max_batches:
          batches.append(session.run(element))
      except tf.errors.OutOfRangeError:
        pass
    return batches


# ---- preprocessing ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("is_training", [True, False])
def test_preprocess_shape_dtype_range(fmt, is_training):
  image = _preprocess(_encode(_image_array(), fmt), is_training)
  assert image.dtype == np.float32 and image.shape == (24, 24, 3)
  assert image.min() >= -1.0 and image.max() <= 1.0
  assert image.std() > 0.1  # a real image, not a constant


@pytest.mark.parametrize("fast_mode", [True, False])
def test_classic_color_distortion_range(fast_mode):
  image = _preprocess(_encode(_image_array()), True, use_fast_color_distort=False,
                      fast_mode=fast_mode)
  assert image.min() >= -1.0 and image.max() <= 1.0


def test_eval_of_constant_image_is_exact():
  value = 200
  data = _encode(np.full((50, 30, 3), value, np.uint8), "PNG")
  image = _preprocess(data, False)
  np.testing.assert_allclose(image, value / 255.0 * 2 - 1, atol=1e-5)


def test_eval_central_crop_keeps_center():
  array = np.zeros((64, 64, 3), np.uint8)
  array[:4] = 255  # a white band at the top edge, outside the central 87.5%
  image = _preprocess(_encode(array, "PNG"), False, image_size=56)
  np.testing.assert_allclose(image, -1.0, atol=1e-5)


def test_fast_color_distort_moves_grey_along_ycbcr():
  with tf.Graph().as_default():
    grey = tf.fill([4, 4, 3], 0.5)
    no_chroma = inception.distort_color_fast(grey, 0.0, 0.0)
    with_chroma = inception.distort_color_fast(grey, 0.1, 0.1)
    no_chroma, with_chroma = _run([no_chroma, with_chroma])
  # Brightness only: all channels shift by the same delta of at most 32/255.
  np.testing.assert_allclose(no_chroma[..., 0], no_chroma[..., 1], atol=1e-6)
  np.testing.assert_allclose(no_chroma[..., 0], no_chroma[..., 2], atol=1e-6)
  assert abs(no_chroma[0, 0, 0] - 0.5) <= 32 / 255 + 1e-6
  # Cb/Cr offsets keep the luma (0.299 R + 0.587 G + 0.114 B) up to the brightness delta.
  delta = with_chroma - 0.5
  luma = 0.299 * delta[..., 0] + 0.587 * delta[..., 1] + 0.114 * delta[..., 2]
  assert np.all(np.abs(luma) <= 32 / 255 + 1e-3)
  assert with_chroma.min() >= 0.0 and with_chroma.max() <= 1.0


def test_train_crops_differ_between_runs():
  with tf.Graph().as_default():
    image = inception.preprocess_image(tf.constant(_encode(_image_array(64, 64))), True, 16)
    with tf.Session() as session:
      first, second = session.run(image), session.run(image)
  assert not np.allclose(first, second)


def test_bad_arguments_raise():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="image_size"):
      inception.preprocess_image(tf.constant(b""), True, 0)
    with pytest.raises(ValueError, match="cb_distortion_range"):
      inception.preprocess_image(tf.constant(b""), True, 8, cb_distortion_range=-0.1)


@pytest.mark.parametrize("bad,message", [
    (lambda data: data[:len(data) // 2], "img.jpg is truncated"),
    (lambda data: b"GIF89a" + data, "img.jpg is neither JPEG nor PNG"),
])
def test_check_encoded_image_names_the_image(bad, message):
  data = bad(_encode(_image_array()))
  with tf.Graph().as_default():
    image = inception.preprocess_image(tf.constant(data), True, 8,
                                       image_name=tf.constant("img.jpg"))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      _run(image)


def test_truncated_png_is_reported():
  data = _encode(_image_array(), "PNG")[:-20]
  with tf.Graph().as_default():
    image = inception.preprocess_image(tf.constant(data), False, 8,
                                       image_name=tf.constant("a.png"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="a.png is truncated"):
      _run(image)


def test_python_and_graph_end_marker_checks_agree():
  data = _encode(_image_array())
  assert inception.jpeg_has_end_marker(data)
  assert not inception.jpeg_has_end_marker(data[:-2])


# ---- input_fn ----------------------------------------------------------------------------


def _tiny_dataset(root, nested, num_shards=2, per_shard=3):
  """Both splits; record k (over all shards) has label 1 + k % 4."""
  for split in ("train", "validation"):
    folder = os.path.join(root, split) if nested else root
    os.makedirs(folder, exist_ok=True)
    for shard in range(num_shards):
      examples = [_example(label=1 + (shard * per_shard + i) % 4,
                           filename="%s_%d_%d.jpg" % (split, shard, i))
                  for i in range(per_shard)]
      _write_records(os.path.join(folder, builder.shard_name(split, shard, num_shards)),
                     examples)


@pytest.mark.parametrize("nested", [False, True])
def test_both_layouts_are_found(tmp_path, nested):
  _tiny_dataset(str(tmp_path), nested)
  for is_training in (True, False):
    files = imagenet.list_shards(str(tmp_path), is_training)
    assert len(files) == 2
    assert all(os.path.basename(f).startswith("train" if is_training else "validation")
               for f in files)
  input_fn = imagenet.build_input_fn(str(tmp_path), False, 16, num_label_classes=5)
  batches = _batches(input_fn, 2)
  assert len(batches) == 3  # 6 records, drop_remainder
  images, labels = batches[0]
  assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
  assert labels.dtype == np.int32
  assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == [1, 1, 2, 2, 3, 4]


def test_training_input_repeats_and_has_static_batch(tmp_path):
  _tiny_dataset(str(tmp_path), False)
  input_fn = imagenet.build_input_fn(str(tmp_path), True, 16, num_label_classes=5)
  with tf.Graph().as_default():
    dataset = input_fn({"batch_size": 4})
    assert tf.data.get_output_shapes(dataset)[0].as_list() == [4, 16, 16, 3]
  batches = _batches(input_fn, 4, max_batches=5)
  assert len(batches) == 5  # 20 images from 6 records: the training input repeats
  for images, labels in batches:
    assert images.min() >= -1 and images.max() <= 1
    assert set(labels.tolist()) <= {1, 2, 3, 4}


def test_closing_sessions_while_reading_does_not_crash(tmp_path):
  """Regression: TF 1.15's parallel Dataset.interleave segfaulted on Session.close()."""
  _tiny_dataset(str(tmp_path), False)
  input_fn = imagenet.build_input_fn(str(tmp_path), True, 16, num_label_classes=5)
  for _ in range(5):  # it crashed within the first two
    assert len(_batches(input_fn, 4, max_batches=2)) == 2


def test_drop_remainder_of_evaluation_and_prediction(tmp_path):
  """None: evaluation skips the last partial batch, as upstream, and prediction keeps it;
  True (static shapes, the NPU): both skip it; False: both keep it."""
  _tiny_dataset(str(tmp_path), False)  # 6 validation records

  def batch_sizes(**kwargs):
    input_fn = imagenet.build_input_fn(str(tmp_path), False, 8, num_label_classes=5,
                                       **kwargs)
    batches = _batches(input_fn, 4)
    return [len(b["id"] if isinstance(b, dict) else b[1]) for b in batches]

  assert batch_sizes() == [4] and batch_sizes(predict=True) == [4, 2]
  assert batch_sizes(drop_remainder=True, predict=True) == [4]
  assert batch_sizes(drop_remainder=False) == [4, 2]


def test_both_layouts_at_once_is_an_error(tmp_path):
  _tiny_dataset(str(tmp_path), False)
  _tiny_dataset(str(tmp_path), True)
  with pytest.raises(ValueError, match="both layouts"):
    imagenet.list_shards(str(tmp_path), True)


def test_no_files_names_dir_and_globs(tmp_path):
  with pytest.raises(ValueError) as error:
    imagenet.build_input_fn(str(tmp_path), True, 16)
  message = str(error.value)
  assert str(tmp_path) in message
  assert os.path.join(str(tmp_path), "train-*") in message
  assert os.path.join(str(tmp_path), "train", "train-*") in message
  with pytest.raises(ValueError, match="not a directory"):
    imagenet.build_input_fn(str(tmp_path / "missing"), False, 16)


def test_label_out_of_range_names_label_and_record(tmp_path):
  os.makedirs(str(tmp_path / "validation"))
  _write_records(str(tmp_path / "validation" / "validation-00000-of-00001"),
                 [_example(3, filename="ok.jpg"), _example(12, filename="bad_label.jpg")])
  input_fn = imagenet.build_input_fn(str(tmp_path), False, 8, num_label_classes=11)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _batches(input_fn, 1)
  assert "image/class/label 12" in str(error.value)
  assert "bad_label.jpg" in str(error.value)
  assert "[0, 11)" in str(error.value)


def test_label_offset_makes_labels_zero_based(tmp_path):
  _write_records(str(tmp_path / "validation-00000-of-00001"), [_example(1), _example(4)])
  input_fn = imagenet.build_input_fn(str(tmp_path), False, 8, num_label_classes=4,
                                     label_offset=1)
  labels = np.concatenate([b[1] for b in _batches(input_fn, 1)])
  assert labels.tolist() == [0, 3]


def test_labels_file_larger_than_num_classes_fails_at_build(tmp_path):
  _tiny_dataset(str(tmp_path), False)
  (tmp_path / "labels.txt").write_text("".join("c%d\n" % i for i in range(11)))
  with pytest.raises(ValueError, match=r"labels.txt lists 11 classes.*at least 12, got 11"):
    imagenet.build_input_fn(str(tmp_path), True, 8, num_label_classes=11)
  imagenet.build_input_fn(str(tmp_path), True, 8, num_label_classes=12)


def test_corrupt_shard_is_named(tmp_path):
  _tiny_dataset(str(tmp_path), False)
  path = imagenet.list_shards(str(tmp_path), True)[1]
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))
  with pytest.raises(ValueError, match="corrupt tfrecord file %s" % path):
    imagenet.check_tfrecords(imagenet.list_shards(str(tmp_path), True))
  with pytest.raises(ValueError, match="corrupt tfrecord file %s" % path):
    imagenet.build_input_fn(str(tmp_path), True, 8, num_label_classes=5, check_records=True)
  # The pipeline itself only says "corrupted record"; measure_throughput names the file.
  input_fn = imagenet.build_input_fn(str(tmp_path), True, 8, num_label_classes=5)
  with pytest.raises(ValueError, match="corrupt tfrecord file %s" % path):
    throughput.measure_throughput(input_fn, 1, 10, warmup_batches=0)


def test_truncated_jpeg_in_record_names_filename(tmp_path):
  encoded = _encode(_image_array())
  _write_records(str(tmp_path / "train-00000-of-00001"),
                 [_example(1, encoded[:len(encoded) // 2], filename="n01/cut.JPEG")])
  input_fn = imagenet.build_input_fn(str(tmp_path), True, 8, num_label_classes=5)
  with pytest.raises(tf.errors.InvalidArgumentError, match="n01/cut.JPEG is truncated"):
    _batches(input_fn, 1, max_batches=1)


def test_rank_env_shards_the_training_records_and_rank_0_evaluates_them_all(tmp_path,
                                                                             monkeypatch):
  """NPU ranks (RANK_SIZE/RANK_ID) each train on their share; the evaluation is rank 0's
  alone and reads the whole split (it read only rank 0's share before)."""
  _tiny_dataset(str(tmp_path), False, num_shards=2, per_shard=3)
  monkeypatch.setenv("RANK_SIZE", "2")
  seen = []
  for rank in range(2):
    monkeypatch.setenv("RANK_ID", str(rank))
    input_fn = imagenet.build_input_fn(str(tmp_path), True, 8, num_label_classes=5,
                                       shuffle_buffer=1)  # one epoch = the first 3 records
    seen.append(sorted(np.concatenate([b[1] for b in _batches(input_fn, 1, 3)]).tolist()))
  assert sorted(seen[0] + seen[1]) == [1, 1, 2, 2, 3, 4] and seen[0] != seen[1]
  monkeypatch.setenv("RANK_ID", "0")
  evaluation = imagenet.build_input_fn(str(tmp_path), False, 8, num_label_classes=5)
  assert sorted(np.concatenate([b[1] for b in _batches(evaluation, 1)]).tolist()) == [
      1, 1, 2, 2, 3, 4]
  monkeypatch.setenv("RANK_ID", "2")
  with pytest.raises(ValueError, match="RANK_ID=2, RANK_SIZE=2"):
    _batches(imagenet.build_input_fn(str(tmp_path), True, 8, num_label_classes=5), 1, 1)


def test_synthetic_mode(caplog):
  input_fn = imagenet.build_input_fn(None, True, 32, num_label_classes=7, synthetic=True)
  assert input_fn.files == []
  images, labels = _batches(input_fn, 3, max_batches=2)[1]
  assert images.shape == (3, 32, 32, 3) and images.dtype == np.float32
  assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 7
  eval_fn = imagenet.build_input_fn(None, False, 8, synthetic=True, synthetic_eval_batches=3)
  assert len(_batches(eval_fn, 2)) == 3
  assert throughput.measure_throughput(input_fn, 4, 5) > 0


def test_measure_throughput(tmp_path):
  _tiny_dataset(str(tmp_path), False)
  input_fn = imagenet.build_input_fn(str(tmp_path), True, 16, num_label_classes=5)
  assert throughput.measure_throughput(input_fn, 2, 4) > 0
  with pytest.raises(ValueError, match="num_batches"):
    throughput.measure_throughput(input_fn, 2, 0)


# ---- the tfrecord builder ------------------------------------------------------------------


def _image_folder(root):
  """3 classes: JPEG with upper-case extension, RGBA PNG, CMYK and grey JPEGs, a corrupt
  file, a truncated JPEG and a text file."""
  for name in ("cat", "ant", "bee"):
    os.makedirs(os.path.join(root, name))
  array = _image_array(30, 20)
  open(os.path.join(root, "cat", "a.JPG"), "wb").write(_encode(array))
  open(os.path.join(root, "cat", "b.jpeg"), "wb").write(_encode(array, mode="CMYK"))
  open(os.path.join(root, "ant", "c.Png"), "wb").write(_encode(array, "PNG", "RGBA"))
  open(os.path.join(root, "ant", "d.jpg"), "wb").write(_encode(array, mode="L"))
  open(os.path.join(root, "bee", "e.png"), "wb").write(_encode(array, "PNG"))
  open(os.path.join(root, "bee", "broken.jpg"), "wb").write(b"not an image at all")
  full = _encode(_image_array(64, 64))
  open(os.path.join(root, "bee", "cut.jpg"), "wb").write(full[:len(full) // 2])
  open(os.path.join(root, "bee", "notes.txt"), "w").write("ignored")


def _read_examples(paths):
  examples = []
  for path in paths:
    for record in tf.io.tf_record_iterator(path):
      examples.append(tf.train.Example.FromString(record))
  return examples


def _feature(example, key):
  feature = example.features.feature[key]
  return (feature.int64_list.value or feature.bytes_list.value)[0]


def test_builder_round_trip(tmp_path):
  source, out = str(tmp_path / "images"), str(tmp_path / "records")
  _image_folder(source)
  summary = builder.build_image_tfrecords(source, out, validation_fraction=0.0,
                                          num_train_shards=2)
  assert summary["class_names"] == ["ant", "bee", "cat"]
  assert open(os.path.join(out, "labels.txt")).read() == "ant\nbee\ncat\n"
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*"))) == [
      "labels.txt", "tfrecord_manifest.json", "train-00000-of-00002", "train-00001-of-00002"]
  assert len(summary["skipped"]) == 2
  assert sorted(os.path.basename(path) for path, _ in summary["skipped"]) == [
      "broken.jpg", "cut.jpg"]
  assert summary["counts"] == {"train": 5}
  examples = _read_examples(summary["files"]["train"])
  by_file = {_feature(e, "image/filename").decode(): e for e in examples}
  assert sorted(by_file) == ["ant/c.Png", "ant/d.jpg", "bee/e.png", "cat/a.JPG",
                             "cat/b.jpeg"]
  expected_labels = {"ant": 1, "bee": 2, "cat": 3}
  for filename, example in by_file.items():
    class_name = filename.split("/")[0]
    assert _feature(example, "image/class/label") == expected_labels[class_name]
    assert _feature(example, "image/class/text").decode() == class_name
    encoded = _feature(example, "image/encoded")
    image = Image.open(io.BytesIO(encoded))
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (20, 30)
  # The RGB JPEG is stored byte for byte.
  assert _feature(by_file["cat/a.JPG"], "image/encoded") == open(
      os.path.join(source, "cat", "a.JPG"), "rb").read()
  # And the input pipeline reads the result.
  input_fn = imagenet.build_input_fn(out, True, 8, num_label_classes=4)
  images, labels = _batches(input_fn, 5, max_batches=1)[0]
  assert images.shape == (5, 8, 8, 3) and set(labels.tolist()) <= {1, 2, 3}


def test_builder_validation_split_and_shards(tmp_path):
  source = str(tmp_path / "images")
  for name in ("x", "y"):
    os.makedirs(os.path.join(source, name))
    for i in range(10):
      open(os.path.join(source, name, "%d.jpg" % i), "wb").write(_encode(_image_array(8, 8, i)))
  out = str(tmp_path / "records")
  summary = builder.build_image_tfrecords(source, out, validation_fraction=0.2,
                                          num_train_shards=3, num_validation_shards=2, seed=1)
  assert summary["counts"] == {"train": 16, "validation": 4}
  assert len(glob.glob(os.path.join(out, "validation-*-of-00002"))) == 2
  validation = _read_examples(summary["files"]["validation"])
  assert sorted(_feature(e, "image/class/label") for e in validation) == [1, 1, 2, 2]
  # Deterministic with the seed; existing shards need --overwrite.
  with pytest.raises(ValueError, match="--overwrite"):
    builder.build_image_tfrecords(source, out, validation_fraction=0.2, seed=1)
  again = builder.build_image_tfrecords(source, out, validation_fraction=0.2,
                                        num_train_shards=3, num_validation_shards=2, seed=1,
                                        overwrite=True)
  assert [_feature(e, "image/filename") for e in _read_examples(again["files"]["validation"])
         ] == [_feature(e, "image/filename") for e in validation]


def test_builder_explicit_validation_dir(tmp_path):
  train_dir, val_dir = str(tmp_path / "train"), str(tmp_path / "val")
  for root, count in ((train_dir, 3), (val_dir, 1)):
    for name in ("a", "b"):
      os.makedirs(os.path.join(root, name))
      for i in range(count):
        open(os.path.join(root, name, "%d.png" % i), "wb").write(
            _encode(_image_array(8, 8), "PNG"))
  summary = builder.build_image_tfrecords(train_dir, str(tmp_path / "out"),
                                          validation_dir=val_dir)
  assert summary["counts"] == {"train": 6, "validation": 2}
  with pytest.raises(ValueError, match="either validation_fraction or validation_dir"):
    builder.build_image_tfrecords(train_dir, str(tmp_path / "out2"), validation_fraction=0.1,
                                  validation_dir=val_dir)
  os.makedirs(os.path.join(val_dir, "zebra"))
  with pytest.raises(ValueError, match="zebra"):
    builder.build_image_tfrecords(train_dir, str(tmp_path / "out3"), validation_dir=val_dir)


def test_builder_strict_fails_and_leaves_no_shards(tmp_path, capsys):
  source, out = str(tmp_path / "images"), str(tmp_path / "records")
  _image_folder(source)
  status = builder.main(["--input_dir", source, "--output_dir", out, "--strict",
                         "--validation_fraction", "0"])
  assert status == 1
  error = capsys.readouterr().err
  assert "corrupt image %s" % os.path.join(source, "bee") in error and "--strict" in error
  assert not glob.glob(os.path.join(out, "train*")) and not glob.glob(os.path.join(out, ".tmp*"))
  status = builder.main(["--input_dir", source, "--output_dir", out, "--validation_fraction",
                         "0"])
  assert status == 0
  assert "2 corrupt images skipped" in capsys.readouterr().out


def test_builder_bad_input_dir(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    builder.build_image_tfrecords(str(tmp_path / "nope"), str(tmp_path / "out"))
  os.makedirs(str(tmp_path / "empty" / "cls"))
  with pytest.raises(ValueError, match="no .jpg/.jpeg/.png images"):
    builder.build_image_tfrecords(str(tmp_path / "empty"), str(tmp_path / "out"))


# ---- the digits dataset -------------------------------------------------------------------


def test_digits_dataset(tmp_path):
  start = time.time()
  summary = make_digits_dataset.make_digits_dataset(str(tmp_path), image_size=32)
  assert time.time() - start < 20
  assert summary["counts"]["train"] + summary["counts"]["validation"] == 1797
  assert abs(summary["counts"]["validation"] - 0.2 * 1797) < 10
  assert open(os.path.join(str(tmp_path), "labels.txt")).read().split() == [
      str(d) for d in range(10)]
  validation = _read_examples(summary["files"]["validation"])
  labels = sorted(set(_feature(e, "image/class/label") for e in validation))
  assert labels == list(range(1, 11))
  for example in validation[:20]:
    digit = _feature(example, "image/filename").decode().split("/")[1]
    assert _feature(example, "image/class/label") == int(digit) + 1
    assert Image.open(io.BytesIO(_feature(example, "image/encoded"))).size == (32, 32)
  # Deterministic split.
  again = make_digits_dataset.make_digits_dataset(str(tmp_path / "again"), image_size=32)
  assert [_feature(e, "image/filename") for e in _read_examples(again["files"]["validation"])
         ] == [_feature(e, "image/filename") for e in validation]
  input_fn = imagenet.build_input_fn(str(tmp_path), False, 32, num_label_classes=11)
  images, labels = _batches(input_fn, 16, max_batches=1)[0]
  assert images.shape == (16, 32, 32, 3) and labels.min() >= 1 and labels.max() <= 10


# ---- real data -----------------------------------------------------------------------------


@pytest.mark.slow
def test_inception_preprocessing_on_real_flowers(shared_data):
  folder = os.path.join(shared_data, "flowers_kaggle_128")
  paths = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))[:4]
  if not paths:
    pytest.skip("no flower photos under %s" % folder)
  with tf.Graph().as_default():
    data = tf.placeholder(tf.string, [])
    train = inception.preprocess_image(data, True, 64, image_name=tf.constant("flower"))
    evaluation = inception.preprocess_image(data, False, 64)
    with tf.Session() as session:
      for path in paths:
        encoded = open(path, "rb").read()
        for image in session.run([train, evaluation], {data: encoded}):
          assert image.shape == (64, 64, 3)
          assert -1.0 <= image.min() < image.max() <= 1.0
        original = np.asarray(Image.open(path).convert("RGB"), np.float32) / 127.5 - 1
        evaluated = session.run(evaluation, {data: encoded})
        # Eval keeps the image content: the mean colour of the central crop survives.
        height, width = original.shape[:2]
        crop = original[height // 16:height - height // 16, width // 16:width - width // 16]
        np.testing.assert_allclose(evaluated.mean(axis=(0, 1)), crop.mean(axis=(0, 1)),
                                   atol=0.05)
