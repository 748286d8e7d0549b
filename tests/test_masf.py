"""MASF on PACS: data (labels, lists, tfrecords, episodes), losses, safe weights, train steps.

Fast tests use a synthetic mini-PACS (same layout, tiny images); tests marked slow read
the real PACS under $DATA_ROOT/pacs.
"""
import collections
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow.compat.v1 as tf

from estimators import pretrained
from estimators import registry
from estimators import run_loop
from estimators.masf import model_fn as masf_model_fn
from estimators.masf import network
from estimators.masf import weights as weights_lib
import estimators.masf as masf
from input_fns import pacs
from migration import backend as backend_lib
from migration import validation
from preprocessing import alexnet as alexnet_preprocessing
from tools import build_pacs_tfrecords

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_IMAGE_SIZE = 64  # smallest AlexNet input is 57 (pool5 1x1)
TEST_FC_UNITS = 32
PER_CLASS = 3  # synthetic images per class and domain: 2 train + 1 crossval


def _graph_mode():
  if hasattr(tf, "disable_eager_execution"):
    tf.disable_eager_execution()


_graph_mode()


def _write_image(path, domain, seed):
  rng = np.random.RandomState(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if domain == "sketch":
    Image.fromarray(rng.randint(0, 256, (40, 40), dtype=np.uint8), "L").save(path)
  else:
    Image.fromarray(rng.randint(0, 256, (40, 40, 3), dtype=np.uint8), "RGB").save(path)


def _make_mini_pacs(root):
  """kfold/<domain>/<class>/<file> + splits/<domain>_<split>_kfold.txt, 1-based labels."""
  seed = 0
  for domain in pacs.DOMAINS:
    lines = collections.defaultdict(list)
    for label, name in enumerate(pacs.CLASS_NAMES, 1):
      for i in range(PER_CLASS):
        ext = "png" if domain == "sketch" else "jpg"
        relpath = "%s/%s/pic_%03d.%s" % (domain, name, i, ext)
        _write_image(os.path.join(root, "kfold", relpath), domain, seed)
        seed += 1
        line = "%s %d\n" % (relpath, label)
        lines["test"].append(line)
        lines["crossval" if i == PER_CLASS - 1 else "train"].append(line)
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)
    for split, split_lines in lines.items():
      with open(pacs.split_list_path(root, domain, split), "w") as f:
        f.writelines(split_lines)
  return root


@pytest.fixture(scope="module")
def mini_pacs(tmp_path_factory):
  return _make_mini_pacs(str(tmp_path_factory.mktemp("mini_pacs")))


@pytest.fixture(scope="module")
def mini_records(mini_pacs, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("mini_records"))
  build_pacs_tfrecords.build_tfrecords(mini_pacs, out)
  return out


def _real_pacs_root():
  root = pacs.default_dataroot()
  if not os.path.isdir(os.path.join(root, "splits")):
    pytest.skip("real PACS not found at %s" % root)
  return root


# ---------------------------------------------------------------- labels and split lists


def test_person_is_class_6_not_an_all_zero_one_hot(tmp_path):
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "splits"))
  with open(pacs.split_list_path(root, "photo", "train"), "w") as f:
    f.write("photo/dog/a.jpg 1\nphoto/person/b.jpg 7\n")
  entries = pacs.read_split_list(root, "photo", "train", check_files=False)
  assert [e.label for e in entries] == [0, 6]
  assert pacs.CLASS_NAMES[6] == "person"
  with tf.Graph().as_default(), tf.Session() as session:
    one_hot = session.run(tf.one_hot([e.label for e in entries], pacs.NUM_CLASSES))
  assert one_hot[1].tolist() == [0, 0, 0, 0, 0, 0, 1]  # the port's 1-based label gave all zeros


def test_bad_list_lines_are_reported_together_or_skipped(tmp_path):
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "splits"))
  path = pacs.split_list_path(root, "cartoon", "crossval")
  with open(path, "w") as f:
    f.write("cartoon/dog/a.jpg 0\n"          # label outside 1..7
            "cartoon/dog/b.jpg 2\n"          # label says elephant, folder says dog
            "cartoon/dog/c.jpg\n"            # malformed
            "photo/dog/d.jpg 1\n"            # wrong domain
            "cartoon/horse/e.jpg 5\n"        # good
            "cartoon/horse/e.jpg 5\n")       # duplicate
  with pytest.raises(pacs.PacsDataError) as error:
    pacs.read_split_list(root, "cartoon", "crossval", check_files=False)
  message = str(error.value)
  assert "5 bad line(s)" in message
  for line in (1, 2, 3, 4, 6):
    assert "%s:%d:" % (path, line) in message
  entries = pacs.read_split_list(root, "cartoon", "crossval", skip_bad_lines=True,
                                 check_files=False)
  assert [(e.relpath, e.label) for e in entries] == [("cartoon/horse/e.jpg", 4)]


