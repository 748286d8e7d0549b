"""Official BiT `.npz` weights (gs://bit_models/BiT-{S,M}-R*.npz) -> estimators.bit.network.

The file keys are the variable names. GroupNorm gamma/beta are accepted as (C,) or with
leading unit axes (1, 1, 1, C). The head (`resnet/head/conv2d/*`, 21,843 classes in
BiT-M, 1,000 in BiT-S) is replaced by the model's zero-initialised head when the class
count differs or `reset_head` is set, as BiT fine-tuning does.
"""
import numpy as np
import tensorflow.compat.v1 as tf

from estimators import pretrained

HEAD_PREFIX = "resnet/head/"


class _Squeeze(object):
  """(1, ..., 1, C) -> (C,) for GroupNorm parameters stored with broadcast axes."""

  @staticmethod
  def output_shape(shape):
    if len(shape) > 1 and all(d == 1 for d in shape[:-1]):
      return (shape[-1],)
    return shape

  def __call__(self, array):
    return np.reshape(array, self.output_shape(array.shape))


def open_source(path):
  return pretrained.NpzSource.identity(path, pretrained.read_shapes(path))


def plan(path, variables, num_classes, reset_head=False, scope=""):
  """(source, entries) loading `path` into `variables`; raises one WeightsMismatchError."""
  source = open_source(path)
  by_key = {pretrained.variable_name(v, scope): v for v in variables}
  head_classes = source.shapes.get(HEAD_PREFIX + "conv2d/kernel", (None,))[-1]
  load_head = (not reset_head) and head_classes == num_classes
  if not load_head:
    tf.logging.info("Replacing the head of %s (%s classes) by a zero-initialised %d-way head",
                    path, head_classes, num_classes)
  entries = []
  for key, variable in sorted(by_key.items()):
    if key.startswith(HEAD_PREFIX) and not load_head:
      continue
    transform = _Squeeze() if "group_norm/" in key else None
    entries.append(pretrained.Entry(variable, key, transform))
  consumed = set(entry.key for entry in entries)
  extra = sorted(k for k in source.shapes
                 if k not in consumed and not k.startswith(HEAD_PREFIX))
  pretrained.check(source, entries, extra)
  return source, entries


def scaffold(path, variables, num_classes, reset_head=False, scope=""):
  """A Scaffold that initialises `variables` from `path` (warm start, see pretrained)."""
  source, entries = plan(path, variables, num_classes, reset_head, scope)
  return pretrained.scaffold(source, entries)
