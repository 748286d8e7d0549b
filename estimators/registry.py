"""The model registry: every model plugs into the shared run loop by registering itself.

A model is a subclass of `Model` decorated with `@register("name")`. The run loop asks it
for its flags, the params its model_fn needs, its input_fns and (optionally) a serving
input for export; everything else (backend, RunConfig, Estimator, modes, logging) is
shared.
"""
import importlib
import math

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


def flag_given(flag_values, name):
  """True when --name was given on the command line (or set to a value other than its
  default): what tells an explicit --train_steps from a model's default one."""
  flag = flag_values[name]
  return bool(flag.present) or flag.value != flag.default


def ceil_steps(value):
  """Steps covering `value` (a float count of steps), rounded up; the rounding to 6
  decimals first keeps float noise (0.1 * 300 / 10 = 3.0000000000000004) from adding one."""
  return int(math.ceil(round(value, 6)))


class Model(object):
  """Interface of a registered model. Subclasses override what they need."""

  name = None
  # (eval result key, what it measures): the one figure a run is judged by, as the seeds
  # report it; the final metrics line names it.
  headline_metric = ("top_1_accuracy", "top-1 accuracy on the validation split")

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

  def train_batch_size(self, flags):
    """Examples per training step (global)."""
    return flags.train_batch_size

  def train_examples(self, flags):
    """Examples in one training epoch of this run's data (for --train_epochs)."""
    raise NotImplementedError

  def steps_per_epoch(self, flags):
    """Training steps per epoch (may be fractional)."""
    return self.train_examples(flags) / float(self.train_batch_size(flags))

  def default_train_steps(self, flags):
    """Training steps when neither --train_steps nor --train_epochs is given: the
    --train_steps default (a model may set it with set_default)."""
    return flags.train_steps

  def train_steps(self, flags):
    """Total training steps: --train_steps if given, else
    ceil(--train_epochs x steps_per_epoch) if --train_epochs is set, else the model's
    default (check_common_flags refuses both given)."""
    if flag_given(flags, "train_steps"):
      return flags.train_steps
    if flags.train_epochs is not None:
      return ceil_steps(flags.train_epochs * self.steps_per_epoch(flags))
    return self.default_train_steps(flags)

  def steps_per_eval(self, flags):
    """Training steps between evaluations in train_and_eval mode."""
    return flags.steps_per_eval or self.train_steps(flags)

  def eval_steps(self, flags):
    """Evaluation batches per evaluation; None evaluates until the input ends."""
    return flags.eval_steps or None

  def serving_input_receiver_fn(self, flags):
    """Returns a serving_input_receiver_fn for SavedModel export, or None (no export)."""
    return None

  def summarize(self, results, flags):
    """Human-readable lines for an evaluation's results (printed after it), naming what
    each figure is, or None."""
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
