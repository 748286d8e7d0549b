"""Official BiT `.npz` weights (gs://bit_models/BiT-{S,M}-R*.npz) -> estimators.bit.network.

The file keys are the variable names. GroupNorm gamma/beta are accepted as (C,) or with
leading unit axes (1, 1, 1, C). The head (`resnet/head/conv2d/*`, 21,843 classes in
BiT-M, 1,000 in BiT-S) is replaced by the model's zero-initialised head when the class
count differs or `reset_head` is set, as BiT fine-tuning does. `Filter(num_classes,
reset_head)` is this format's filter for estimators.pretrained.
"""
import numpy as np

from estimators import pretrained

class _Squeeze(object):
  """(1, ..., 1, C) -> (C,) for GroupNorm parameters stored with broadcast axes."""

  @staticmethod
  def output_shape(shape):
    if len(shape) > 1 and all(d == 1 for d in shape[:-1]):
      return (shape[-1],)
    return shape

  def __call__(self, array):
    return np.reshape(array, self.output_shape(array.shape))


class Filter(pretrained.ClassifierFilter):
  """BiT's filter: the file's keys as they are, GroupNorm parameters squeezed; the head
  as `pretrained.ClassifierFilter` does."""

  head_prefix = "resnet/head/"
  head_kernel = "resnet/head/conv2d/kernel"

  def transform(self, key, variable):
    del variable
    return _Squeeze() if "group_norm/" in key else None
