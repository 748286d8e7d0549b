"""Safe loading of `bvlc_alexnet.npy` (caffe-tensorflow export) and of its .npz conversion.

The .npy holds a pickled dict {layer: [weights, biases]} (a 0-d object array). MASF opens it
with `np.load(allow_pickle=True)`, which runs whatever the pickle says. Here the pickle is
read by an unpickler that resolves only the globals `np.save` needs for an object array of
dicts, lists and numeric arrays (numpy's `_reconstruct`, `ndarray` and `dtype`); any other
global (e.g. `os.system`, `builtins.eval`) is refused before it is called.

The converted .npz (tools/convert_alexnet_npy.py) stores `<layer>/weights` and
`<layer>/biases` and is read with allow_pickle=False.

Both formats are seen through those keys as sources of estimators.pretrained, which checks
them (dtype, shapes against the network's variables, finiteness) and loads them: `check`
runs every check before the run builds its graph, `scaffold` loads in the model_fn.
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
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
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


class PickledSource(object):
  """bvlc_alexnet.npy seen as a pretrained source keyed `<layer>/weights|biases` (the keys
  of its .npz conversion). A pickle can only be read whole, so the arrays are kept."""

  def __init__(self, path):
    self.path = path
    stored = _read_npy_object(path)
    if not isinstance(stored, dict):
      raise pretrained.WeightsError("weights file %s holds a %s, expected a dict "
                                    "{layer: [weights, biases]}" % (path, type(stored).__name__))
    self.arrays = {}
    for stored_key, value in stored.items():
      layer = _as_str(stored_key)
      weights, biases = _split_weights_biases(path, layer, value)
      self.arrays[network.weight_key(layer, "weights")] = weights
      self.arrays[network.weight_key(layer, "biases")] = biases
    for key, array in sorted(self.arrays.items()):
      pretrained.check_dtype(path, key, array.dtype)
    self.shapes = {key: array.shape for key, array in self.arrays.items()}

  def read(self, keys):
    for key in keys:
      yield key, self.arrays[key]

  def check_values(self):
    for key, array in sorted(self.arrays.items()):
      pretrained.check_finite(self.path, key, array)


def open_source(path):
  """The .npz (headers read) or .npy (unpickled, restricted) at `path` as a source."""
  if path.endswith(".npz"):
    return pretrained.NpzSource.identity(path, pretrained.read_shapes(path))
  if not tf.io.gfile.exists(path):
    raise pretrained.WeightsError("weights file %s does not exist" % path)
  return PickledSource(path)


def plan(path, variables):
  """(source, entries) loading `path` into the AlexNet `variables` (model/<layer>/...) but
  SKIP_LAYERS; raises one WeightsMismatchError listing every key that does not fit."""
  source = open_source(path)
  by_key = {pretrained.variable_name(v, network.MODEL_SCOPE): v for v in variables}
  entries = [pretrained.Entry(variable, key) for key, variable in sorted(by_key.items())
             if layer_of(key) not in SKIP_LAYERS]
  extra = sorted(key for key in source.shapes
                 if key not in by_key and layer_of(key) not in SKIP_LAYERS)
  pretrained.check(source, entries, extra)
  return source, entries


def check(path, image_size, fc_units):
  """Every check of the file (pickle allow-list, layer structure, dtype, shapes against
  AlexNet at `image_size` / `fc_units`, finiteness) before the run builds its graph: the
  variables are made in a throwaway graph (no values). fc8 is not loaded, so the class
  count does not matter. Returns the source."""
  with tf.Graph().as_default():
    variables = network.construct_weights(image_size, fc_units=fc_units).values()
    source, _ = plan(path, variables)
  source.check_values()
  return source


def scaffold(path, variables):
  """A Scaffold that initialises conv1..fc7 from `path` when model_dir has no checkpoint."""
  source, entries = plan(path, variables)
  return pretrained.scaffold(source, entries)


def save_npz(path, source):
  """Writes every array of `source` under its key (`<layer>/weights`, ...); no pickle."""
  np.savez(path, **dict(source.read(sorted(source.shapes))))