def test_builder_writes_zero_based_labels_and_class_names(mini_pacs, mini_records):
  with open(os.path.join(mini_records, pacs.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert summary["class_names"] == list(pacs.CLASS_NAMES)
  assert summary["counts"]["photo_train"] == 7 * (PER_CLASS - 1)
  assert summary["counts"]["sketch_test"] == 7 * PER_CLASS
  records = list(tf.io.tf_record_iterator(pacs.tfrecord_path(mini_records, "photo", "test")))
  labels, texts = [], []
  for record in records:
    example = tf.train.Example.FromString(record)
    labels.append(example.features.feature["image/class/label"].int64_list.value[0])
    texts.append(example.features.feature["image/class/text"].bytes_list.value[0].decode())
    filename = example.features.feature["image/filename"].bytes_list.value[0].decode()
    assert filename.split("/")[1] == texts[-1]
  assert sorted(set(labels)) == list(range(7))
  assert all(pacs.CLASS_NAMES[l] == t for l, t in zip(labels, texts))


def test_builder_reports_missing_and_unreadable_images_by_path(tmp_path):
  root = _make_mini_pacs(str(tmp_path / "pacs"))
  missing = os.path.join(root, "kfold", "art_painting", "dog", "pic_000.jpg")
  corrupt = os.path.join(root, "kfold", "art_painting", "house", "pic_001.jpg")
  os.remove(missing)
  with open(corrupt, "wb") as f:
    f.write(b"not an image")
  out = str(tmp_path / "records")
  with pytest.raises(pacs.PacsDataError) as error:
    build_pacs_tfrecords.build_tfrecords(root, out, domains=["art_painting"])
  message = str(error.value)
  assert missing in message and corrupt in message
  assert not os.path.exists(out)  # nothing written before the check
  summary = build_pacs_tfrecords.build_tfrecords(root, out, domains=["art_painting"],
                                                 skip_bad_lines=True)
  # each bad image is listed in train (or crossval) and in test
  assert len(summary["skipped_lines"]) == 4
  assert summary["counts"]["art_painting_train"] == 7 * (PER_CLASS - 1) - 2
  assert summary["counts"]["art_painting_test"] == 7 * PER_CLASS - 2


@pytest.mark.slow
def test_real_lists_labels_and_known_defects():
  root = _real_pacs_root()
  entries = pacs.read_split_list(root, "cartoon", "test")
  assert len(entries) == 2344
  for entry in entries:
    assert pacs.CLASS_NAMES[entry.label] == entry.relpath.split("/")[1]
  assert {e.label for e in entries} == set(range(7))
  # This copy of art_painting_crossval_kfold.txt has line 1 labelled 0 and line 17 repeating
  # line 2; both are reported, and skipped on request.
  with pytest.raises(pacs.PacsDataError) as error:
    pacs.read_split_list(root, "art_painting", "crossval")
  assert "art_painting_crossval_kfold.txt:1:" in str(error.value)
  assert "art_painting_crossval_kfold.txt:17:" in str(error.value)
  assert len(pacs.read_split_list(root, "art_painting", "crossval", skip_bad_lines=True)) == 206


# ---------------------------------------------------------------- input pipeline


def test_preprocessing_mean_bgr_and_flip():
  image = np.zeros((2, 3, 3), np.uint8)
  image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50
  image[:, 0, :] = 0
  batch = np.stack([image] * 400)
  with tf.Graph().as_default(), tf.Session() as session:
    normalized, flipped, kept, half = session.run([
        alexnet_preprocessing.preprocess_for_eval(tf.constant(image)),
        alexnet_preprocessing.random_flip_batch(tf.constant(batch), 1.0),
        alexnet_preprocessing.random_flip_batch(tf.constant(batch), 0.0),
        alexnet_preprocessing.random_flip_batch(tf.constant(batch), 0.5)])
  np.testing.assert_allclose(normalized[0, 1], [50 - 103.939, 100 - 116.779, 200 - 123.68],
                             rtol=1e-6)
  np.testing.assert_array_equal(flipped, batch[:, :, ::-1])
  np.testing.assert_array_equal(kept, batch)
  flipped_count = int((half[:, 0, 0, 0] == 200).sum())
  assert 140 < flipped_count < 260 and ((half == batch) | (half == batch[:, :, ::-1])).all()


@pytest.mark.parametrize("use_records", [True, False])
def test_episode_sampler_two_meta_train_one_meta_test_random_roles(mini_pacs, mini_records,
                                                                     use_records):
  source = pacs.PacsSource(data_dir=mini_records if use_records else None, dataroot=mini_pacs)
  sources = ("art_painting", "photo", "sketch")
  meta_batch = 4
  with tf.Graph().as_default():
    tf.set_random_seed(3)
    dataset = pacs.episode_dataset(source, sources, meta_batch, TEST_IMAGE_SIZE, 0.5)
    features, labels = tf.data.make_one_shot_iterator(dataset).get_next()
    with tf.Session() as session:
      steps = [session.run([features, labels]) for _ in range(24)]
  source_ids = {pacs.DOMAINS.index(d) for d in sources}
  roles = collections.Counter()
  for step_features, step_labels in steps:
    assert step_features["images"].shape == (3 * meta_batch, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3)
    assert step_features["images"].dtype == np.float32
    blocks = step_features["domains"].reshape(3, meta_batch)
    assert all(len(set(block)) == 1 for block in blocks)
    assert set(blocks[:, 0]) == source_ids  # a, a1, b: the three sources, each once
    roles[tuple(blocks[:, 0])] += 1
    assert step_labels.min() >= 0 and step_labels.max() < 7
  meta_test_domains = {role[2] for role in roles}
  assert meta_test_domains == source_ids
  assert len(roles) >= 4  # role assignments change from step to step


def test_eval_input_pads_with_zero_weight(mini_pacs):
  source = pacs.PacsSource(dataroot=mini_pacs)
  lists = [("photo", "crossval"), ("cartoon", "test")]
  with tf.Graph().as_default():
    dataset = pacs.eval_dataset(source, lists, TEST_IMAGE_SIZE, batch_size=5)
    features, labels = tf.data.make_one_shot_iterator(dataset).get_next()
    batches = []
    with tf.Session() as session:
      while True:
        try:
          batches.append(session.run([features, labels]))
        except tf.errors.OutOfRangeError:
          break
  weights = np.concatenate([b[0]["weights"] for b in batches])
  domains = np.concatenate([b[0]["domains"] for b in batches])
  assert all(b[0]["images"].shape[0] == 5 for b in batches)
  assert weights.sum() == 7 + 7 * PER_CLASS
  assert (domains[weights > 0] == pacs.DOMAINS.index("cartoon")).sum() == 7 * PER_CLASS
  assert (domains[weights == 0] == -1).all()


# ---------------------------------------------------------------- losses


def _numpy_kd(logits_1, labels_1, logits_2, labels_2, present, n_class=7, temperature=2.0):
  """utils.kd of the reference, with one-hot labels, class by class."""
  def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()
  one_1, one_2 = np.eye(n_class)[labels_1], np.eye(n_class)[labels_2]
  loss = 0.0
  for c in range(n_class):
    mean_1 = (logits_1 * one_1[:, c:c + 1]).sum(0) / (one_1[:, c].sum() + 1e-16)
    mean_2 = (logits_2 * one_2[:, c:c + 1]).sum(0) / (one_2[:, c].sum() + 1e-16)
    p = np.clip(softmax(mean_1 / temperature), 1e-8, 1.0)
    q = np.clip(softmax(mean_2 / temperature), 1e-8, 1.0)
    loss += (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))) / 2.0 * present[c]
  return loss / n_class


