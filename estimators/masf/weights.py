"""MASF's filter for estimators.pretrained: `bvlc_alexnet.npy` (caffe-tensorflow export) and
its .npz conversion, keyed `<layer>/weights|biases`, into model/<layer>/{weights,biases}.

The .npy holds a pickled dict {layer: [weights, biases]} (a 0-d object array). MASF opens it
with `np.load(allow_pickle=True)`, which runs whatever the pickle says. Here the pickle is
read by an unpickler that resolves only the globals `np.save` needs for an object array of
dicts, lists and numeric arrays (numpy's `_reconstruct`, `ndarray` and `dtype`); any other
global (e.g. `os.system`, `builtins.eval`) is refused before it is called.

The converted .npz (tools/convert_alexnet_npy.py) stores `<layer>/weights` and
`<layer>/biases` and is read with allow_pickle=False.

conv1..fc7 are loaded; fc8 (ImageNet's 1,000 classes) and the metric net start from
scratch. Checking (dtype, shapes against the network's variables, finiteness) and loading
are estimators.pretrained's: `check` runs every check before the run builds its graph, the
model_fn warm-starts with `pretrained.warm_start(path, variables, FILTER)`.
"""
import pickle

import numpy as np
import tensorflow.compat.v1 as tf

from estimators import pretrained
from estimators.masf import network

SKIP_LAYERS = ("fc8",)  # trained from scratch for the 7 PACS classes (masf_func.SKIP_LAYER)


class UnsafePickleError(pretrained.WeightsError):
  """The pickle asked for a global outside the allow-list."""


def _allowed_globals():
  reconstruct = np.ndarray(0).__reduce__()[0]  # numpy's _reconstruct, whatever its module
  allowed = {}
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(module, "_reconstruct")] = reconstruct
  allowed[("numpy", "ndarray")] = np.ndarray
  allowed[("numpy", "dtype")] = np.dtype
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler whose only reachable globals are numpy's array reconstruction helpers."""

  def __init__(self, fileobj, path):
    pickle.Unpickler.__init__(self, fileobj, encoding="latin1")  # Python-2 str -> str
    self._path = path
    self._allowed = _allowed_globals()

  def find_class(self, module, name):
    key = (module, name)
    if key in self._allowed:
      return self._allowed[key]
    raise UnsafePickleError(
        "weights file %s: refusing to unpickle global %s.%s; only dicts, lists and numpy "
        "arrays (numpy _reconstruct/ndarray/dtype) are allowed" % (self._path, module, name))


def _read_npy_object(path):
  """The object stored in an .npy; object arrays go through the restricted unpickler."""
  with tf.io.gfile.GFile(path, "rb") as f:
    try:
      shape, dtype = pretrained.read_npy_header(f)
    except ValueError as e:
      raise pretrained.WeightsError("weights file %s is not a .npy file (%s)" % (path, e))
    if not dtype.hasobject:
      raise pretrained.WeightsError(
          "weights file %s holds a plain %s array of shape %s, expected a pickled dict "
          "{layer: [weights, biases]}" % (path, dtype, shape))
    try:
      array = _RestrictedUnpickler(f, path).load()
    except UnsafePickleError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (corrupt pickle of any kind)
      raise pretrained.WeightsError("weights file %s: cannot unpickle (%s: %s)"
                                    % (path, type(e).__name__, e))
  if isinstance(array, np.ndarray) and array.dtype.hasobject and array.shape == ():
    return array.item()
  return array


def _as_str(key):
  return key.decode("latin1") if isinstance(key, bytes) else str(key)


def layer_of(key):
  """`conv1/weights` -> `conv1`."""
  return key.split("/")[0]


def _split_weights_biases(path, layer, value):
  """[weights, biases] (either order, by ndim as masf_func does) -> (weights, biases)."""
  if not isinstance(value, (list, tuple)) or len(value) != 2:
    raise pretrained.WeightsError("weights file %s: layer %s should be [weights, biases], "
                                  "got %s" % (path, layer, type(value).__name__))
  for item in value:
    if not isinstance(item, np.ndarray):
      raise pretrained.WeightsError("weights file %s: layer %s holds a %s, expected arrays"
                                    % (path, layer, type(item).__name__))
  weights = [a for a in value if a.ndim > 1]
  biases = [a for a in value if a.ndim == 1]
  if len(weights) != 1 or len(biases) != 1:
    raise pretrained.WeightsError(
        "weights file %s: layer %s should hold one kernel (ndim > 1) and one bias vector, "
        "got shapes %s" % (path, layer, [a.shape for a in value]))
  return weights[0], biases[0]


def read_pickled(path):
  """bvlc_alexnet.npy as {`<layer>/weights|biases`: array} (the keys of its .npz)."""
  stored = _read_npy_object(path)
  if not isinstance(stored, dict):
    raise pretrained.WeightsError("weights file %s holds a %s, expected a dict "
                                  "{layer: [weights, biases]}" % (path, type(stored).__name__))
  arrays = {}
  for stored_key, value in stored.items():
    layer = _as_str(stored_key)
    weights, biases = _split_weights_biases(path, layer, value)
    arrays[network.weight_key(layer, "weights")] = weights
    arrays[network.weight_key(layer, "biases")] = biases
  return arrays


class AlexNetFilter(pretrained.Filter):
  """bvlc_alexnet.npy or its .npz into the AlexNet variables (model/<layer>/...) but
  SKIP_LAYERS."""

  def open_source(self, path):
    if path.endswith(".npz"):
      return pretrained.Filter.open_source(self, path)
    if not tf.io.gfile.exists(path):
      raise pretrained.WeightsError("weights file %s does not exist" % path)
    return pretrained.ArraySource(path, read_pickled(path))

  def select(self, source, variables):
    by_key = {pretrained.variable_name(v, network.MODEL_SCOPE): v for v in variables}
    entries = [pretrained.Entry(variable, key) for key, variable in sorted(by_key.items())
               if layer_of(key) not in SKIP_LAYERS]
    extra_keys = sorted(key for key in source.shapes
                        if key not in by_key and layer_of(key) not in SKIP_LAYERS)
    return entries, extra_keys


FILTER = AlexNetFilter()


def check(path, image_size, fc_units):
  """Every check of the file (pickle allow-list, layer structure, dtype, shapes against
  AlexNet at `image_size` / `fc_units`, finiteness) before the run builds its graph. fc8
  is not loaded, so the class count does not matter. Returns the source."""
  return pretrained.check_file(
      path, lambda: network.construct_weights(image_size, fc_units=fc_units).values(), FILTER)


def save_npz(path, source):
  """Writes every array of `source` under its key (`<layer>/weights`, ...); no pickle."""
  np.savez(path, **dict(source.read(sorted(source.shapes))))
