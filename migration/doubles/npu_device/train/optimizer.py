"""Loss-scale optimisers: Keras's own, under the adapter's names and signatures.

`tf.keras.mixed_precision.LossScaleOptimizer` is, in TF 2.15 (Keras 2), a base class
whose metaclass builds a LossScaleOptimizer (legacy `tf.keras.optimizers.legacy.*`) or a
LossScaleOptimizerV3 (`tf.keras.optimizers.*`) from the inner optimizer's type. The
classes here do the same: an instance is of a private subclass that mixes the Npu class
with the matching Keras class, so isinstance() holds for both.
"""
import inspect
import sys

import tensorflow as tf

_KERAS_BASE = tf.keras.mixed_precision.LossScaleOptimizer
_KERAS_MODULE = sys.modules[_KERAS_BASE.__module__]


class _Dispatch(type(_KERAS_BASE)):
  """Builds the concrete class for the inner optimizer's type."""

  def __call__(cls, *args, **kwargs):
    if "_keras_class" in cls.__dict__:
      return type.__call__(cls, *args, **kwargs)
    bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    inner = list(bound.arguments.values())[1]
    if isinstance(inner, tf.keras.optimizers.legacy.Optimizer):
      keras_class = _KERAS_MODULE.LossScaleOptimizer
    elif isinstance(inner, tf.keras.optimizers.Optimizer):
      keras_class = _KERAS_MODULE.LossScaleOptimizerV3
    else:
      raise TypeError("the inner optimizer must be a Keras optimizer "
                      "(tf.keras.optimizers.Optimizer or tf.keras.optimizers.legacy."
                      "Optimizer), got %r" % (inner,))
    concrete = cls.__dict__.get("_concrete", {}).get(keras_class)
    if concrete is None:
      concrete = type(cls)(cls.__name__, (cls, keras_class),
                           {"_keras_class": keras_class, "__module__": cls.__module__})
      if "_concrete" not in cls.__dict__:
        cls._concrete = {}
      cls._concrete[keras_class] = concrete
    return type.__call__(concrete, *args, **kwargs)


class NpuLossScaleOptimizer(_KERAS_BASE, metaclass=_Dispatch):
  """Keras's LossScaleOptimizer; overflow is found with tf.math.is_finite on CPU."""

  def __init__(self, inner_optimizer, dynamic=True, initial_scale=None,
               dynamic_growth_steps=None):
    super(NpuLossScaleOptimizer, self).__init__(
        inner_optimizer, dynamic=dynamic, initial_scale=initial_scale,
        dynamic_growth_steps=dynamic_growth_steps)


class NpuExperimentalLossScaleOptimizer(NpuLossScaleOptimizer):
  """`loss_scale`: "dynamic" or a number (a fixed scale).

  TF 2.15 has no tf.keras.mixed_precision.experimental, so this maps the experimental
  optimiser's `loss_scale` onto LossScaleOptimizer's arguments.
  """

  def __init__(self, optimizer, loss_scale):
    if isinstance(loss_scale, str) and loss_scale == "dynamic":
      kwargs = {"dynamic": True}
    elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
      kwargs = {"dynamic": False, "initial_scale": loss_scale}
    else:
      raise ValueError('loss_scale must be "dynamic" or a number, got %r' % (loss_scale,))
    super(NpuExperimentalLossScaleOptimizer, self).__init__(optimizer, **kwargs)
