"""The model registry: the one list of models, and the contract each one follows.

A model is a package `estimators/<name>/` whose `__init__.py` holds a subclass of `Model`
decorated with `@register`; `MODELS` below names the packages (adding a model is that
package and one line here). The run loop, the entry scripts and the launch scripts read
this list.

The contract, in the order a run uses it:
  flags              a table of `Flag`s (name, kind, default, help, valid range or choices,
                     aliases), defined and range-checked by the run loop
  run_flag_defaults  the model's defaults of run-loop flags (train_batch_size, ...)
  run_flag_aliases   the seed's names of run-loop flags (--num_steps for --train_steps)
  configure(flag_values, run) -> Config
                     everything the run needs, worked out once from the flags and
                     validated there (ValueError naming the flag); `run` holds the run
                     loop's own values
  check_inputs(config)          the data the run reads is there and whole
  input_fn(config, mode)        an Estimator input_fn(params)
  model_fn(features, labels, mode, config)   `config.batch_size` is the mode's batch
  serving_input_receiver_fn(config), summarize(results, config)
Each package has the same files: `__init__.py` (flags, configure, inputs), `network.py`
(`logits, end_points = build(images, num_classes, is_training, config)`) and `model_fn.py`;
models with pretrained weights add `weights.py`, their filter for `estimators.pretrained`.
"""
import collections
import importlib
import math

from absl import flags

# name -> the package that registers it (imported on demand: a run of one model never
# imports another's dependencies).
MODELS = {
    "amoeba_net": "estimators.amoeba_net",
    "protoattend": "estimators.protoattend",
    "masf": "estimators.masf",
    "vit": "estimators.vit",
    "bit": "estimators.bit",
}
_REGISTERED = {}


class Config(collections.abc.Mapping):
  """A run's configuration, worked out once: frozen, printable, read as `config.name`
  (or `config["name"]`, so TPUEstimator-style code reading `params[...]` works)."""

  __slots__ = ("_values",)

  def __init__(self, values=(), **more):
    object.__setattr__(self, "_values", dict(values, **more))

  def __getattr__(self, name):
    try:
      return self._values[name]
    except KeyError:
      raise AttributeError("the config has no %r" % name)

  def __setattr__(self, name, value):
    raise AttributeError("a Config is frozen (config.replace(%s=...) makes a new one)" % name)

  def __getitem__(self, name):
    return self._values[name]

  def __iter__(self):
    return iter(self._values)

  def __len__(self):
    return len(self._values)

  def __reduce__(self):
    return Config, (self._values,)

  def replace(self, **changes):
    return Config(self._values, **changes)

  def __repr__(self):
    return "Config(%s)" % ", ".join("%s=%s" % (name, _short_repr(value))
                                    for name, value in sorted(self._values.items()))


def _short_repr(value, most=8):
  """repr(value), a long list or tuple (ImageNet's 1001 class names) cut to its first items:
  the run logs its Config on one line."""
  if isinstance(value, (list, tuple)) and len(value) > most:
    return "%r ... (%d items)" % (list(value[:most]), len(value))
  return repr(value)


class Range(collections.namedtuple("Range", "low high low_closed high_closed")):
  """A numeric flag's valid values; None as a bound is unbounded."""

  def __contains__(self, value):
    if self.low is not None and (value < self.low or (value == self.low
                                                      and not self.low_closed)):
      return False
    return self.high is None or value < self.high or (value == self.high
                                                      and self.high_closed)

  def __str__(self):
    if self.high is None:
      return "must be %s %r" % (">=" if self.low_closed else ">", self.low)
    return "must lie in %s%r, %r%s" % ("[" if self.low_closed else "(", self.low, self.high,
                                       "]" if self.high_closed else ")")


POSITIVE = Range(0, None, False, False)
NON_NEGATIVE = Range(0, None, True, False)


def at_least(low):
  return Range(low, None, True, False)


def within(low, high, bounds="[]"):
  """`bounds`: "[]", "[)", "(]" or "()"."""
  return Range(low, high, bounds[0] == "[", bounds[1] == "]")


class Flag(collections.namedtuple("Flag", "name kind default help valid aliases")):
  """One model flag: kind is integer, float, bool, string, list or enum; `valid` is a
  Range (numbers; None values pass: they mean "the recipe's") or the enum's choices."""

  def __new__(cls, name, kind, default, help, valid=None, aliases=()):  # pylint: disable=redefined-builtin
    return super(Flag, cls).__new__(cls, name, kind, default, help, valid, tuple(aliases))


