"""Safe loading of `bvlc_alexnet.npy` (caffe-tensorflow export) and of its .npz conversion.

The .npy holds a pickled dict {layer: [weights, biases]} (a 0-d object array). MASF opens it
with `np.load(allow_pickle=True)`, which runs whatever the pickle says. Here the pickle is
read by an unpickler that resolves only the globals `np.save` needs for an object array of
dicts, lists and numeric arrays (numpy's `_reconstruct`, `ndarray` and `dtype`); any other
global (e.g. `os.system`, `builtins.eval`) is refused before it is called.

The converted .npz (tools/convert_alexnet_npy.py) stores `<layer>/weights` and
`<layer>/biases` and is read with allow_pickle=False.
"""
import collections
import os
import pickle

import numpy as np

from estimators.masf import network

SKIP_LAYERS = ("fc8",)  # trained from scratch for the 7 PACS classes (masf_func.SKIP_LAYER)


class WeightsError(ValueError):
  """The weights file is unreadable or does not fit the network."""


class UnsafePickleError(WeightsError):
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
        "%s: refusing to unpickle global %s.%s; only dicts, lists and numpy arrays "
        "(numpy _reconstruct/ndarray/dtype) are allowed" % (self._path, module, name))


def _read_npy_object(path):
  """The object stored in an .npy; object arrays go through the restricted unpickler."""
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
      raise WeightsError("%s is not a .npy file (%s)" % (path, e))
    if not dtype.hasobject:
      raise WeightsError("%s holds a plain %s array of shape %s, expected a pickled dict "
                         "{layer: [weights, biases]}" % (path, dtype, shape))
    del fortran_order
    try:
      array = _RestrictedUnpickler(f, path).load()
    except UnsafePickleError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (corrupt pickle of any kind)
      raise WeightsError("%s: cannot unpickle (%s: %s)" % (path, type(e).__name__, e))
  if isinstance(array, np.ndarray) and array.dtype.hasobject and array.shape == ():
    return array.item()
  return array


def _as_str(key):
  return key.decode("latin1") if isinstance(key, bytes) else str(key)


def _split_weights_biases(path, layer, value):
  """[weights, biases] (either order, by ndim as masf_func does) -> (weights, biases)."""
  if not isinstance(value, (list, tuple)) or len(value) != 2:
    raise WeightsError("%s: layer %s should be [weights, biases], got %s"
                       % (path, layer, type(value).__name__))
  arrays = []
  for item in value:
    if not isinstance(item, np.ndarray) or item.dtype.kind != "f":
      raise WeightsError("%s: layer %s holds %r, expected float arrays" % (path, layer, item))
    arrays.append(item.astype(np.float32))
  weights = [a for a in arrays if a.ndim > 1]
  biases = [a for a in arrays if a.ndim == 1]
  if len(weights) != 1 or len(biases) != 1:
    raise WeightsError("%s: layer %s should hold one kernel (ndim > 1) and one bias vector, got "
                       "shapes %s" % (path, layer, [a.shape for a in arrays]))
  return weights[0], biases[0]


def read_layers(path):
  """Reads .npy (official pickled dict) or .npz (converted) -> OrderedDict layer -> (w, b)."""
  if not os.path.isfile(path):
    raise WeightsError("weights file %s does not exist" % path)
  layers = collections.OrderedDict()
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as archive:
      names = sorted(set(k.rsplit("/", 1)[0] for k in archive.files))
      for layer in names:
        try:
          layers[layer] = (archive[layer + "/weights"].astype(np.float32),
                           archive[layer + "/biases"].astype(np.float32))
        except KeyError:
          raise WeightsError("%s: layer %s needs both %s/weights and %s/biases"
                             % (path, layer, layer, layer))
    return layers
  stored = _read_npy_object(path)
  if not isinstance(stored, dict):
    raise WeightsError("%s holds a %s, expected a dict {layer: [weights, biases]}"
                       % (path, type(stored).__name__))
  for key in sorted(stored, key=_as_str):
    layer = _as_str(key)
    layers[layer] = _split_weights_biases(path, layer, stored[key])
  return layers


def check_shapes(path, layers, expected_shapes, skip_layers=SKIP_LAYERS):
  """Raises one WeightsError listing every missing, unknown or mis-shaped layer."""
  problems = []
  for layer, (w_shape, b_shape) in expected_shapes.items():
    if layer in skip_layers:
      continue
    if layer not in layers:
      problems.append("%s: missing" % layer)
      continue
    weights, biases = layers[layer]
    if tuple(weights.shape) != tuple(w_shape):
      problems.append("%s/weights: file %s, network %s" % (layer, weights.shape, tuple(w_shape)))
    if tuple(biases.shape) != tuple(b_shape):
      problems.append("%s/biases: file %s, network %s" % (layer, biases.shape, tuple(b_shape)))
  unknown = sorted(set(layers) - set(expected_shapes) - set(skip_layers))
  problems.extend("%s: not an AlexNet layer" % layer for layer in unknown)
  if problems:
    raise WeightsError("%s does not fit the network:\n  %s" % (path, "\n  ".join(problems)))


def load_alexnet_weights(path, expected_shapes=None, skip_layers=SKIP_LAYERS):
  """Pretrained conv1..fc7 as {'conv1/weights': array, ...}, checked against the network."""
  expected_shapes = expected_shapes or network.weight_shapes()
  layers = read_layers(path)
  check_shapes(path, layers, expected_shapes, skip_layers)
  values = collections.OrderedDict()
  for layer in expected_shapes:
    if layer not in skip_layers:
      values[network.weight_key(layer, "weights")] = layers[layer][0]
      values[network.weight_key(layer, "biases")] = layers[layer][1]
  return values


def save_npz(path, layers):
  """Writes OrderedDict layer -> (w, b) as <layer>/weights, <layer>/biases (no pickle)."""
  arrays = {}
  for layer, (weights, biases) in layers.items():
    arrays[layer + "/weights"] = weights
    arrays[layer + "/biases"] = biases
  np.savez(path, **arrays)
