"""Loading flat `.npz` weight files (official ViT / BiT layout) into graph variables.

A model-specific loader turns the file's keys into canonical keys (`NpzSource`), then
pairs every variable with the key that feeds it and an optional transform such as
position-embedding interpolation (`Entry`). This module does the generic parts:

- reads key names, shapes and dtypes from the .npy headers inside the .npz without
  loading any array, refusing anything but float and integer arrays;
- collects every missing, extra and mis-shaped key into one `WeightsMismatchError`;
- `NpzSource.check_values` reads every array once, one at a time, and refuses NaN/inf.
  Models run these checks before the run builds its graph (`check_inputs`), so a bad
  file stops the run with one line naming the file and the key;
- builds a `tf.train.Scaffold` whose `init_fn` assigns the values through placeholders
  (no multi-GB constants in the GraphDef). `init_fn` only runs when the session
  initialises variables from scratch, i.e. when model_dir holds no checkpoint: a fresh
  run warm-starts from the file, a resumed run keeps its own checkpoint.
"""
import zipfile

import numpy as np
import tensorflow.compat.v1 as tf
from numpy.lib import format as npy_format


# Values are assigned in a few large Session.run calls: every distinct run prunes the
# whole (training) graph again, which costs far more than the copy for small tensors.
ASSIGN_CHUNK_BYTES = 256 * 1024 ** 2


class WeightsError(ValueError):
  """A weights file that cannot be used; the message's first line names the file."""


class WeightsMismatchError(WeightsError):
  """The file does not fit the model: lists all missing, extra and mis-shaped keys."""

  def __init__(self, path, missing=(), extra=(), mismatched=()):
    self.path = path
    self.missing = sorted(missing)
    self.extra = sorted(extra)
    self.mismatched = sorted(mismatched)
    lines = ["weights file %s does not fit the model:" % path]
    if self.missing:
      lines.append("  missing keys (%d): %s" % (len(self.missing), ", ".join(self.missing)))
    if self.extra:
      lines.append("  extra keys (%d): %s" % (len(self.extra), ", ".join(self.extra)))
    if self.mismatched:
      lines.append("  mis-shaped keys (%d): %s" % (
          len(self.mismatched),
          ", ".join("%s file %s != model %s" % (key, tuple(got), tuple(want))
                    for key, got, want in self.mismatched)))
    super(WeightsMismatchError, self).__init__("\n".join(lines))


def check_dtype(path, key, dtype):
  """Refuses all but float and integer arrays: object arrays only load by unpickling, and
  strings, booleans and complex numbers are not weights."""
  if dtype.kind not in "fiu":
    raise WeightsError("weights file %s: key %s has dtype %s, expected a float or integer "
                       "array" % (path, key, dtype))


def check_finite(path, key, array):
  if array.dtype.kind == "f" and not np.isfinite(array).all():
    raise WeightsError("weights file %s: key %s holds NaN/inf" % (path, key))


