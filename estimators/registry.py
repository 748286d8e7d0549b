"""The model registry: every model plugs into the shared run loop by registering itself.

A model is a subclass of `Model` decorated with `@register("name")`. The run loop asks it
for its flags, the params its model_fn needs, its input_fns and (optionally) a serving
input for export; everything else (backend, RunConfig, Estimator, modes, logging) is
shared.
"""
import importlib

_MODELS = {}

# Modules that register models when imported; `get` imports them lazily so that a run of
# one model never builds (or imports the dependencies of) another.
_MODEL_MODULES = {
    "amoeba_net": "estimators.amoeba_net",
    "protoattend": "estimators.protoattend",
    "masf": "estimators.masf",
    "vit": "estimators.vit",
    "bit": "estimators.bit",
}


class Model(object):
  """Interface of a registered model. Subclasses override what they need."""

  name = None

  def define_flags(self):
    """Defines the model's own absl flags and overrides common defaults."""

  def params(self, flags):
    """Returns the dict the model_fn receives as `params` (batch_size is added per mode)."""
    return {}

  def model_fn(self, features, labels, mode, params):
    raise NotImplementedError

  def input_fn(self, flags, mode):
    """Returns an Estimator input_fn(params) for `mode` (a tf.estimator.ModeKeys value)."""
    raise NotImplementedError

  def train_steps(self, flags):
    """Total training steps for the run (from --train_steps, else from epochs)."""
    return flags.train_steps

  def steps_per_eval(self, flags):
    """Training steps between evaluations in train_and_eval mode."""
    return flags.steps_per_eval or self.train_steps(flags)

  def eval_steps(self, flags):
    """Evaluation batches per evaluation; None evaluates until the input ends."""
    return flags.eval_steps or None

  def serving_input_receiver_fn(self, flags):
    """Returns a serving_input_receiver_fn for SavedModel export, or None (no export)."""
    return None

  def summarize(self, results):
    """Human-readable lines for an evaluation's results (printed after it), or None."""
    return None

  def validate_flags(self, flags):
    """Raises ValueError (one line naming the flag) on bad model flags, before any graph."""

  def check_inputs(self, flags):
    """Raises ValueError (naming the file or folder) when the data the run needs is missing
    or malformed; called after validate_flags, before any graph."""


def register(name):
  """Class decorator: `@register("vit") class ViT(Model): ...`."""

  def _decorator(cls):
    if name in _MODELS:
      raise ValueError("model %r registered twice" % name)
    cls.name = name
    _MODELS[name] = cls
    return cls

  return _decorator


def get(name):
  """Returns a fresh instance of the registered model `name`."""
  if name not in _MODELS and name in _MODEL_MODULES:
    importlib.import_module(_MODEL_MODULES[name])
  if name not in _MODELS:
    raise KeyError("unknown model %r; known: %s"
                   % (name, ", ".join(sorted(set(_MODELS) | set(_MODEL_MODULES)))))
  return _MODELS[name]()


def names():
  return sorted(set(_MODELS) | set(_MODEL_MODULES))