def test_global_loss_matches_numpy_on_hand_made_logits():
  rng = np.random.RandomState(0)
  labels_b = np.array([0, 0, 1, 2, 2, 6, 6, 3])
  labels_a = np.array([0, 1, 1, 2, 6, 5, 5, 4])  # 3 only in b; 4 and 5 only in a
  logits_b = rng.randn(8, 7).astype(np.float32) * 3
  logits_a = rng.randn(8, 7).astype(np.float32) * 3
  logits_b[:, 0] += 20.0  # a near-one-hot softmax exercises the 1e-8 clip
  present = np.array([c in labels_a and c in labels_b for c in range(7)], np.float64)
  assert present.tolist() == [1, 1, 1, 0, 0, 0, 1]
  expected = _numpy_kd(logits_b, labels_b, logits_a, labels_a, present)
  with tf.Graph().as_default(), tf.Session() as session:
    got = session.run(masf_model_fn.global_alignment_loss(
        tf.constant(logits_b), tf.constant(labels_b, tf.int32), tf.constant(logits_a),
        tf.constant(labels_a, tf.int32), 7))
  assert expected > 0.01
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def _numpy_semihard(labels, embeddings, margin):
  diff = embeddings[:, None, :] - embeddings[None, :, :]
  distances = (diff ** 2).sum(-1)
  losses = []
  for i in range(len(labels)):
    negatives = [k for k in range(len(labels)) if labels[k] != labels[i]]
    if not negatives:
      continue
    for j in range(len(labels)):
      if j == i or labels[j] != labels[i]:
        continue
      semi_hard = [distances[i, k] for k in negatives if distances[i, k] > distances[i, j]]
      negative = min(semi_hard) if semi_hard else max(distances[i, k] for k in negatives)
      losses.append(max(margin + distances[i, j] - negative, 0.0))
  return np.mean(losses) if losses else 0.0


@pytest.mark.parametrize("seed,scale,margin", [(0, 1.0, 1.0), (1, 3.0, 10.0), (2, 0.3, 0.5)])
def test_triplet_semihard_matches_brute_force(seed, scale, margin):
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 4, size=14)
  embeddings = (rng.randn(14, 5) * scale).astype(np.float32)
  expected = _numpy_semihard(labels, embeddings.astype(np.float64), margin)
  with tf.Graph().as_default(), tf.Session() as session:
    emb = tf.constant(embeddings)
    loss = masf_model_fn.triplet_semihard_loss(tf.constant(labels, tf.int32), emb, margin)
    got, grad = session.run([loss, tf.gradients(loss, emb)[0]])
  assert expected > 0
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


