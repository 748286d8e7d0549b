"""The one pretrained-weights loader: weight files checked, then loaded into graph variables.

A model's `weights.py` is only its format's filter (`Filter`): how a file opens as a
source of arrays under canonical keys (`NpzSource` for .npz, `ArraySource` for formats
read whole, such as a pickle) and which key feeds which variable (`Entry`, with an
optional transform such as position-embedding interpolation). `ClassifierFilter` is the
fine-tuning filter: a classifier's variables by name, its head kept or reset by the class
count. This module does the rest, once for every model:

- reads key names, shapes and dtypes from the .npy headers inside the .npz without
  loading any array, refusing anything but float and integer arrays;
- `plan` collects every missing, extra and mis-shaped key into one `WeightsMismatchError`;
- `check_file` runs every check before the run builds its graph (`check_inputs`): the
  shapes against the network's variables made in a throwaway graph, then every array
  read once, one at a time, NaN/inf refused; a bad file stops the run with one line
  naming the file and the key;
- `warm_start` builds a `tf.train.Scaffold` whose `init_fn` assigns the values through
  placeholders (no multi-GB constants in the GraphDef). `init_fn` only runs when the
  session initialises variables from scratch, i.e. when model_dir holds no checkpoint: a
  fresh run warm-starts from the file, a resumed run keeps its own checkpoint.
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


def read_npy_header(handle):
  """(shape, dtype) from the header of the .npy at `handle`'s position, which is left at
  the data; ValueError when it is not an .npy header."""
  if npy_format.read_magic(handle) == (1, 0):
    shape, _, dtype = npy_format.read_array_header_1_0(handle)
  else:
    shape, _, dtype = npy_format.read_array_header_2_0(handle)
  return tuple(shape), dtype


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
          headers[member[:-len(".npy")]] = read_npy_header(npy)
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


class ArraySource(object):
  """Arrays already in memory (a format that can only be read whole) as a source; the
  dtypes are checked on arrival, the values by `check_values`."""

  def __init__(self, path, arrays):
    self.path = path
    for key, array in sorted(arrays.items()):
      check_dtype(path, key, array.dtype)
    self.arrays = dict(arrays)
    self.shapes = {key: array.shape for key, array in self.arrays.items()}

  def read(self, keys):
    for key in keys:
      yield key, self.arrays[key]

  def check_values(self):
    for key, array in sorted(self.arrays.items()):
      check_finite(self.path, key, array)


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


class Filter(object):
  """A weights format as a model plugs it into this loader (its weights.py)."""

  def open_source(self, path):
    """The file as a source: `path`, `shapes` ({key: shape}), `read(keys)` yielding
    (key, array) and `check_values()`. By default an .npz under its own keys."""
    return NpzSource.identity(path, read_shapes(path))

  def select(self, source, variables):
    """(entries, extra keys): an Entry for each variable to load, and the file's keys that
    nothing reads and the format does not expect to drop (each one is an error)."""
    raise NotImplementedError


class ClassifierFilter(Filter):
  """A pretrained classifier fine-tuned on `num_classes` classes (timm's idea: the
  adaptation is the filter, the loading is this module's).

  Every variable under `scope` is fed by the key of its name, through `transform`. The
  head (the keys under `head_prefix`) is loaded only when the file's head has `num_classes`
  classes and `reset_head` is off; otherwise the model's zero-initialised head stays,
  as fine-tuning does, and the file's head is dropped.
  """

  head_prefix = None  # the head's keys start with it
  head_kernel = None  # the file key of the head's kernel (classes on its last axis)

  def __init__(self, num_classes, reset_head=False, scope=""):
    self.num_classes = num_classes
    self.reset_head = reset_head
    self.scope = scope

  def transform(self, key, variable):
    """The Entry transform feeding `variable` from `key`; None loads the array as is."""
    del key, variable
    return None

  def dropped(self, source, by_key):
    """The file's keys besides the head that the format drops when nothing reads them
    (`by_key`: {key: variable} of the model)."""
    del source, by_key
    return set()

  def loads_head(self, source):
    head_classes = source.shapes.get(self.head_kernel, (None,))[-1]
    if not self.reset_head and head_classes == self.num_classes:
      return True
    tf.logging.info("Replacing the head of %s (%s classes) by a zero-initialised %d-way head",
                    source.path, head_classes, self.num_classes)
    return False

  def select(self, source, variables):
    by_key = {variable_name(v, self.scope): v for v in variables}
    load_head = self.loads_head(source)
    entries = [Entry(variable, key, self.transform(key, variable))
               for key, variable in sorted(by_key.items())
               if load_head or not key.startswith(self.head_prefix)]
    expected = set(entry.key for entry in entries) | self.dropped(source, by_key)
    extra_keys = sorted(key for key in source.shapes
                        if key not in expected and not key.startswith(self.head_prefix))
    return entries, extra_keys


def plan(path, variables, weights_filter):
  """(source, entries) loading `path` into `variables` through `weights_filter`; raises
  one WeightsMismatchError listing every key that does not fit."""
  source = weights_filter.open_source(path)
  entries, extra_keys = weights_filter.select(source, variables)
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
  return source, entries


def check_file(path, make_variables, weights_filter):
  """Every check of `path` before the run builds its graph; returns the source.

  `make_variables()` creates the network's variables and returns those to load. It runs
  in a throwaway graph: the network code stays the one description of its variables (a
  shape table would be a second one), and creating them allocates no values. Then every
  array is read once and must be finite.
  """
  with tf.Graph().as_default():
    source, _ = plan(path, make_variables(), weights_filter)
  source.check_values()
  return source


def warm_start(path, variables, weights_filter):
  """A Scaffold that initialises `variables` from `path` when model_dir has no
  checkpoint; its init_fn assigns the values through placeholders (see the module
  docstring)."""
  source, entries = plan(path, variables, weights_filter)

  def assign_ops(unused_strategy=None):
    by_key = {}
    with tf.name_scope("load_pretrained"):
      for entry in entries:
        placeholder = tf.placeholder(entry.variable.dtype.base_dtype, entry.variable.shape)
        by_key[entry.key] = (entry, placeholder,
                             entry.variable.assign(placeholder, read_value=False))
    return by_key

  # Under tf.distribute the model_fn runs in each replica's context, where a mirrored
  # variable cannot be assigned; in the cross-replica context one assign sets every copy.
  replica_context = tf.distribute.get_replica_context()
  by_key = replica_context.merge_call(assign_ops) if replica_context else assign_ops()

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