def read_shapes(path):
  """Returns {key: shape} of an .npz file, reading only the .npy headers; refuses
  non-numeric dtypes (`check_dtype`)."""
  if not tf.io.gfile.exists(path):
    raise WeightsError("weights file %s does not exist" % path)
  headers = {}
  try:
    with tf.io.gfile.GFile(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
      for member in archive.namelist():
        if not member.endswith(".npy"):
          continue
        with archive.open(member) as npy:
          version = npy_format.read_magic(npy)
          if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(npy)
          else:
            shape, _, dtype = npy_format.read_array_header_2_0(npy)
        headers[member[:-len(".npy")]] = (tuple(shape), dtype)
  except (zipfile.BadZipfile, ValueError, OSError, tf.errors.OpError) as error:
    raise WeightsError("weights file %s is not a readable .npz archive: %s" % (path, error))
  if not headers:
    raise WeightsError("weights file %s holds no arrays" % path)
  for key, (_, dtype) in sorted(headers.items()):
    check_dtype(path, key, dtype)
  return {key: shape for key, (shape, _) in headers.items()}


def _load(path, archive, file_key):
  """archive[file_key]; a damaged member is named (the header read did not see it)."""
  try:
    return archive[file_key]
  except (zipfile.BadZipfile, ValueError, OSError, EOFError) as error:
    raise WeightsError("weights file %s: key %s cannot be read: %s" % (path, file_key, error))


class NpzSource(object):
  """An .npz file seen through canonical key names.

  `locations` maps canonical key -> (file key, index): index None takes the whole array,
  an int takes `array[index]` (layer-stacked "scanned" layouts).
  """

  def __init__(self, path, locations, file_shapes):
    self.path = path
    self.file_keys = sorted(file_shapes)
    self.locations = dict(locations)
    self.shapes = {}
    for key, (file_key, index) in self.locations.items():
      shape = tuple(file_shapes[file_key])
      self.shapes[key] = shape if index is None else shape[1:]

  @classmethod
  def identity(cls, path, file_shapes):
    return cls(path, {key: (key, None) for key in file_shapes}, file_shapes)

  def read(self, keys):
    """Yields (key, array) for `keys`; each file array is loaded once."""
    order = sorted(keys, key=lambda k: (self.locations[k][0], self.locations[k][1] or 0))
    cached_key, cached = None, None
    with tf.io.gfile.GFile(self.path, "rb") as handle:
      archive = np.load(handle, allow_pickle=False)
      for key in order:
        file_key, index = self.locations[key]
        if file_key != cached_key:
          cached_key, cached = file_key, _load(self.path, archive, file_key)
        yield key, cached if index is None else cached[index]

  def check_values(self):
    """Reads every array of the file once, one at a time (memory: the largest array), and
    raises a WeightsError naming the first file key that holds NaN/inf."""
    with tf.io.gfile.GFile(self.path, "rb") as handle:
      archive = np.load(handle, allow_pickle=False)
      for file_key in self.file_keys:
        check_finite(self.path, file_key, _load(self.path, archive, file_key))


def variable_name(variable, scope=""):
  """`<scope>/a/b/kernel:0` -> `a/b/kernel`."""
  name = variable.op.name
  if scope:
    prefix = scope.rstrip("/") + "/"
    if not name.startswith(prefix):
      raise ValueError("variable %s is not under scope %s" % (name, scope))
    name = name[len(prefix):]
  return name


class Entry(object):
  """Assign source[key], after `transform(array) -> array`, to `variable`.

  A transform that changes the shape also provides `transform.output_shape(shape)`.
  """

  def __init__(self, variable, key, transform=None):
    self.variable = variable
    self.key = key
    self.transform = transform

  def loaded_shape(self, source_shape):
    if self.transform is None or not hasattr(self.transform, "output_shape"):
      return tuple(source_shape)
    return tuple(self.transform.output_shape(source_shape))


def check(source, entries, extra_keys=()):
  """Raises one WeightsMismatchError listing every key that does not fit."""
  missing, mismatched = [], []
  for entry in entries:
    if entry.key not in source.shapes:
      missing.append(entry.key)
      continue
    want = tuple(entry.variable.shape.as_list())
    if entry.loaded_shape(source.shapes[entry.key]) != want:
      mismatched.append((entry.key, source.shapes[entry.key], want))
  if missing or mismatched or extra_keys:
    raise WeightsMismatchError(source.path, missing, extra_keys, mismatched)


def scaffold(source, entries):
  """A Scaffold whose init_fn assigns `entries` from `source` (see module docstring)."""
  by_key = {}
  with tf.name_scope("load_pretrained"):
    for entry in entries:
      dtype = entry.variable.dtype.base_dtype
      placeholder = tf.placeholder(dtype, entry.variable.shape)
      assign = entry.variable.assign(placeholder, read_value=False)
      by_key[entry.key] = (entry, placeholder, assign)

  def init_fn(unused_scaffold, session):
    tf.logging.info("Initialising %d variables from %s", len(by_key), source.path)
    assigns, feed, chunk_bytes = [], {}, 0
    for key, array in source.read(list(by_key)):
      entry, placeholder, assign = by_key[key]
      if entry.transform is not None:
        array = entry.transform(array)
      feed[placeholder] = np.asarray(
          array, dtype=entry.variable.dtype.base_dtype.as_numpy_dtype)
      assigns.append(assign)
      chunk_bytes += feed[placeholder].nbytes
      if chunk_bytes >= ASSIGN_CHUNK_BYTES:
        session.run(assigns, feed)
        assigns, feed, chunk_bytes = [], {}, 0
    if assigns:
      session.run(assigns, feed)

  return tf.train.Scaffold(init_fn=init_fn)
