"""ViT and BiT: architecture sizes, official .npz loading, recipes and data readers.

Weights files are written in the official layouts (key names and shapes of
models.md §2.3 / §3.2) with random values for small configs; the graph's logits must
match a plain NumPy forward pass over the same arrays.
"""
import io
import json
import logging
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage
import tensorflow.compat.v1 as tf

from estimators import finetune
from estimators import layers
from estimators import pretrained
from estimators import registry
from estimators import run_loop
from migration import backend as backend_lib
from migration import estimator as estimator_lib
from migration import run_config as run_config_lib
from migration import validation
from estimators.bit import model_fn as bit_model_fn
from estimators.bit import network as bit_network
from estimators.bit import weights as bit_weights
from estimators.vit import model_fn as vit_model_fn
from estimators.vit import network as vit_network
from estimators.vit import weights as vit_weights
from input_fns import cifar
from input_fns import image_sources
from input_fns import tf_flowers
from input_fns import tfds_layout
from preprocessing import transfer
from tests import conftest
from tools import build_cifar_tfrecords

FLOWERS = "flowers_kaggle_128"
FLOWER_COUNTS = {"daisy": 764, "dandelion": 1052, "rose": 784, "sunflower": 733,
                 "tulip": 984}
TINY_VIT = vit_network.ViTConfig(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2,
                                 patch_size=8, dropout_rate=0.0, attention_dropout_rate=0.0,
                                 representation_size=None)
TINY_BIT = bit_network.BiTConfig(block_units=(1, 1, 1, 1), width_factor=0.5)
TINY_VIT_CONFIG = {"network_config": TINY_VIT}  # what network.build reads
DIGITS_CLASSES = 10


# ----------------------------------------------------------------------------------------
# Official-layout weights and NumPy reference forward passes.