def test_triplet_fallback_and_degenerate_groups():
  # anchor 0: positive 1 at distance 4, only negative at distance 1 -> no semi-hard negative,
  # the farthest negative (1) is used: loss = 0.5 + 4 - 1.
  embeddings = np.array([[0.0], [2.0], [1.0]], np.float32)
  labels = np.array([0, 0, 1])
  expected = _numpy_semihard(labels, embeddings.astype(np.float64), 0.5)
  with tf.Graph().as_default(), tf.Session() as session:
    got = session.run(masf_model_fn.triplet_semihard_loss(
        tf.constant(labels, tf.int32), tf.constant(embeddings), 0.5))
    single_class = session.run(masf_model_fn.triplet_semihard_loss(
        tf.constant([1, 1, 1]), tf.constant(embeddings), 0.5))
    no_positive = session.run(masf_model_fn.triplet_semihard_loss(
        tf.constant([0, 1, 2]), tf.constant(embeddings), 0.5))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(expected, (3.5 + 3.5) / 2)  # anchors 0 and 1 both fall back
  assert single_class == 0.0 and no_positive == 0.0


def test_triplet_matches_tf_contrib_when_available():
  if not tf.__version__.startswith("1."):
    pytest.skip("tf.contrib exists only in TF 1.x")
  import tensorflow as tf_root  # pylint: disable=g-import-not-at-top  (tf.contrib is not in compat.v1)
  rng = np.random.RandomState(5)
  labels = np.repeat(np.arange(4), 4)
  embeddings = rng.randn(16, 6).astype(np.float32)
  with tf.Graph().as_default(), tf.Session() as session:
    ours, contrib = session.run([
        masf_model_fn.triplet_semihard_loss(tf.constant(labels), tf.constant(embeddings), 10.0),
        tf_root.contrib.losses.metric_learning.triplet_semihard_loss(
            tf.constant(labels), tf.constant(embeddings), 10.0)])
  np.testing.assert_allclose(ours, contrib, rtol=1e-5)


# ---------------------------------------------------------------- pretrained weights


def _small_shapes():
  return network.weight_shapes(TEST_IMAGE_SIZE, 7, TEST_FC_UNITS)


def _official_layout(shapes, fc8_classes=1000, bytes_keys=False, seed=0):
  rng = np.random.RandomState(seed)
  stored = {}
  for layer, (w_shape, b_shape) in shapes.items():
    if layer == "fc8":
      w_shape, b_shape = (w_shape[0], fc8_classes), (fc8_classes,)
    key = layer.encode() if bytes_keys else layer
    stored[key] = [rng.randn(*w_shape).astype(np.float32), rng.randn(*b_shape).astype(np.float32)]
  return stored


def test_reference_shapes_and_parameter_count():
  shapes = network.weight_shapes()
  assert shapes["fc6"][0] == (9216, 4096)
  assert network.pool5_size(227) == 6
  total = sum(np.prod(w) + np.prod(b) for w, b in shapes.values())
  assert total == 56896903  # models.md: 56,896,903 with a 7-way fc8


def test_build_is_forward_on_the_networks_variables():
  config = {"image_size": TEST_IMAGE_SIZE, "fc_units": TEST_FC_UNITS}
  images = np.random.RandomState(0).randn(2, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3) * 50
  with tf.Graph().as_default(), tf.Session() as session:
    logits, end_points = network.build(tf.constant(images, tf.float32), 7, False, config)
    weights = network.construct_weights(TEST_IMAGE_SIZE, 7, TEST_FC_UNITS)  # the same ones
    assert len(tf.global_variables()) == 16
    fc7, forward_logits = network.forward(tf.constant(images, tf.float32), weights, False)
    session.run(tf.global_variables_initializer())
    got = session.run([logits, end_points["fc7"], forward_logits, fc7])
  assert got[0].shape == (2, 7) and got[1].shape == (2, TEST_FC_UNITS)
  np.testing.assert_array_equal(got[0], got[2])
  np.testing.assert_array_equal(got[1], got[3])


def _check_small(path):
  """weights_lib.check against the small AlexNet the fast tests use."""
  return weights_lib.check(path, TEST_IMAGE_SIZE, TEST_FC_UNITS)


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_safe_loader_reads_official_layout_and_skips_fc8(tmp_path, bytes_keys):
  path = str(tmp_path / "bvlc_alexnet.npy")
  stored = _official_layout(_small_shapes(), bytes_keys=bytes_keys)
  np.save(path, stored, allow_pickle=True)
  source = _check_small(path)
  with tf.Graph().as_default():
    _, entries = pretrained.plan(path, network.construct_weights(
        TEST_IMAGE_SIZE, fc_units=TEST_FC_UNITS).values(), weights_lib.FILTER)
  assert len(entries) == 14 and not any(e.key.startswith("fc8/") for e in entries)
  values = dict(source.read(["conv2/weights", "conv2/biases"]))
  key = b"conv2" if bytes_keys else "conv2"
  np.testing.assert_array_equal(values["conv2/weights"], stored[key][0])
  np.testing.assert_array_equal(values["conv2/biases"], stored[key][1])


def _code_carrying_npy(path, marker, callable_name):
  target = {"system": os.system, "eval": eval}[callable_name]
  argument = ("touch %s" % marker if callable_name == "system"
              else "open(%r, 'w').close()" % marker)

  class Payload(object):

    def __reduce__(self):
      return (target, (argument,))

  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump({"conv1": [Payload(), np.zeros(96, np.float32)]}, f, protocol=2)


