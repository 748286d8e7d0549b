"""Official ViT `.npz` weights -> the variables of estimators.vit.network.

Layouts read:
- the vit_jax export: flat Flax keys (`embedding/kernel`,
  `Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`, ...), also
  under an `opt/target/` prefix (older files saved with the optimizer state);
- the big_vision export under `params/`: `pos_embedding` at the top,
  blocks numbered `LayerNorm_0/1`, `MultiHeadDotProductAttention_0`, `MlpBlock_0`, and
  optionally one layer-stacked `Transformer/encoderblock/` ("scanned") subtree.

`Filter(num_classes, reset_head)` is this format's filter for estimators.pretrained, with
the fine-tuning adaptations of vit_jax `checkpoint.load_pretrained`:
- the position embeddings are resized to the model's grid (class token kept, the grid
  zoomed bilinearly as `scipy.ndimage.zoom(order=1)`);
- the head is replaced (kept at its zero init) when the class count differs or
  `reset_head` is set;
- `pre_logits` is loaded when the model has it and dropped when it has not.
"""
import re

import numpy as np
import scipy.ndimage
import tensorflow.compat.v1 as tf

from estimators import pretrained

POSITION_EMBEDDING = "Transformer/posembed_input/pos_embedding"
_BIG_VISION_BLOCK_RENAMES = {
    "LayerNorm_0": "LayerNorm_0",
    "LayerNorm_1": "LayerNorm_2",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "MlpBlock_0": "MlpBlock_3",
}


def _is_square(n):
  root = int(round(np.sqrt(n)))
  return n > 0 and root * root == n


def interpolate_position_embedding(posemb, num_tokens):
  """(1, 1 + g*g, D) -> (1, num_tokens, D): keeps the class token, zooms the g x g grid."""
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError("position embedding must be (1, tokens, D), got %s" % (posemb.shape,))
  token, grid = posemb[:, :1], posemb[0, 1:]
  if not (_is_square(len(grid)) and _is_square(num_tokens - 1)):
    raise ValueError("position embedding grids must be square: %d -> %d patches"
                     % (len(grid), num_tokens - 1))
  old = int(round(np.sqrt(len(grid))))
  new = int(round(np.sqrt(num_tokens - 1)))
  if new != old:
    grid = grid.reshape(old, old, -1)
    grid = scipy.ndimage.zoom(grid, (new / float(old), new / float(old), 1), order=1)
  return np.concatenate([token, grid.reshape(1, new * new, -1)], axis=1)


class _ResizePositionEmbedding(object):

  def __init__(self, num_tokens):
    self.num_tokens = num_tokens

  def output_shape(self, shape):
    """The resized shape, or `shape` itself when it cannot be resized (-> mismatch)."""
    if len(shape) != 3 or shape[0] != 1 or shape[1] == self.num_tokens:
      return shape
    if _is_square(shape[1] - 1) and _is_square(self.num_tokens - 1):
      return (1, self.num_tokens, shape[2])
    return shape

  def __call__(self, array):
    if array.shape[1] == self.num_tokens:
      return array
    tf.logging.info("Resizing position embeddings %s -> %d tokens", array.shape,
                    self.num_tokens)
    return interpolate_position_embedding(array, self.num_tokens)


def _canonical_locations(file_shapes):
  """{canonical key: (file key, stacked index or None)} for every known layout."""
  keys = list(file_shapes)
  for prefix in ("params/", "opt/target/"):
    if keys and all(k.startswith(prefix) for k in keys):
      keys = [k[len(prefix):] for k in keys]
      break
  else:
    prefix = ""
  big_vision = "pos_embedding" in keys
  locations = {}
  for key in keys:
    file_key = prefix + key
    if not big_vision:
      locations[key] = (file_key, None)
      continue
    if key == "pos_embedding":
      locations[POSITION_EMBEDDING] = (file_key, None)
      continue
    stacked = re.match(r"Transformer/encoderblock/([^/]+)/(.*)$", key)
    numbered = re.match(r"Transformer/encoderblock_(\d+)/([^/]+)/(.*)$", key)
    if stacked:
      module, rest = stacked.groups()
      module = _BIG_VISION_BLOCK_RENAMES.get(module, module)
      for index in range(file_shapes[file_key][0]):
        locations["Transformer/encoderblock_%d/%s/%s" % (index, module, rest)] = (
            file_key, index)
    elif numbered:
      index, module, rest = numbered.groups()
      module = _BIG_VISION_BLOCK_RENAMES.get(module, module)
      locations["Transformer/encoderblock_%s/%s/%s" % (index, module, rest)] = (
          file_key, None)
    else:
      locations[key] = (file_key, None)
  return locations


class Filter(pretrained.ClassifierFilter):
  """ViT's filter: the layouts above read under canonical (vit_jax) key names, the
  position embeddings resized to the model's grid, `pre_logits` dropped when the model
  has none; the head as `pretrained.ClassifierFilter` does."""

  head_prefix = "head/"
  head_kernel = "head/kernel"

  @staticmethod
  def open_source(path):
    """The .npz at `path` seen with canonical key names; reads headers only."""
    file_shapes = pretrained.read_shapes(path)
    return pretrained.NpzSource(path, _canonical_locations(file_shapes), file_shapes)

  def transform(self, key, variable):
    if key == POSITION_EMBEDDING:
      return _ResizePositionEmbedding(variable.shape.as_list()[1])
    return None

  def dropped(self, source, by_key):
    pre_logits = set(key for key in source.shapes
                     if key.startswith("pre_logits/") and key not in by_key)
    if pre_logits:
      tf.logging.info("Dropping pre_logits of %s: the model has no representation layer",
                      source.path)
    return pre_logits


def representation_size(path):
  """Width of the file's pre_logits layer, or None when the file has none."""
  shapes = Filter.open_source(path).shapes
  return shapes["pre_logits/kernel"][-1] if "pre_logits/kernel" in shapes else None