def vit_npz_arrays(config, image_size, num_classes, seed=0, pre_logits=None):
  """{official key: random array} of a ViT (vit_jax export layout)."""
  rng = np.random.RandomState(seed)
  d, m, h = config.hidden_size, config.mlp_dim, config.num_heads
  tokens = (image_size // config.patch_size) ** 2 + 1
  normal = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)
  arrays = {
      "embedding/kernel": normal(config.patch_size, config.patch_size, 3, d),
      "embedding/bias": normal(d),
      "cls": normal(1, 1, d),
      "Transformer/posembed_input/pos_embedding": normal(1, tokens, d),
      "Transformer/encoder_norm/scale": 1 + normal(d),
      "Transformer/encoder_norm/bias": normal(d),
      "head/kernel": normal(pre_logits or d, num_classes),
      "head/bias": normal(num_classes),
  }
  if pre_logits:
    arrays["pre_logits/kernel"] = normal(d, pre_logits)
    arrays["pre_logits/bias"] = normal(pre_logits)
  for i in range(config.num_layers):
    block = "Transformer/encoderblock_%d/" % i
    attention = block + "MultiHeadDotProductAttention_1/"
    for name in ("query", "key", "value"):
      arrays[attention + name + "/kernel"] = normal(d, h, d // h)
      arrays[attention + name + "/bias"] = normal(h, d // h)
    arrays[attention + "out/kernel"] = normal(h, d // h, d)
    arrays[attention + "out/bias"] = normal(d)
    for norm in ("LayerNorm_0", "LayerNorm_2"):
      arrays[block + norm + "/scale"] = 1 + normal(d)
      arrays[block + norm + "/bias"] = normal(d)
    arrays[block + "MlpBlock_3/Dense_0/kernel"] = normal(d, m)
    arrays[block + "MlpBlock_3/Dense_0/bias"] = normal(m)
    arrays[block + "MlpBlock_3/Dense_1/kernel"] = normal(m, d)
    arrays[block + "MlpBlock_3/Dense_1/bias"] = normal(d)
  return arrays


def to_big_vision(arrays, scanned):
  """The same weights in the big_vision `params/` layout (optionally layer-stacked)."""
  renames = {"LayerNorm_2": "LayerNorm_1", "MultiHeadDotProductAttention_1":
             "MultiHeadDotProductAttention_0", "MlpBlock_3": "MlpBlock_0"}
  out, stacked = {}, {}
  for key, value in arrays.items():
    if key == vit_weights.POSITION_EMBEDDING:
      out["params/pos_embedding"] = value
      continue
    parts = key.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = renames.get(parts[2], parts[2])
      if scanned:
        stacked.setdefault("/".join(parts[2:]), {})[int(parts[1].split("_")[1])] = value
        continue
    out["params/" + "/".join(parts)] = value
  for rest, by_layer in stacked.items():
    out["params/Transformer/encoderblock/" + rest] = np.stack(
        [by_layer[i] for i in sorted(by_layer)])
  return out


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def vit_numpy(images, w, num_layers, num_heads, patch):
  """Official ViT forward pass (eval) in float64 NumPy from a dict of official arrays."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  b, size = images.shape[0], images.shape[1]
  g = size // patch
  x = images[:, :g * patch, :g * patch].reshape(b, g, patch, g, patch, 3)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, patch * patch * 3)
  x = x @ w["embedding/kernel"].reshape(-1, w["embedding/kernel"].shape[-1])
  x = x + w["embedding/bias"]
  x = np.concatenate([np.repeat(w["cls"], b, axis=0), x], axis=1)
  x = x + w["Transformer/posembed_input/pos_embedding"]
  for i in range(num_layers):
    p = "Transformer/encoderblock_%d/" % i
    a = p + "MultiHeadDotProductAttention_1/"
    y = _layer_norm(x, w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"], 1e-6)
    q, k, v = [np.einsum("btd,dhk->bhtk", y, w[a + n + "/kernel"])
               + w[a + n + "/bias"][None, :, None, :] for n in ("query", "key", "value")]
    logits = np.einsum("bhqk,bhtk->bhqt", q / np.sqrt(q.shape[-1]), k)
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    context = np.einsum("bhqt,bhtk->bhqk", attention, v)
    x = x + np.einsum("bhqk,hkd->bqd", context, w[a + "out/kernel"]) + w[a + "out/bias"]
    y = _layer_norm(x, w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"], 1e-6)
    y = _gelu_tanh(y @ w[p + "MlpBlock_3/Dense_0/kernel"] + w[p + "MlpBlock_3/Dense_0/bias"])
    x = x + y @ w[p + "MlpBlock_3/Dense_1/kernel"] + w[p + "MlpBlock_3/Dense_1/bias"]
  x = _layer_norm(x, w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"],
                  1e-6)[:, 0]
  if "pre_logits/kernel" in w:
    x = np.tanh(x @ w["pre_logits/kernel"] + w["pre_logits/bias"])
  return x @ w["head/kernel"] + w["head/bias"]


def bit_npz_arrays(config, num_classes, seed=0, gn_shape_prefix=()):
  """{official key: random array} of a BiT ResNet-v2 (gs://bit_models layout)."""
  rng = np.random.RandomState(seed)
  normal = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)
  width = bit_network.root_width(config)
  arrays = {"resnet/root_block/standardized_conv2d/kernel": normal(7, 7, 3, width)}

  def group_norm(prefix, channels):
    arrays[prefix + "group_norm/gamma"] = (1 + normal(channels)).reshape(
        gn_shape_prefix + (channels,))
    arrays[prefix + "group_norm/beta"] = normal(channels).reshape(
        gn_shape_prefix + (channels,))

  channels = width
  for block, units in enumerate(config.block_units):
    middle = width * 2 ** block
    for unit in range(units):
      p = "resnet/block%d/unit%02d/" % (block + 1, unit + 1)
      group_norm(p + "a/", channels)
      if unit == 0:
        arrays[p + "a/proj/standardized_conv2d/kernel"] = normal(1, 1, channels, 4 * middle)
      arrays[p + "a/standardized_conv2d/kernel"] = normal(1, 1, channels, middle)
      group_norm(p + "b/", middle)
      arrays[p + "b/standardized_conv2d/kernel"] = normal(3, 3, middle, middle)
      group_norm(p + "c/", middle)
      arrays[p + "c/standardized_conv2d/kernel"] = normal(1, 1, middle, 4 * middle)
      channels = 4 * middle
  group_norm("resnet/", channels)
  arrays["resnet/head/conv2d/kernel"] = normal(1, 1, channels, num_classes)
  arrays["resnet/head/conv2d/bias"] = normal(num_classes)
  return arrays


def _conv(x, kernel, stride):
  """VALID convolution, NHWC x HWIO."""
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = 0
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride, :]
      out = out + np.einsum("bhwc,co->bhwo", window, kernel[i, j])
  return out


def _std_conv(x, kernel, stride=1):
  kernel = kernel - kernel.mean((0, 1, 2), keepdims=True)
  kernel = kernel / np.sqrt(kernel.var((0, 1, 2), keepdims=True) + 1e-10)
  return _conv(x, kernel, stride)


def _group_norm_relu(x, gamma, beta, groups=32):
  b, h, w, c = x.shape
  grouped = x.reshape(b, h, w, groups, c // groups)
  mean = grouped.mean((1, 2, 4), keepdims=True)
  var = grouped.var((1, 2, 4), keepdims=True)
  x = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(b, h, w, c)
  return np.maximum(x * gamma.reshape(-1) + beta.reshape(-1), 0)


def _pad(x, n):
  return np.pad(x, [(0, 0), (n, n), (n, n), (0, 0)], mode="constant")


def bit_numpy(images, w, block_units):
  """BiT ResNet-v2 forward pass in float64 NumPy from a dict of official arrays."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  x = _std_conv(_pad(images, 3), w["resnet/root_block/standardized_conv2d/kernel"], 2)
  x = _pad(x, 1)
  out = (x.shape[1] - 3) // 2 + 1
  x = np.max([x[:, i:i + 2 * out:2, j:j + 2 * out:2] for i in range(3) for j in range(3)],
             axis=0)
  for block, units in enumerate(block_units):
    for unit in range(units):
      p = "resnet/block%d/unit%02d/" % (block + 1, unit + 1)
      stride = 2 if block > 0 and unit == 0 else 1
      act = _group_norm_relu(x, w[p + "a/group_norm/gamma"], w[p + "a/group_norm/beta"])
      shortcut = x
      if p + "a/proj/standardized_conv2d/kernel" in w:
        shortcut = _std_conv(act, w[p + "a/proj/standardized_conv2d/kernel"], stride)
      y = _std_conv(act, w[p + "a/standardized_conv2d/kernel"])
      y = _group_norm_relu(y, w[p + "b/group_norm/gamma"], w[p + "b/group_norm/beta"])
      y = _std_conv(_pad(y, 1), w[p + "b/standardized_conv2d/kernel"], stride)
      y = _group_norm_relu(y, w[p + "c/group_norm/gamma"], w[p + "c/group_norm/beta"])
      x = shortcut + _std_conv(y, w[p + "c/standardized_conv2d/kernel"])
  x = _group_norm_relu(x, w["resnet/group_norm/gamma"], w["resnet/group_norm/beta"])
  x = x.mean((1, 2))
  kernel = w["resnet/head/conv2d/kernel"]
  return x @ kernel.reshape(kernel.shape[-2:]) + w["resnet/head/conv2d/bias"]


def save_npz(path, arrays):
  np.savez(str(path), **arrays)
  return str(path)


def graph_logits(build_logits, images, path, weights_filter):
  """Builds the network, warm-starts it from `path` through `weights_filter` (as a fresh
  Estimator run does), returns the logits for `images`."""
  with tf.Graph().as_default():
    inputs = tf.placeholder(tf.float32, images.shape)
    logits = build_logits(inputs)
    scaffold = pretrained.warm_start(path, tf.trainable_variables(), weights_filter)
    creator = tf.train.ChiefSessionCreator(scaffold=scaffold)
    with tf.train.MonitoredSession(session_creator=creator) as session:
      return session.run(logits, {inputs: images})


def random_images(batch, size, seed=1):
  return np.random.RandomState(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def vit_logits(path, config, num_classes, images, reset_head=False):
  return graph_logits(
      lambda x: vit_network.build(x, num_classes, False, {"network_config": config})[0],
      images, path, vit_weights.Filter(num_classes, reset_head))


def bit_logits(path, config, num_classes, images, reset_head=False):
  return graph_logits(
      lambda x: bit_network.build(x, num_classes, False, {"network_config": config})[0],
      images, path, bit_weights.Filter(num_classes, reset_head))


# ----------------------------------------------------------------------------------------
# Architecture sizes (graphs only: no values are allocated).

def count_parameters(build):
  with tf.Graph().as_default():
    build()
    return layers.count_trainable_parameters()


@pytest.mark.parametrize("variant,size,expected", [
    ("B/16", 224, 86567656), ("B/16", 384, 86859496), ("B/32", 224, 88224232)])
def test_vit_parameter_counts(variant, size, expected):
  images = lambda: tf.placeholder(tf.float32, [1, size, size, 3])
  assert count_parameters(lambda: vit_network.build(images(), 1000, False,
                                                    {"variant": variant})) == expected


def test_vit_variants_and_token_counts():
  assert list(vit_network.VARIANTS) == ["Ti/16", "S/16", "B/16", "B/32", "L/16", "L/32",
                                        "H/14"]
  assert vit_network.num_tokens(vit_network.get_config("B/16"), 384) == 577
  assert vit_network.num_tokens(vit_network.get_config("H/14"), 224) == 257
  with pytest.raises(ValueError, match="unknown ViT variant 'B/8'"):
    vit_network.get_config("B/8")


def test_bit_r50x1_parameter_counts():
  config = bit_network.get_config("R50x1")
  with tf.Graph().as_default():
    features = bit_network.backbone(tf.placeholder(tf.float32, [1, 224, 224, 3]), config)
    assert layers.count_trainable_parameters() == 23500352
    logits = bit_network.head(features, 5)
    assert layers.count_trainable_parameters() == 23510597
    assert logits.shape.as_list() == [1, 5]
    names = set(v.op.name for v in tf.trainable_variables())
  for key in ("resnet/root_block/standardized_conv2d/kernel",
              "resnet/block1/unit01/a/proj/standardized_conv2d/kernel",
              "resnet/block4/unit03/c/group_norm/gamma", "resnet/group_norm/beta",
              "resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"):
    assert key in names


def test_bit_width_must_suit_group_norm():
  with pytest.raises(ValueError, match="multiple of the 32 GroupNorm groups"):
    bit_network.root_width(bit_network.BiTConfig((1, 1, 1, 1), 0.25))


# ----------------------------------------------------------------------------------------
# Loading official .npz files.

def test_vit_npz_logits_match_numpy(tmp_path):
  arrays = vit_npz_arrays(TINY_VIT, 32, 5)
  path = save_npz(tmp_path / "vit.npz", arrays)
  images = random_images(2, 32)
  got = vit_logits(path, TINY_VIT, 5, images)
  want = vit_numpy(images.astype(np.float64), arrays, 2, 4, 8)
  assert np.abs(want).max() > 0.1, "a zero head would make the comparison vacuous"
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_vit_npz_at_new_resolution_interpolates_position_embeddings(tmp_path):
  arrays = vit_npz_arrays(TINY_VIT, 32, 5)  # 4x4 grid
  path = save_npz(tmp_path / "vit.npz", arrays)
  images = random_images(2, 48)  # 6x6 grid
  got = vit_logits(path, TINY_VIT, 5, images)
  resized = dict(arrays)
  posemb = arrays[vit_weights.POSITION_EMBEDDING]
  grid = scipy.ndimage.zoom(posemb[0, 1:].reshape(4, 4, -1), (1.5, 1.5, 1), order=1)
  resized[vit_weights.POSITION_EMBEDDING] = np.concatenate(
      [posemb[:, :1], grid.reshape(1, 36, -1)], axis=1)
  want = vit_numpy(images.astype(np.float64), resized, 2, 4, 8)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_vit_pre_logits_is_kept_when_the_model_has_it_and_dropped_otherwise(tmp_path):
  arrays = vit_npz_arrays(TINY_VIT, 32, 5, pre_logits=32)
  path = save_npz(tmp_path / "vit.npz", arrays)
  assert vit_weights.representation_size(path) == 32
  images = random_images(2, 32)
  with_pre_logits = TINY_VIT._replace(representation_size=32)
  np.testing.assert_allclose(vit_logits(path, with_pre_logits, 5, images),
                              vit_numpy(images.astype(np.float64), arrays, 2, 4, 8),
                              rtol=1e-4, atol=1e-4)
  # Without pre_logits in the model: dropped, and the head (D -> 5 here) still loads.
  without = {k: v for k, v in arrays.items() if not k.startswith("pre_logits/")}
  np.testing.assert_allclose(vit_logits(path, TINY_VIT, 5, images),
                             vit_numpy(images.astype(np.float64), without, 2, 4, 8),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scanned", [False, True])
def test_vit_big_vision_params_layout_loads_the_same(tmp_path, scanned):
  arrays = vit_npz_arrays(TINY_VIT, 32, 5)
  path = save_npz(tmp_path / "bv.npz", to_big_vision(arrays, scanned))
  images = random_images(2, 32)
  np.testing.assert_allclose(vit_logits(path, TINY_VIT, 5, images),
                             vit_numpy(images.astype(np.float64), arrays, 2, 4, 8),
                             rtol=1e-4, atol=1e-4)


def test_vit_head_is_replaced_for_a_new_class_count(tmp_path):
  path = save_npz(tmp_path / "vit.npz", vit_npz_arrays(TINY_VIT, 32, 10))
  logits = vit_logits(path, TINY_VIT, 3, random_images(2, 32))
  assert logits.shape == (2, 3) and not logits.any(), "the new head must start at zero"
  logits = vit_logits(path, TINY_VIT, 10, random_images(2, 32), reset_head=True)
  assert not logits.any()


@pytest.mark.parametrize("gn_shape_prefix", [(), (1, 1, 1)])
def test_bit_npz_logits_match_numpy(tmp_path, gn_shape_prefix):
  arrays = bit_npz_arrays(TINY_BIT, 5, gn_shape_prefix=gn_shape_prefix)
  path = save_npz(tmp_path / "bit.npz", arrays)
  images = random_images(2, 64)
  got = bit_logits(path, TINY_BIT, 5, images)
  want = bit_numpy(images.astype(np.float64), arrays, TINY_BIT.block_units)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bit_head_is_replaced_for_a_new_class_count(tmp_path):
  path = save_npz(tmp_path / "bit.npz", bit_npz_arrays(TINY_BIT, 21))
  logits = bit_logits(path, TINY_BIT, 5, random_images(1, 64))
  assert logits.shape == (1, 5) and not logits.any()


def _broken(arrays, missing, renamed_extra, reshaped):
  arrays = dict(arrays)
  del arrays[missing]
  arrays["bogus/" + renamed_extra] = arrays[renamed_extra]
  arrays[reshaped] = np.zeros(arrays[reshaped].shape[:-1] + (3,), np.float32)
  return arrays


def _build_variables(build):
  with tf.Graph().as_default():
    build()
    return tf.trainable_variables()


def test_vit_load_errors_list_all_problems_at_once(tmp_path):
  missing = "Transformer/encoderblock_1/LayerNorm_2/scale"
  reshaped = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
  arrays = _broken(vit_npz_arrays(TINY_VIT, 32, 5), missing, "cls", reshaped)
  path = save_npz(tmp_path / "bad.npz", arrays)
  with tf.Graph().as_default():
    vit_network.build(tf.placeholder(tf.float32, [1, 32, 32, 3]), 5, False, TINY_VIT_CONFIG)
    with pytest.raises(pretrained.WeightsMismatchError) as error:
      pretrained.plan(path, tf.trainable_variables(), vit_weights.Filter(5))
  assert error.value.missing == [missing]
  assert error.value.extra == ["bogus/cls"]
  assert [m[0] for m in error.value.mismatched] == [reshaped]
  message = str(error.value)
  for text in (path, missing, "bogus/cls", reshaped, "(32, 3) != model (32, 64)"):
    assert text in message


def test_vit_non_square_position_embedding_is_reported_as_mis_shaped(tmp_path):
  arrays = vit_npz_arrays(TINY_VIT, 32, 5)
  arrays[vit_weights.POSITION_EMBEDDING] = arrays[vit_weights.POSITION_EMBEDDING][:, :13]
  path = save_npz(tmp_path / "bad.npz", arrays)
  with tf.Graph().as_default():
    vit_network.build(tf.placeholder(tf.float32, [1, 32, 32, 3]), 5, False, TINY_VIT_CONFIG)
    with pytest.raises(pretrained.WeightsMismatchError, match="pos_embedding file"):
      pretrained.plan(path, tf.trainable_variables(), vit_weights.Filter(5))


def test_bit_load_errors_list_all_problems_at_once(tmp_path):
  missing = "resnet/block2/unit01/b/group_norm/beta"
  reshaped = "resnet/block3/unit01/c/standardized_conv2d/kernel"
  arrays = _broken(bit_npz_arrays(TINY_BIT, 5), missing, "resnet/group_norm/gamma",
                   reshaped)
  path = save_npz(tmp_path / "bad.npz", arrays)
  with tf.Graph().as_default():
    bit_network.build(tf.placeholder(tf.float32, [1, 64, 64, 3]), 5, False,
                      {"network_config": TINY_BIT})
    with pytest.raises(pretrained.WeightsMismatchError) as error:
      pretrained.plan(path, tf.trainable_variables(), bit_weights.Filter(5))
  assert (error.value.missing, error.value.extra) == (
      [missing], ["bogus/resnet/group_norm/gamma"])
  assert [m[0] for m in error.value.mismatched] == [reshaped]


class _CountingSession(object):
  def __init__(self, session):
    self.session, self.runs = session, 0

  def run(self, *args, **kwargs):
    self.runs += 1
    return self.session.run(*args, **kwargs)


@pytest.mark.parametrize("chunk_bytes,one_run_per_variable", [(None, False), (1, True)])
def test_weights_are_assigned_in_few_session_runs(tmp_path, monkeypatch, chunk_bytes,
                                                  one_run_per_variable):
  """Each distinct Session.run prunes the whole graph again: a per-variable assign made
  a 6-step Ti/16 run spend 100 s in loading; values go in 256 MB chunks instead."""
  if chunk_bytes:
    monkeypatch.setattr(pretrained, "ASSIGN_CHUNK_BYTES", chunk_bytes)
  path = save_npz(tmp_path / "vit.npz", vit_npz_arrays(TINY_VIT, 32, 5))
  with tf.Graph().as_default():
    vit_network.build(tf.placeholder(tf.float32, [1, 32, 32, 3]), 5, False, TINY_VIT_CONFIG)
    variables = tf.trainable_variables()
    scaffold = pretrained.warm_start(path, variables, vit_weights.Filter(5))
    scaffold.finalize()
    with tf.Session() as session:
      session.run(scaffold.init_op)
      counting = _CountingSession(session)
      scaffold.init_fn(counting)
      loaded = session.run(variables[0])
  assert counting.runs == (len(variables) if one_run_per_variable else 1)
  np.testing.assert_array_equal(loaded, np.load(path)[variables[0].op.name])


def test_vit_initialisers_are_the_official_ones():
  """Huawei's port used N(0, 0.06) position embeddings; the official init is N(0, 0.02),
  with a zero class token and a zero head."""
  config = TINY_VIT._replace(hidden_size=64, num_heads=4)
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    vit_network.build(tf.placeholder(tf.float32, [1, 128, 128, 3]), 5, False,
                      {"network_config": config})
    with tf.Session() as session:
      session.run(tf.global_variables_initializer())
      values = {v.op.name: session.run(v) for v in tf.trainable_variables()}
  assert values[vit_weights.POSITION_EMBEDDING].std() == pytest.approx(0.02, rel=0.05)
  assert not values["cls"].any() and not values["head/kernel"].any()


def test_not_an_npz_file_is_a_clear_error(tmp_path):
  path = tmp_path / "weights.npz"
  path.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    pretrained.read_shapes(str(path))
  with pytest.raises(ValueError, match="does not exist"):
    pretrained.read_shapes(str(tmp_path / "missing.npz"))


def test_position_embedding_interpolation_keeps_cls_and_constant_grid():
  rng = np.random.RandomState(0)
  cls = rng.normal(size=(1, 1, 8))
  constant = np.tile(rng.normal(size=(1, 1, 8)), (1, 16, 1))
  resized = vit_weights.interpolate_position_embedding(np.concatenate([cls, constant], 1),
                                                       37)
  assert resized.shape == (1, 37, 8)
  np.testing.assert_array_equal(resized[:, :1], cls)
  np.testing.assert_allclose(resized[0, 1:], np.repeat(constant[:, :1], 36, 1)[0], atol=1e-12)
  # A linear ramp stays a linear ramp between the same end values (bilinear zoom).
  ramp = np.linspace(0, 1, 4)[:, None, None] * np.ones((4, 4, 1))
  posemb = np.concatenate([cls[..., :1], ramp.reshape(1, 16, 1)], 1)
  grid = vit_weights.interpolate_position_embedding(posemb, 65)[0, 1:].reshape(8, 8)
  np.testing.assert_allclose(grid[:, 0], np.linspace(0, 1, 8), atol=1e-12)
  same = vit_weights.interpolate_position_embedding(posemb, 17)
  np.testing.assert_array_equal(same, posemb)
  with pytest.raises(ValueError, match="square"):
    vit_weights.interpolate_position_embedding(posemb, 11)


# ----------------------------------------------------------------------------------------
# Estimator: warm start from the .npz in a fresh model_dir, never over a checkpoint.

def synthetic_input_fn(size, num_classes, batch=2):
  def input_fn(params):
    del params
    images = tf.random.uniform([batch, size, size, 3], -1.0, 1.0)
    labels = tf.random.uniform([batch], 0, num_classes, dtype=tf.int32)
    return tf.data.Dataset.from_tensors(({"image": images}, labels)).repeat()
  return input_fn


def tiny_params(model, path, num_classes):
  params = dict(num_classes=num_classes, weights=path, reset_head=False, learning_rate=0.0,
                warmup_steps=0, train_steps=10, momentum=0.9, grad_clip_norm=1.0,
                loss_scale="none")
  if model == "vit":
    params.update(network_config=TINY_VIT)
  else:
    params.update(network_config=TINY_BIT, lr_boundaries=[5])
  return params


@pytest.mark.parametrize("model", ["vit", "bit"])
def test_estimator_warm_starts_fresh_model_dir_only(tmp_path, model, cpu_backend):
  del cpu_backend
  if model == "vit":
    make = lambda seed: vit_npz_arrays(TINY_VIT, 32, 5, seed=seed)
    model_fn, size, probe = vit_model_fn.model_fn, 32, "Transformer/encoder_norm/scale"
  else:
    make = lambda seed: bit_npz_arrays(TINY_BIT, 5, seed=seed)
    model_fn, size, probe = bit_model_fn.model_fn, 32, "resnet/group_norm/gamma"
  first, second = make(0), make(1)
  model_dir = str(tmp_path / "run")
  for arrays, steps in ((first, 1), (second, 2)):
    path = save_npz(tmp_path / "weights.npz", arrays)
    estimator = tf.estimator.Estimator(
        lambda features, labels, mode, params: model_fn(
            features, labels, mode, dict(params, batch_size=2)),
        model_dir=model_dir, params=tiny_params(model, path, 5))
    estimator.train(synthetic_input_fn(size, 5), max_steps=steps)
    # lr is 0: the checkpoint holds exactly what was loaded at the first start.
    np.testing.assert_array_equal(estimator.get_variable_value(probe), first[probe])
  assert estimator.get_variable_value("global_step") == 2
  metrics = estimator.evaluate(synthetic_input_fn(size, 5), steps=1)
  assert {"accuracy", "loss"} <= set(metrics)
  assert "top_5_accuracy" not in metrics, "always 100 % with 5 classes"


@pytest.mark.parametrize("model", ["vit", "bit"])
def test_npu_estimator_warm_starts_with_npu_dropout_and_loss_scaling(tmp_path, model,
                                                                     npu_double):
  """The NPU code path (npu_bridge test double): NPUEstimator, NPULossScaleOptimizer,
  npu_ops.dropout (ViT dropout on), .npz warm start through the Scaffold."""
  backend = backend_lib.activate(backend_lib.Backend("npu", npu_double))
  if model == "vit":
    arrays = vit_npz_arrays(TINY_VIT, 32, 5)
    model_fn, probe = vit_model_fn.model_fn, "Transformer/encoder_norm/scale"
  else:
    arrays = bit_npz_arrays(TINY_BIT, 5)
    model_fn, probe = bit_model_fn.model_fn, "resnet/group_norm/gamma"
  params = dict(tiny_params(model, save_npz(tmp_path / "w.npz", arrays), 5),
                loss_scale="dynamic")
  if model == "vit":
    params["network_config"] = TINY_VIT._replace(dropout_rate=0.1)
  run_options = run_config_lib.RunOptions(
      model_dir=str(tmp_path / "run"), save_checkpoints_steps=2, save_checkpoints_secs=None,
      keep_checkpoint_max=1, save_summary_steps=100, log_step_count_steps=100,
      tf_random_seed=1, intra_op_threads=0, inter_op_threads=0)
  config = run_config_lib.build_run_config(backend, run_options)
  # Named `params`: the Estimator would hand a model_fn's `config` argument its RunConfig.
  estimator = estimator_lib.create_estimator(
      lambda features, labels, mode, params: model_fn(features, labels, mode, params),
      config, params, train_batch_size=2, eval_batch_size=2, backend=backend)
  assert type(estimator).__name__ == "NPUEstimator"
  estimator.train(synthetic_input_fn(32, 5), max_steps=2)
  np.testing.assert_array_equal(estimator.get_variable_value(probe), arrays[probe])
  names = estimator.get_variable_names()
  assert any(name.startswith("loss_scale") for name in names), names


# ----------------------------------------------------------------------------------------
# Schedules and MixUp.

def _values(fn, steps):
  with tf.Graph().as_default():
    step = tf.placeholder(tf.int64, [])
    value = fn(step)
    with tf.Session() as session:
      return [session.run(value, {step: s}) for s in steps]


def test_vit_learning_rate_is_vit_jax_warmup_then_cosine():
  params = dict(learning_rate=0.03, warmup_steps=100, train_steps=500)
  got = _values(lambda s: vit_model_fn.learning_rate(s, params), [0, 50, 100, 300, 500, 600])
  np.testing.assert_allclose(got, [0.0, 0.015, 0.03, 0.015, 0.0, 0.0], atol=1e-7)


def test_bit_learning_rate_is_the_hyperrule_staircase():
  params = dict(learning_rate=0.003, warmup_steps=100, lr_boundaries=[200, 300, 400])
  got = _values(lambda s: bit_model_fn.learning_rate(s, params),
                [0, 50, 100, 200, 201, 301, 401])
  np.testing.assert_allclose(got, [0, 0.0015, 0.003, 0.003, 0.0003, 0.00003, 0.000003],
                             rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("model", ["vit", "bit"])
def test_learning_rate_summary_is_tagged_learning_rate(model, cpu_backend):
  del cpu_backend
  model_fn = {"vit": vit_model_fn, "bit": bit_model_fn}[model].model_fn
  with tf.Graph().as_default() as graph:
    features = {"image": tf.zeros([2, 32, 32, 3])}
    labels = tf.constant([0, 4])
    model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
             dict(tiny_params(model, None, 5), batch_size=2))
    assert "learning_rate" in conftest.scalar_summary_tags(graph)


def test_mixup_mixes_batch_with_its_reverse():
  with tf.Graph().as_default():
    images = tf.constant(np.arange(3 * 2 * 2 * 3, dtype=np.float32).reshape(3, 2, 2, 3))
    labels = tf.one_hot([0, 1, 2], 3)
    mixed, soft = transfer.mixup(images, labels, 0.1)
    with tf.Session() as session:
      mixed, soft, images = session.run([mixed, soft, images])
  weight = soft[0, 0]
  np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(mixed, weight * images + (1 - weight) * images[::-1], rtol=1e-5)


# ----------------------------------------------------------------------------------------
# Data: TFDS percent splits, tf_flowers layout from the real photos, CIFAR pickles.

def test_tfds_percent_split_arithmetic():
  assert tfds_layout.absolute_range("train[:85%]", 3670) == (0, 3120)  # 3119.5 -> 3120
  assert tfds_layout.absolute_range("train[85%:]", 3670) == (3120, 3670)
  assert tfds_layout.absolute_range("train[:85%]", 4317) == (0, 3669)
  assert tfds_layout.absolute_range("train[:98%]", 50000) == (0, 49000)
  assert tfds_layout.absolute_range("train[-10%:]", 4317) == (3885, 4317)
  assert tfds_layout.absolute_range("train[10:20]", 4317) == (10, 20)
  assert tfds_layout.absolute_range("test", 7) == (0, 7)
  for bad in ("train[:85]%", "train[1%:20]", "train[:150%]"):
    with pytest.raises(ValueError, match="split"):
      tfds_layout.absolute_range(bad, 100)


@pytest.fixture(scope="module")
def flowers_tfds(tmp_path_factory):
  root = conftest.data_root()
  if not os.path.isdir(os.path.join(root, FLOWERS)):
    pytest.skip("real flower photos not found under %s" % root)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tf_flowers.build_from_image_folder(os.path.join(root, FLOWERS), data_dir)
  return data_dir


def _read_all(dataset):
  with tf.Graph().as_default():
    element = tf.data.make_one_shot_iterator(dataset()).get_next()
    values = []
    with tf.Session() as session:
      while True:
        try:
          values.append(session.run(element))
        except tf.errors.OutOfRangeError:
          return values


def test_tf_flowers_layout_from_real_photos_reads_tfds_splits(flowers_tfds):
  version_dir = os.path.join(flowers_tfds, "tf_flowers", "3.0.1")
  assert sorted(os.listdir(version_dir)) == [
      "dataset_info.json", "features.json", "label.labels.txt",
      "tf_flowers-train.tfrecord-00000-of-00002", "tf_flowers-train.tfrecord-00001-of-00002"]
  with open(os.path.join(version_dir, "dataset_info.json")) as f:
    info = json.load(f)
  assert [int(n) for n in info["splits"][0]["shardLengths"]] == [2158, 2159]
  data = tf_flowers.dataset(flowers_tfds)
  assert data.class_names() == list(tf_flowers.CLASS_NAMES)
  train = _read_all(lambda: data.records(tf_flowers.TRAIN_SPLIT))
  validation = _read_all(lambda: data.records(tf_flowers.EVAL_SPLIT))
  assert (len(train), len(validation)) == (3669, 648)
  assert data.num_examples(tf_flowers.TRAIN_SPLIT) == 3669
  everything = _read_all(lambda: data.records("train"))
  assert train + validation == everything  # consecutive, disjoint by position (the photos
  # themselves include a few byte-identical duplicates)
  labels = [tf.train.Example.FromString(r).features.feature["label"].int64_list.value[0]
            for r in everything]
  want = {tf_flowers.CLASS_NAMES.index(tf_flowers.class_for_folder(k)): v
          for k, v in FLOWER_COUNTS.items()}
  assert {c: labels.count(c) for c in set(labels)} == want


@pytest.mark.parametrize("recipe", ["vit", "bit"])
def test_tf_flowers_input_fn_batches(flowers_tfds, recipe, cpu_backend):
  del cpu_backend
  source = finetune.make_source("tf_flowers", flowers_tfds)
  if recipe == "vit":
    train_fn, eval_fn = (lambda e: transfer.vit_train(e, 48)), (
        lambda e: transfer.vit_eval(e, 48))
  else:
    train_fn, eval_fn = (lambda e: transfer.bit_train(e, 64, 48)), (
        lambda e: transfer.bit_eval(e, 48))
  train = image_sources.build_input_fn(source, tf_flowers.TRAIN_SPLIT, True, train_fn,
                                       mixup_alpha=0.1, shuffle_buffer=64, seed=1)
  evaluation = image_sources.build_input_fn(source, tf_flowers.EVAL_SPLIT, False, eval_fn)
  with tf.Graph().as_default():
    features, labels = tf.data.make_one_shot_iterator(
        train({"batch_size": 8})).get_next()
    with tf.Session() as session:
      images, soft = session.run([features["image"], labels])
  # [-1, 1] as the official .npz weights expect (not the TF-Hub model's [0, 1]).
  assert images.shape == (8, 48, 48, 3) and -1 <= images.min() < -0.5 < images.max() <= 1
  assert soft.shape == (8, 5)
  np.testing.assert_allclose(soft.sum(1), 1, rtol=1e-5)
  batches = _read_all(lambda: evaluation({"batch_size": 100}))
  assert [len(b[1]) for b in batches] == [100] * 6 + [48]
  assert batches[0][0]["image"].shape == (100, 48, 48, 3)


def test_image_folder_source_reads_build_image_tfrecords_output(tmp_path, cpu_backend):
  """The ImageNet-format folder case reuses input_fns.imagenet: 1-based labels -> 0-based."""
  del cpu_backend
  from tools import build_image_tfrecords  # pylint: disable=g-import-not-at-top
  root = conftest.data_root()
  if not os.path.isdir(os.path.join(root, FLOWERS)):
    pytest.skip("real flower photos not found")
  photos = tmp_path / "photos"
  for name in sorted(FLOWER_COUNTS):
    (photos / name).mkdir(parents=True)
    for filename in sorted(os.listdir(os.path.join(root, FLOWERS, name)))[:6]:
      os.symlink(os.path.join(root, FLOWERS, name, filename), str(photos / name / filename))
  build_image_tfrecords.build_image_tfrecords(str(photos), str(tmp_path / "records"),
                                              validation_fraction=0.5, num_train_shards=2,
                                              num_validation_shards=1, progress_every=0)
  source = finetune.make_source("image_folder", str(tmp_path / "records"))
  assert (source.num_classes, source.class_names) == (5, sorted(FLOWER_COUNTS))
  assert source.num_examples("train") == 15 and source.num_examples("validation") == 15
  with pytest.raises(ValueError, match="only train, validation are available"):
    source.num_examples("train[:50%]")
  evaluation = image_sources.build_input_fn(source, "validation", False,
                                            lambda e: transfer.bit_eval(e, 16))
  batches = _read_all(lambda: evaluation({"batch_size": 15}))
  assert sorted(batches[0][1].tolist()) == sorted(list(range(5)) * 3)


def _cifar_pickle(path, content):
  with open(str(path), "wb") as f:
    pickle.dump(content, f, protocol=2)


def write_fake_cifar10(folder, per_batch=4, seed=0):
  """CIFAR-10 python pickles (the official dict content) with `per_batch` images each."""
  rng = np.random.RandomState(seed)
  folder.mkdir()
  batches = {}
  for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
    data = rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8)
    labels = [int(x) for x in rng.randint(0, 10, per_batch)]
    _cifar_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels,
                                  b"data": data,
                                  b"filenames": [b"f%d.png" % i for i in range(per_batch)]})
    batches[name] = (data, labels)
  _cifar_pickle(folder / "batches.meta", {
      b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                       b"frog", b"horse", b"ship", b"truck"],
      b"num_cases_per_batch": per_batch, b"num_vis": 3072})
  return batches


def test_cifar_pickles_convert_to_tfds_layout(tmp_path):
  batches = write_fake_cifar10(tmp_path / "cifar-10-batches-py")
  source = str(tmp_path / "cifar-10-batches-py")
  assert build_cifar_tfrecords.detect_variant(source) == "cifar10"
  build_cifar_tfrecords.convert(source, str(tmp_path / "tfds"), check_counts=False)
  data = cifar.dataset(str(tmp_path / "tfds"), "cifar10")
  assert data.class_names()[:2] == ["airplane", "automobile"]
  assert data.num_examples("train") == 20 and data.num_examples("test") == 4
  assert data.num_examples("train[:98%]") == 20  # round(19.6)
  records = _read_all(lambda: data.records("test"))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  data_batch, labels = batches["test_batch"]
  for record, row, label in zip(records, data_batch, labels):
    example = tf.train.Example.FromString(record).features.feature
    image = np.array(Image.open(io.BytesIO(example["image"].bytes_list.value[0])))
    np.testing.assert_array_equal(image, row.reshape(3, 32, 32).transpose(1, 2, 0))
    assert example["label"].int64_list.value[0] == label


class _Exploit(object):
  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_cifar_unpickler_refuses_anything_but_cifar_content(tmp_path):
  path = tmp_path / "data_batch_1"
  _cifar_pickle(path, {b"data": _Exploit()})
  with pytest.raises(ValueError, match="is not allowed in a CIFAR pickle"):
    build_cifar_tfrecords.load_pickle(str(path))
  _cifar_pickle(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
  with pytest.raises(ValueError, match=r"uint8 array \[N, 3072\]"):
    build_cifar_tfrecords.load_batch(str(path), b"labels", 10)
  _cifar_pickle(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
    build_cifar_tfrecords.load_batch(str(path), b"labels", 10)


# ----------------------------------------------------------------------------------------
# Registered models: flags -> recipe.

def parse(model_name, *argv):
  return run_loop.parse_flags(model_name, ["--model_dir=/tmp/unused"] + list(argv))


def configure(model_name, *argv):
  """(model, the run's Config) as the run loop works it out on the CPU, without the data
  checks that follow (run_loop.configure adds those and the flag ranges)."""
  model, flag_values = parse(model_name, *argv)
  return model, model.configure(flag_values,
                                run_loop.run_values(flag_values, backend_lib.Backend("cpu")))


def test_vit_recipe_defaults_and_overrides(flowers_tfds):
  model, config = configure("vit", "--data_dir=" + flowers_tfds)
  assert isinstance(model, registry.Model) and model.name == "vit"
  assert (config.variant, config.num_classes, config.image_size) == ("B/16", 5, 384)
  assert (config.learning_rate, config.warmup_steps, config.train_steps) == (0.03, 100, 500)
  assert (config.momentum, config.grad_clip_norm, config.representation_size) == (
      0.9, 1.0, None)
  assert (config.train_split, config.eval_split) == ("train[:85%]", "train[85%:]")
  assert config.class_names == list(tf_flowers.CLASS_NAMES)
  assert config.train_examples is None, "nothing asked for the count"
  _, config = configure("vit", "--data_dir=" + flowers_tfds, "--vit_model=Ti/16",
                        "--image_size=224", "--learning_rate=0.01", "--train_steps=50",
                        "--warmup_steps=5", "--grad_clip_norm=0", "--vit_dropout=0.1")
  assert (config.variant, config.image_size, config.learning_rate, config.train_steps,
          config.warmup_steps, config.grad_clip_norm, config.dropout_rate) == (
              "Ti/16", 224, 0.01, 50, 5, 0.0, 0.1)


def test_bit_recipe_hyperrule_and_keras_io(flowers_tfds):
  _, config = configure("bit", "--data_dir=" + flowers_tfds, "--train_batch_size=64")
  assert (config.resize_size, config.image_size) == (512, 480)
  assert (config.train_steps, config.warmup_steps, config.lr_boundaries,
          config.mixup_alpha) == (500, 100, [200, 300, 400], 0.0)
  assert config.learning_rate == pytest.approx(0.003 * 64 / 512)
  _, config = configure("bit", "--data_dir=" + flowers_tfds, "--train_batch_size=64",
                        "--num_train_examples=50000")
  assert (config.train_steps, config.warmup_steps, config.lr_boundaries,
          config.mixup_alpha) == (10000, 500, [3000, 6000, 9000], 0.1)
  _, config = configure("bit", "--data_dir=" + flowers_tfds, "--train_batch_size=64",
                        "--nohyperrule", "--mixup_alpha=0.2", "--lr_boundaries=10,20")
  assert (config.resize_size, config.image_size, config.train_steps, config.warmup_steps,
          config.lr_boundaries, config.mixup_alpha) == (384, 224, 4000, 0, [10, 20], 0.2)


def test_train_epochs_set_the_steps_of_vit_and_bit(flowers_tfds):
  examples = finetune.make_source("tf_flowers", flowers_tfds).num_examples(
      tf_flowers.TRAIN_SPLIT)
  for name in ("vit", "bit"):
    _, config = configure(name, "--data_dir=" + flowers_tfds, "--train_batch_size=64",
                          "--train_epochs=2")
    assert config.train_examples == examples
    assert config.train_steps == math.ceil(2 * examples / 64.0)


def test_the_hooks_read_the_recipe_from_the_config(flowers_tfds, cpu_backend):
  """input_fn, serving input and summary take what configure() worked out, and the
  evaluation keeps its last partial batch unless batch shapes must stay fixed (NPU)."""
  del cpu_backend
  model, config = configure("vit", "--data_dir=" + flowers_tfds, "--vit_model=Ti/16",
                            "--image_size=32")
  assert repr(config.source) == "TfdsSource(%r)" % os.path.join(flowers_tfds, "tf_flowers",
                                                                "3.0.1")
  for fixed, last_batch in ((False, 48), (True, 100)):
    evaluation = model.input_fn(config.replace(fixed_batch_shapes=fixed),
                                tf.estimator.ModeKeys.EVAL)
    assert [len(b[1]) for b in _read_all(lambda: evaluation({"batch_size": 100}))][-1] == (
        last_batch)
  with tf.Graph().as_default():
    receiver = model.serving_input_receiver_fn(config)()
    assert receiver.receiver_tensors["image"].shape.as_list() == [None, 32, 32, 3]
  summary = model.summarize({"accuracy": 0.5, "loss": 1.0, "global_step": 7}, config)
  assert summary == ("vit eval at global step 7: top-1 50.00% accuracy on tf_flowers "
                     "train[85%:], loss 1.0000 (cross-entropy)")


def test_bit_hyperrule_warmup_and_boundaries_scale_with_the_steps(flowers_tfds, caplog):
  for argv, expected in (
      (["--train_steps=1000"], (1000, 200, [400, 600, 800])),  # 20 %; 40/60/80 %
      (["--train_steps=2"], (2, 0, [1, 1, 2])),
      (["--train_steps=1000", "--warmup_steps=10", "--lr_boundaries=100,200"],
       (1000, 10, [100, 200])),
      (["--train_steps=1000", "--nohyperrule"], (1000, 0, [200, 300, 400]))):
    # The batch is explicit: models run earlier in this process changed the global default.
    model, flag_values = parse("bit", "--data_dir=" + flowers_tfds, "--train_batch_size=64",
                               *argv)
    caplog.set_level(logging.INFO, logger="absl")  # after parsing: --verbosity resets it
    config = run_loop.configure(model, flag_values, backend_lib.Backend("cpu"))
    assert (config.train_steps, config.warmup_steps, config.lr_boundaries) == expected
  logged = [r.getMessage() for r in caplog.records if "BiT schedule" in r.getMessage()]
  assert len(logged) == 4 and logged[0].startswith(
      "BiT schedule: 1000 steps, linear warm-up over 200, lr 0.000375 / 10 after steps 400, "
      "600, 800 (BiT-HyperRule: 500 steps, warm-up 100, boundaries 200/300/400"), logged[0]


def test_bit_takes_the_tf2_seed_flag_names_to_the_npu_run_config(flowers_tfds, tmp_path,
                                                                  npu_double):
  mixlist = tmp_path / "ops_info.json"
  mixlist.write_text('{"white-list": {"to-add": ["ReduceMeanD"]}}')
  fusion = tmp_path / "fusion_switch.cfg"
  fusion.write_text('{"Switch": {"GraphFusion": {"ALL": "off"}}}')
  model, flag_values = parse(
      "bit", "--data_dir=" + flowers_tfds, "--batch_size=32", "--epochs=1", "--log_steps=5",
      "--precision_mode=allow_mix_precision", "--use_mixlist=True",
      "--mixlist_file=%s" % mixlist, "--fusion_off_flag=True", "--fusion_off_file=%s" % fusion,
      "--over_dump=True", "--over_dump_path=%s" % tmp_path, "--profiling=True",
      "--profiling_dump_path=/tmp/prof")
  backend = backend_lib.activate(backend_lib.select_backend("npu"))
  bit_config = model.configure(flag_values, run_loop.run_values(flag_values, backend))
  assert (bit_config.train_batch_size, bit_config.log_step_count_steps) == (32, 5)
  assert bit_config.train_steps == math.ceil(bit_config.train_examples / 32.0)
  assert bit_config.fixed_batch_shapes, "the NPU keeps batch shapes static"
  options = run_loop.npu_options(flag_values)
  validation.check_npu_options(options)
  config = run_config_lib.build_run_config(backend, run_loop.run_options(flag_values), options)
  assert config._modify_mixlist == str(mixlist) and config._fusion_switch_file == str(fusion)
  assert (config._dump_config._enable_dump_debug, config._dump_config._dump_path) == (
      True, str(tmp_path))
  profiling = json.loads(config._profiling_config._profiling_options)
  assert profiling == dict(run_loop.SEED_PROFILING_OPTIONS, output="/tmp/prof")
  model, flag_values = parse("bit", "--data_dir=" + flowers_tfds, "--use_mixlist=True",
                             "--mixlist_file=a.json", "--modify_mixlist=b.json")
  with pytest.raises(validation.ConfigError, match=r"^--use_mixlist with --mixlist_file=a.json "
                     r"and --modify_mixlist=b.json disagree; give one$"):
    run_loop.npu_options(flag_values)


@pytest.mark.parametrize("model_name,argv,message", [
    ("vit", ["--image_size=8"], "--image_size=8 is smaller than the B/16 patch size 16"),
    ("vit", ["--warmup_steps=600"], "--warmup_steps=600 must be smaller"),
    ("vit", ["--vit_dropout=1.5"], "--vit_dropout=1.5 must lie in [0, 1)"),
    ("bit", ["--resize_size=100", "--image_size=128"], "--resize_size=100 is smaller"),
    ("bit", ["--lr_boundaries=30,20"], "--lr_boundaries=30,20 must be positive and incr"),
    ("bit", ["--lr_boundaries=10,x"], "--lr_boundaries=10,x must be integers"),
    ("bit", ["--learning_rate=-1"], "--learning_rate=-1"),
    ("bit", ["--shuffle_buffer=0"], "--shuffle_buffer=0 must be > 0"),
    ("bit", ["--dataset=cifar10"], "no prepared TFDS dataset cifar10"),
])
def test_bad_flags_name_the_flag(flowers_tfds, model_name, argv, message):
  model, flag_values = parse(model_name, "--data_dir=" + flowers_tfds, *argv)
  with pytest.raises(validation.ConfigError) as error:
    run_loop.configure(model, flag_values, backend_lib.Backend("cpu"))
  assert message in str(error.value)


def test_weights_that_do_not_fit_fail_before_the_graph(flowers_tfds, tmp_path):
  arrays = vit_npz_arrays(TINY_VIT, 32, 5)
  path = save_npz(tmp_path / "tiny.npz", arrays)
  model, config = configure("vit", "--data_dir=" + flowers_tfds, "--vit_model=Ti/16",
                            "--image_size=32", "--weights=" + path)
  with pytest.raises(pretrained.WeightsMismatchError) as error:
    model.check_inputs(config)
  assert "embedding/kernel file (8, 8, 3, 32) != model (16, 16, 3, 192)" in str(error.value)
  assert "Transformer/encoderblock_11/" in str(error.value)  # missing blocks listed too


# ----------------------------------------------------------------------------------------
# Weights files are checked whole (dtype, shape, values) before the run builds its graph.

def tiny_arrays(model_name):
  if model_name == "vit":
    return vit_npz_arrays(TINY_VIT, 32, DIGITS_CLASSES)
  return bit_npz_arrays(TINY_BIT, DIGITS_CLASSES)


def check_before_the_graph(model_name, weights_path, data_dir, monkeypatch):
  """run_loop.configure (configure() + check_inputs, before any graph), with the tiny
  network (through config["network_config"])."""
  model, flag_values = parse(model_name, "--dataset=image_folder", "--data_dir=" + data_dir,
                             "--image_size=32", "--weights=" + weights_path)
  recipe = model.recipe
  tiny = TINY_VIT if model_name == "vit" else TINY_BIT
  monkeypatch.setattr(model, "recipe", lambda values, config: recipe(values, config).replace(
      network_config=tiny))
  run_loop.configure(model, flag_values, backend_lib.Backend("cpu"))


def _one_bad_value(value):
  def spoil(array):
    array = array.copy()
    array.flat[array.size // 2] = value
    return array
  return spoil


NOT_NUMERIC = "has dtype %s, expected a float or integer array"
SPOILERS = {  # problem: (array -> spoiled array, end of the error message)
    "object": (lambda a: np.full(a.shape, None, object), NOT_NUMERIC % "object"),
    "complex": (lambda a: a.astype(np.complex64), NOT_NUMERIC % "complex64"),
    "string": (lambda a: np.full(a.shape, "1.0"), NOT_NUMERIC % "<U3"),
    "nan": (_one_bad_value(np.nan), "holds NaN/inf"),
    "inf": (_one_bad_value(-np.inf), "holds NaN/inf"),
}


@pytest.mark.parametrize("model_name,problem,key", [
    ("vit", "object", "head/kernel"),
    ("bit", "object", "resnet/head/conv2d/kernel"),
    ("vit", "complex", "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"),
    ("bit", "string", "resnet/block2/unit01/a/group_norm/beta"),
    ("vit", "nan", "Transformer/encoder_norm/scale"),
    ("bit", "nan", "resnet/block4/unit01/c/standardized_conv2d/kernel"),
    ("vit", "inf", "embedding/kernel"),
    ("bit", "inf", "resnet/group_norm/gamma"),
])
def test_bad_weights_stop_the_run_before_the_graph(digits_dir, tmp_path, monkeypatch,
                                                   model_name, problem, key):
  arrays = tiny_arrays(model_name)
  spoil, expected = SPOILERS[problem]
  arrays[key] = spoil(arrays[key])
  path = save_npz(tmp_path / "weights.npz", arrays)
  with pytest.raises(ValueError) as error:  # what run_loop.run turns into "error: ..."
    check_before_the_graph(model_name, path, digits_dir, monkeypatch)
  assert str(error.value) == "weights file %s: key %s %s" % (path, key, expected)


def test_damaged_array_in_the_npz_is_named_before_the_graph(digits_dir, tmp_path,
                                                            monkeypatch):
  key = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
  arrays = tiny_arrays("vit")
  arrays[key] = np.full_like(arrays[key], 0.375)
  npz = tmp_path / "weights.npz"
  path = save_npz(npz, arrays)
  raw = bytearray(npz.read_bytes())
  raw[raw.index(arrays[key].tobytes()) + 100] ^= 0xFF  # its zip CRC now fails
  npz.write_bytes(bytes(raw))
  with pytest.raises(ValueError) as error:
    check_before_the_graph("vit", path, digits_dir, monkeypatch)
  assert str(error.value).startswith("weights file %s: key %s cannot be read: " % (path, key))


def test_entry_point_refuses_nan_weights_in_one_line_and_writes_no_checkpoint(digits_dir,
                                                                             tmp_path):
  model_dir = tmp_path / "model"
  key = "Transformer/encoder_norm/scale"
  arrays = vit_npz_arrays(vit_network.get_config("Ti/16"), 32, DIGITS_CLASSES)
  arrays[key] = _one_bad_value(np.nan)(arrays[key])
  path = save_npz(tmp_path / "ViT-Ti_16.npz", arrays)
  proc = subprocess.run(
      [sys.executable, "vit.py", "--dataset=image_folder", "--data_dir=" + digits_dir,
       "--vit_model=Ti/16", "--image_size=32", "--weights=" + path, "--mode=train",
       "--train_steps=1", "--warmup_steps=0", "--train_batch_size=2",
       "--model_dir=%s" % model_dir],
      cwd=conftest.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
  stderr = proc.stderr.decode("utf-8", "replace")
  assert proc.returncode != 0
  assert "Traceback" not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
      "error: weights file %s: key %s holds NaN/inf" % (path, key)), stderr[-3000:]
  assert not tf.train.latest_checkpoint(str(model_dir))


# ----------------------------------------------------------------------------------------
# Real data end to end through the run loop (tiny resolution, few steps).

@pytest.mark.slow
@pytest.mark.parametrize("model_name,variant_flag,arrays", [
    ("vit", "--vit_model=Ti/16",
     lambda: vit_npz_arrays(vit_network.get_config("Ti/16"), 224, 1000)),
    ("bit", "--bit_model=R50x1",
     lambda: bit_npz_arrays(bit_network.get_config("R50x1"), 1000)),
])
def test_run_loop_fine_tunes_from_npz_on_real_flowers(tmp_path, model_name, variant_flag,
                                                      arrays, cpu_backend):
  del cpu_backend
  root = conftest.data_root()
  if not os.path.isdir(os.path.join(root, FLOWERS)):
    pytest.skip("real flower photos not found")
  data_dir = str(tmp_path / "tfds")
  tf_flowers.build_from_image_folder(os.path.join(root, FLOWERS), data_dir,
                                     max_per_class=40)
  weights_path = save_npz(tmp_path / "pretrained.npz", arrays())
  argv = ["--model_dir=" + str(tmp_path / "run"), "--data_dir=" + data_dir, variant_flag,
          "--weights=" + weights_path, "--mode=train_and_eval", "--train_steps=6",
          "--train_batch_size=4", "--eval_batch_size=25", "--image_size=32",
          "--warmup_steps=2", "--learning_rate=0.001", "--log_step_count_steps=2",
          "--save_checkpoints_steps=6", "--export_dir=" + str(tmp_path / "export")]
  if model_name == "bit":
    argv.append("--resize_size=40")
  metrics = run_loop.prepare(model_name, argv).run()
  assert metrics["global_step"] == 6
  assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
  assert "top_5_accuracy" not in metrics, "always 100 % with 5 classes"
  assert metrics["headline_metric"] == "accuracy"
  assert os.listdir(str(tmp_path / "export")), "no SavedModel exported"