@pytest.mark.parametrize("callable_name", ["system", "eval"])
def test_safe_loader_refuses_code_carrying_pickle(tmp_path, callable_name):
  path, marker = str(tmp_path / "evil.npy"), str(tmp_path / "pwned")
  _code_carrying_npy(path, marker, callable_name)
  with pytest.raises(weights_lib.UnsafePickleError) as error:
    weights_lib.FILTER.open_source(path)
  assert callable_name in str(error.value) and path in str(error.value)
  assert not os.path.exists(marker)
  converter = _load_converter()
  assert converter.main([path, str(tmp_path / "out.npz")]) == 1
  assert not os.path.exists(marker)


def test_shape_mismatches_are_listed_in_one_error(tmp_path):
  path = str(tmp_path / "w.npy")
  stored = _official_layout(_small_shapes())
  stored["conv3"][0] = np.zeros((3, 3, 256, 10), np.float32)
  stored["fc7"][1] = np.zeros(5, np.float32)
  del stored["conv5"]
  np.save(path, stored, allow_pickle=True)
  with pytest.raises(pretrained.WeightsMismatchError) as error:
    _check_small(path)
  assert error.value.missing == ["conv5/biases", "conv5/weights"]
  assert [m[0] for m in error.value.mismatched] == ["conv3/weights", "fc7/biases"]
  assert str(error.value).startswith("weights file %s does not fit the model:" % path)