def define_flags(table, flag_values=flags.FLAGS):
  """Defines the flags of `table` not yet defined (models may share rows: ViT and BiT
  both take the fine-tuning flags) and their aliases."""
  for flag in table:
    if flag.name in flag_values:
      continue
    if flag.kind == "enum":
      flags.DEFINE_enum(flag.name, flag.default, list(flag.valid), flag.help,
                        flag_values=flag_values)
    else:
      getattr(flags, "DEFINE_" + flag.kind)(flag.name, flag.default, flag.help,
                                            flag_values=flag_values)
    for alias in flag.aliases:
      flags.DEFINE_alias(alias, flag.name, flag_values=flag_values)


def values_of(table, flag_values):
  """{name: value} of the flags of `table` (what a configure() usually starts from; what
  flags.json records of a model)."""
  return {flag.name: flag_values[flag.name].value for flag in table}


def check_ranges(table, flag_values):
  """ValueError naming the first flag of `table` whose value is outside its Range."""
  for flag in table:
    value = flag_values[flag.name].value
    if isinstance(flag.valid, Range) and value is not None and value not in flag.valid:
      raise ValueError("--%s=%r %s" % (flag.name, value, flag.valid))


def require(condition, message):
  """configure()'s checks across flags: ValueError(message) unless `condition`."""
  if not condition:
    raise ValueError(message)


def flag_given(flag_values, name):
  """True when --name was given on the command line (or set to a value other than its
  default): what tells an explicit --train_steps from a model's default one."""
  flag = flag_values[name]
  return bool(flag.present) or flag.value != flag.default


def ceil_steps(value):
  """Steps covering `value` (a float count of steps), rounded up; the rounding to 6
  decimals first keeps float noise (0.1 * 300 / 10 = 3.0000000000000004) from adding one."""
  return int(math.ceil(round(value, 6)))


def train_steps(flag_values, steps_per_epoch, default):
  """--train_steps when given, else ceil(--train_epochs x steps_per_epoch()) when set,
  else `default` (the run loop refuses both flags given)."""
  if flag_given(flag_values, "train_steps"):
    return flag_values.train_steps
  if flag_values.train_epochs is not None:
    return ceil_steps(flag_values.train_epochs * steps_per_epoch())
  return default


class Model(object):
  """Interface of a registered model (see the module docstring)."""

  name = None
  # (eval result key, what it measures): the one figure a run is judged by, as the seeds
  # report it; the final metrics line names it.
  headline_metric = ("top_1_accuracy", "top-1 accuracy on the validation split")
  flags = ()
  run_flag_defaults = {}  # run-loop flag -> this model's default
  run_flag_aliases = {}  # the seed's name -> the run-loop flag it stands for
  tf2_seed_flags = False  # accepts the ModelZoo TF2 scripts' flag names (BiT's seed)
  # Why the model trains on one device only (None: its batch splits over replicas, for
  # tf.distribute and NPU ranks alike).
  single_device_only = None

  def configure(self, flag_values, run):
    """Returns `run` (a Config of the run loop's values) with the model's values added:
    at least train_steps, steps_per_eval and eval_steps (None: the whole input); it may
    change train_batch_size. Raises ValueError (one line naming the flag)."""
    raise NotImplementedError

  def check_inputs(self, config):
    """Raises ValueError (naming the file or folder) when the data the run needs is missing
    or malformed; before any graph."""

  def input_fn(self, config, mode):
    """An Estimator input_fn(params) for `mode` (a tf.estimator.ModeKeys value)."""
    raise NotImplementedError

  def model_fn(self, features, labels, mode, config):
    raise NotImplementedError

  def serving_input_receiver_fn(self, config):
    """A serving_input_receiver_fn for SavedModel export, or None (no export)."""
    return None

  def summarize(self, results, config):
    """Human-readable lines for an evaluation's results, naming what each figure is."""
    return None


def register(cls):
  """Class decorator; the class's `name` must be a key of MODELS (or, for test models,
  any name not taken)."""
  if cls.name in _REGISTERED:
    raise ValueError("model %r registered twice" % cls.name)
  _REGISTERED[cls.name] = cls
  return cls


def get(name):
  """Returns a fresh instance of the registered model `name`."""
  if name not in _REGISTERED and name in MODELS:
    importlib.import_module(MODELS[name])
  if name not in _REGISTERED:
    raise KeyError("unknown model %r; known: %s" % (name, ", ".join(names())))
  return _REGISTERED[name]()


def names():
  return sorted(set(_REGISTERED) | set(MODELS))