def _load_converter():
  spec = importlib.util.spec_from_file_location(
      "convert_alexnet_npy", os.path.join(REPO, "tools", "convert_alexnet_npy.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_convert_cli_writes_plain_npz(tmp_path):
  source, target = str(tmp_path / "w.npy"), str(tmp_path / "w.npz")
  stored = _official_layout(_small_shapes())
  np.save(source, stored, allow_pickle=True)
  _load_converter().convert(source, target, TEST_IMAGE_SIZE, TEST_FC_UNITS)
  with np.load(target, allow_pickle=False) as archive:
    assert archive["fc8/weights"].shape == (TEST_FC_UNITS, 1000)
  values = dict(_check_small(target).read(["fc6/weights"]))
  np.testing.assert_array_equal(values["fc6/weights"], stored["fc6"][0])


# ---------------------------------------------------------------- model, flags, estimator


def _configured(*argv):
  """(model, Config) from the flags as a run works them out (ranges, configure), without
  the data and weights checks: tests call check_inputs themselves."""
  model, flag_values = run_loop.parse_flags("masf", ["--model_dir=/tmp/unused"] + list(argv))
  registry.check_ranges(model.flags, flag_values)
  run = run_loop.run_values(flag_values, backend_lib.select_backend("cpu"))
  return model, model.configure(flag_values, run)


def _refusal(*argv):
  """The one-line error of a run with `argv` refused before any graph."""
  with pytest.raises(validation.ConfigError) as error:
    run_loop.prepare("masf", ["--model_dir=/tmp/unused", "--device=cpu"] + list(argv))
  return str(error.value)


def _tiny_argv(dataroot, *extra):
  return ["--dataroot=%s" % dataroot, "--image_size=%d" % TEST_IMAGE_SIZE,
          "--fc_units=%d" % TEST_FC_UNITS, "--meta_batch_size=6"] + list(extra)


def test_flag_defaults_and_the_configuration(mini_pacs):
  model, config = _configured("--dataroot=%s" % mini_pacs)
  assert config.target_domain == "cartoon" and config.meta_batch_size == 126
  assert config.inner_lr == config.outer_lr == config.metric_lr == 1e-5
  assert config.margin == 10.0 and config.gradients_clip_value == 2.0
  assert config.train_steps == 300 and config.train_batch_size == 378
  assert config.eval_batch_size == 100 and config.dataroot == mini_pacs
  assert config.source_domains == ("art_painting", "photo", "sketch")
  assert config.eval_lists == (("art_painting", "crossval"), ("photo", "crossval"),
                               ("sketch", "crossval"), ("cartoon", "test"))
  model, config = _configured(*_tiny_argv(mini_pacs, "--train_iterations=7"))
  assert config.train_steps == 7 and config.train_batch_size == 18
  assert run_loop.FLAGS.train_batch_size == 378, "flags are never rewritten"
  assert vars(model) == {}, "the model keeps no state"
  _, config = _configured(*_tiny_argv(mini_pacs, "--train_batch_size=18"))
  assert config.train_batch_size == 18  # the episode's size, given explicitly: accepted


def test_a_pacs_root_given_as_data_dir_is_read_as_the_dataroot(mini_pacs, tmp_path):
  """What the launchers pass (--data_path -> --data_dir), whichever form the data has."""
  _, config = _configured("--data_dir=%s" % mini_pacs)
  assert (config.data_dir, config.dataroot) == (None, mini_pacs)
  _, config = _configured("--data_dir=%s" % tmp_path)  # tfrecords
  assert config.data_dir == str(tmp_path)


def test_default_dataroot_is_under_the_data_root(monkeypatch, tmp_path):
  monkeypatch.setenv("DATA_ROOT", str(tmp_path))
  assert pacs.default_dataroot() == os.path.join(str(tmp_path), "pacs")
  _, config = _configured("--image_size=%d" % TEST_IMAGE_SIZE)
  assert config.dataroot == os.path.join(str(tmp_path), "pacs") and config.data_dir is None


@pytest.mark.parametrize("argv,message", [
    (["--train_batch_size=20"], "--train_batch_size=20: MASF's batch is 3 x "
     "--meta_batch_size = 18; set --meta_batch_size only"),
    (["--meta_batch_size=2"], "--meta_batch_size=2 must be >= 3"),
    (["--image_size=40"], "--image_size=40 must be >= 57"),
    (["--inner_lr=0"], "--inner_lr=0.0 must be > 0"),
    (["--margin=-1"], "--margin=-1.0 must be >= 0"),
    (["--flip_probability=1.5"], "--flip_probability=1.5 must lie in [0.0, 1.0]"),
    (["--num_classes=5"], "--num_classes=5 must lie in [7, 7]"),
    (["--weights_path=/no/such/alexnet.npy"], "--weights_path=/no/such/alexnet.npy does "
     "not exist"),
    (["--weights_path=%s" % os.path.abspath(__file__)], "--weights_path needs "
     "--image_size=227 and --fc_units=4096"),
])
def test_bad_flags_are_refused_in_one_line(mini_pacs, argv, message):
  assert _refusal(*_tiny_argv(mini_pacs, *argv)).startswith(message)


def test_train_epochs_count_the_source_domains_training_images(mini_pacs, mini_records):
  for data_flags in ([], ["--data_dir=%s" % mini_records]):  # split lists, builder summary
    _, config = _configured(*_tiny_argv(mini_pacs, "--train_epochs=3", *data_flags))
    assert masf.train_examples(config) == 3 * 7 * (PER_CLASS - 1)  # 42 = 3 domains' train
    assert config.train_steps == 7  # ceil(3 * 42 / (3 x meta_batch_size 6))


def test_summary_names_the_target_and_the_source_accuracy(mini_pacs):
  results = {"global_step": 5, "target_accuracy": 0.6, "source_crossval_accuracy": 0.8,
             "accuracy": 0.8}
  for domain in pacs.DOMAINS:
    results.update({"accuracy/" + domain: 0.6 if domain == "cartoon" else 0.8,
                    "examples/" + domain: 21 if domain == "cartoon" else 7})
  model, config = _configured(*_tiny_argv(mini_pacs))
  first = model.summarize(results, config).splitlines()[0]
  assert first.startswith("MASF at global step 5: target accuracy 60.00% (held-out cartoon, "
                          "its test list"), first
  assert ("source crossval accuracy 80.00% (art_painting, photo, sketch)" in first and
          "selected on the source crossval accuracy" in first), first
  assert model.headline_metric[0] == "target_accuracy"


def test_input_check_names_missing_data(tmp_path):
  model, config = _configured(*_tiny_argv(str(tmp_path)))
  with pytest.raises(pacs.PacsDataError) as error:
    model.check_inputs(config)
  assert "splits" in str(error.value)
  assert "splits" in _refusal(*_tiny_argv(str(tmp_path)))


def _save_converted(path, stored):
  np.savez(path, **dict(("%s/%s" % (layer, kind), array) for layer, (w, b) in stored.items()
                        for kind, array in (("weights", w), ("biases", b))))


NOT_NUMERIC = "has dtype %s, expected a float or integer array"
# problem: (file, layer, 0 (weights) or 1 (biases), array -> spoiled array, message end)
BAD_WEIGHTS = {
    "nan": ("w.npy", "conv3", 0, lambda a: np.full_like(a, np.nan),
            "key conv3/weights holds NaN/inf"),
    "inf": ("w.npz", "fc7", 1, lambda a: np.full_like(a, np.inf), "key fc7/biases holds NaN/inf"),
    "complex": ("w.npy", "fc6", 1, lambda a: a.astype(np.complex64),
                "key fc6/biases " + NOT_NUMERIC % "complex64"),
    "object": ("w.npz", "conv1", 1, lambda a: np.full(a.shape, None, object),
               "key conv1/biases " + NOT_NUMERIC % "object"),
    "string": ("w.npz", "conv2", 1, lambda a: np.full(a.shape, "x"),
               "key conv2/biases " + NOT_NUMERIC % "<U1"),
    "shape": ("w.npy", "conv2", 0, lambda a: a[..., :7],
              "conv2/weights file (5, 5, 48, 7) != model (5, 5, 48, 256)"),
}


@pytest.mark.parametrize("problem", sorted(BAD_WEIGHTS))
def test_bad_weights_stop_check_inputs_before_the_graph(mini_pacs, tmp_path, problem):
  name, layer, index, spoil, expected = BAD_WEIGHTS[problem]
  path = str(tmp_path / name)
  stored = _official_layout(_small_shapes())
  stored[layer][index] = spoil(stored[layer][index])
  if name.endswith(".npz"):
    _save_converted(path, stored)
  else:
    np.save(path, stored, allow_pickle=True)
  # configure() accepts weights only at AlexNet's size (227, fc 4096); check_inputs checks
  # the file against whatever size the config gives, so the small AlexNet serves here.
  model, config = _configured(*_tiny_argv(mini_pacs))
  with pytest.raises(ValueError) as error:  # what run_loop turns into "error: ..."
    model.check_inputs(config.replace(weights_path=path))
  message = str(error.value)
  assert message.splitlines()[0].startswith("weights file %s" % path)
  assert expected in message
  if problem != "shape":
    assert message == "weights file %s: %s" % (path, expected)


def test_code_carrying_pickle_stops_check_inputs(mini_pacs, tmp_path):
  path, marker = str(tmp_path / "evil.npy"), str(tmp_path / "pwned")
  _code_carrying_npy(path, marker, "system")
  model, config = _configured("--dataroot=%s" % mini_pacs, "--meta_batch_size=6",
                              "--weights_path=%s" % path)
  with pytest.raises(weights_lib.UnsafePickleError, match="weights file %s: refusing" % path):
    model.check_inputs(config)
  assert not os.path.exists(marker)


def test_entry_point_refuses_bad_weights_in_one_line_before_the_graph(mini_pacs, tmp_path):
  path, marker = str(tmp_path / "evil.npy"), str(tmp_path / "pwned")
  _code_carrying_npy(path, marker, "system")
  model_dir = tmp_path / "model"
  proc = subprocess.run(
      [sys.executable, "masf.py", "--dataroot=%s" % mini_pacs, "--meta_batch_size=6",
       "--train_steps=1", "--model_dir=%s" % model_dir, "--weights_path=%s" % path],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
  stderr = proc.stderr.decode("utf-8", "replace")
  assert proc.returncode != 0
  assert "Traceback" not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith(
      "error: weights file %s: refusing to unpickle global " % path), stderr[-3000:]
  assert not os.path.exists(marker) and not tf.train.latest_checkpoint(str(model_dir))


def _estimator(model, config, model_dir):
  def model_fn(features, labels, mode):
    batch = (config.train_batch_size if mode == tf.estimator.ModeKeys.TRAIN
             else config.eval_batch_size)
    return model.model_fn(features, labels, mode, config.replace(batch_size=batch))

  run_config = tf.estimator.RunConfig(tf_random_seed=1, keep_checkpoint_max=2,
                                      log_step_count_steps=None)
  return tf.estimator.Estimator(model_fn=model_fn, model_dir=model_dir, config=run_config)


def _input(model, config, mode, batch):
  input_fn = model.input_fn(config, mode)
  return lambda: input_fn({"batch_size": batch})


def _checkpoint_values(model_dir, names):
  reader = tf.train.load_checkpoint(model_dir)
  return dict((name, reader.get_tensor(name)) for name in names)


def test_estimator_masf_train_eval_predict(mini_pacs, mini_records, tmp_path):
  model, config = _configured(*_tiny_argv(mini_pacs, "--data_dir=%s" % mini_records))
  model_dir = str(tmp_path / "masf")
  estimator = _estimator(model, config, model_dir)
  estimator.train(_input(model, config, tf.estimator.ModeKeys.TRAIN, 18), steps=1)
  names = ["model/conv1/weights", "model/fc8/biases", "model/metric/w2"]
  initial = _checkpoint_values(os.path.join(model_dir, "model.ckpt-0"), names)
  trained = _checkpoint_values(model_dir, names)
  assert all(np.abs(initial[n] - trained[n]).max() > 0 for n in names)
  variables = {n for n, _ in tf.train.list_variables(model_dir)}
  # reference quirk kept by default: the meta Adam also has slots for the metric net
  assert "model/metric/w1/MetaAdam" in variables and "model/metric/w1/MetricAdam" in variables
  assert "model/conv1/weights/TaskAdam" in variables

  results = estimator.evaluate(_input(model, config, tf.estimator.ModeKeys.EVAL, 8))
  assert results["global_step"] == 1
  for domain in pacs.DOMAINS:
    assert 0.0 <= results["accuracy/" + domain] <= 1.0
  assert results["examples/cartoon"] == 7 * PER_CLASS  # target: its whole test list
  assert results["examples/photo"] == 7  # sources: their crossval lists
  assert results["accuracy"] == results["source_crossval_accuracy"]
  assert results[model.headline_metric[0]] == results["accuracy/cartoon"]
  table = masf.format_domain_table(masf.domain_accuracies(results), masf.PUBLISHED_MASF)
  assert "| average |" in table and "| cartoon |" in table

  photo = estimator.evaluate(lambda: model.domain_eval_input_fn(config, "photo", "crossval")(
      {"batch_size": 8}))
  assert set(masf.domain_accuracies(photo)) == {"photo"}
  assert photo["accuracy/photo"] == results["accuracy/photo"]

  export_dir = estimator.export_saved_model(str(tmp_path / "export"),
                                            model.serving_input_receiver_fn(config))
  assert os.path.isfile(os.path.join(export_dir.decode() if isinstance(export_dir, bytes)
                                     else export_dir, "saved_model.pb"))

  predictions = list(estimator.predict(_input(model, config, tf.estimator.ModeKeys.PREDICT, 8)))
  assert len(predictions) == 7 * PER_CLASS
  assert all(0 <= p["classes"] < 7 for p in predictions)


def test_domain_table_rows_and_average():
  table = masf.format_domain_table({"sketch": 0.6, "art_painting": 0.7}, masf.PUBLISHED_MASF)
  lines = table.splitlines()
  assert lines[-3] == "| art_painting | 70.00 | 70.35 |"
  assert lines[-2] == "| sketch | 60.00 | 67.33 |"
  assert lines[-1] == "| average | 65.00 | %.2f |" % ((70.35 + 67.33) / 2)
  results = {"accuracy/photo": 0.5, "examples/photo": 3.0, "accuracy/sketch": 0.0,
             "examples/sketch": 0.0}
  assert masf.domain_accuracies(results) == {"photo": 0.5}


def test_estimator_deepall_and_original_selection_protocol(mini_pacs, tmp_path):
  model, config = _configured(*_tiny_argv(mini_pacs, "--algorithm=deepall",
                                          "--select_on_target_accuracy",
                                          "--meta_step_updates_metric_net=false"))
  model_dir = str(tmp_path / "deepall")
  estimator = _estimator(model, config, model_dir)
  estimator.train(_input(model, config, tf.estimator.ModeKeys.TRAIN, 18), steps=1)
  names = [n for n, _ in tf.train.list_variables(model_dir)]
  assert not any("metric" in n for n in names) and any("DeepAllAdam" in n for n in names)
  results = estimator.evaluate(_input(model, config, tf.estimator.ModeKeys.EVAL, 8))
  assert results["accuracy"] == results["target_accuracy"] == results["accuracy/cartoon"]


def test_metric_net_gets_only_its_own_optimizer_when_quirk_is_off(mini_pacs):
  model, config = _configured(*_tiny_argv(mini_pacs, "--meta_step_updates_metric_net=false"))
  with tf.Graph().as_default():
    features = {"images": tf.zeros([18, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3])}
    labels = tf.constant(np.repeat(np.arange(6) % 7, 3), tf.int32)
    model.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                   config.replace(batch_size=18))
    names = [v.op.name for v in tf.global_variables()]
  assert "model/metric/w1/MetricAdam" in names
  assert not any(n.startswith("model/metric/") and "MetaAdam" in n for n in names)
  assert "model/conv1/weights/MetaAdam" in names


def test_pretrained_weights_are_loaded_when_no_checkpoint(mini_pacs, tmp_path):
  path = str(tmp_path / "alexnet.npy")
  stored = _official_layout(_small_shapes(), seed=3)
  np.save(path, stored, allow_pickle=True)
  model, config = _configured(*_tiny_argv(mini_pacs))
  config = config.replace(weights_path=path, outer_lr=1e-9, metric_lr=1e-9, inner_lr=1e-9)
  model_dir = str(tmp_path / "pretrained")
  estimator = _estimator(model, config, model_dir)
  estimator.train(_input(model, config, tf.estimator.ModeKeys.TRAIN, 18), steps=1)
  loaded = _checkpoint_values(model_dir, ["model/conv1/weights", "model/fc7/biases"])
  np.testing.assert_allclose(loaded["model/conv1/weights"], stored["conv1"][0], atol=1e-6)
  np.testing.assert_allclose(loaded["model/fc7/biases"], stored["fc7"][1], atol=1e-6)


def _one_real_step(image_size, fc_units, meta_batch_size):
  model, config = _configured("--image_size=%d" % image_size, "--fc_units=%d" % fc_units,
                              "--meta_batch_size=%d" % meta_batch_size,
                              "--skip_bad_list_lines", "--cache_decoded_images=false")
  config = config.replace(batch_size=3 * meta_batch_size)
  with tf.Graph().as_default():
    tf.set_random_seed(1)
    features, labels = tf.data.make_one_shot_iterator(
        model.input_fn(config, tf.estimator.ModeKeys.TRAIN)(config)).get_next()
    spec = model.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN, config)
    variables = tf.trainable_variables()
    with tf.Session() as session:
      session.run(tf.global_variables_initializer())
      before = session.run(variables)
      _, loss, logged = session.run([spec.train_op, spec.loss, spec.training_hooks[0]._tensors])
      after = session.run(variables)
      step = session.run(tf.train.get_global_step())
  return variables, before, after, loss, logged, step


@pytest.mark.slow
def test_one_masf_train_step_on_real_pacs_at_227():
  _real_pacs_root()
  variables, before, after, loss, logged, step = _one_real_step(227, network.FC_UNITS, 3)
  assert step == 1 and np.isfinite(loss)
  assert all(np.isfinite(v) for v in logged.values())
  assert variables[network.LAYERS.index("fc6") * 2].shape.as_list() == [9216, 4096]
  changed = {v.op.name for v, b, a in zip(variables, before, after) if np.abs(a - b).max() > 0}
  alexnet = {v.op.name for v in variables if "/metric/" not in v.op.name}
  assert len(alexnet) == 16 and alexnet <= changed
  # a 3-image triplet group rarely holds a positive pair: the metric net moves iff it has one
  metric_moved = any("/metric/" in name for name in changed)
  assert metric_moved == (logged["local_loss"] > 0)
