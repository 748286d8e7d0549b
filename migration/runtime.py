"""The runtime settings of converted code, worked out once per process from the environment.

Scripts ported by `migration.convert` keep their own flags; the backend options reach them
as environment variables named after the run loop's flags, `MIGRATION_<FLAG>`:

  MIGRATION_DEVICE=auto|npu|gpu|cpu       MIGRATION_PRECISION_MODE=allow_mix_precision
  MIGRATION_LOSS_SCALE=auto|none|dynamic|N
  MIGRATION_ITERATIONS_PER_LOOP=N         (a TPUConfig's iterations_per_loop takes precedence)
  MIGRATION_FUSION_SWITCH_FILE, MIGRATION_MODIFY_MIXLIST, MIGRATION_ENABLE_DUMP,
  MIGRATION_DUMP_PATH, MIGRATION_DUMP_STEP, MIGRATION_DUMP_MODE, MIGRATION_ENABLE_DUMP_DEBUG,
  MIGRATION_DUMP_DEBUG_MODE, MIGRATION_ENABLE_PROFILING, MIGRATION_PROFILING_OPTIONS,
  MIGRATION_HCOM_PARALLEL, MIGRATION_ENABLE_DATA_PRE_PROC, MIGRATION_MIX_COMPILE_MODE,
  MIGRATION_OP_COMPILER_CACHE_MODE, MIGRATION_OP_COMPILER_CACHE_DIR

Environment variables rather than flags because a ported script's flags are its own (a
`--device` of ours could collide with one of theirs), and because launchers (the ModelZoo
scripts, mpirun, schedulers) pass environments through untouched. Values are validated
by the same rules as the run loop's flags; a bad one stops the script with one line naming
the variable.
"""
import collections
import os
import re

from absl import logging

from migration import backend as backend_lib
from migration import precision
from migration import run_config as run_config_lib
from migration import validation

PREFIX = "MIGRATION_"
Settings = collections.namedtuple("Settings", ["backend", "npu_opts", "loss_scale"])

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse(name, raw, default):
  """`raw` (a string) as the type of `default`; raises ConfigError naming the variable."""
  if isinstance(default, bool):
    if raw.lower() in _TRUE + _FALSE:
      return raw.lower() in _TRUE
    raise validation.ConfigError("%s%s=%r: expected true or false" % (PREFIX, name.upper(), raw))
  if isinstance(default, int):
    try:
      return int(raw)
    except ValueError:
      raise validation.ConfigError("%s%s=%r: expected an integer"
                                   % (PREFIX, name.upper(), raw))
  return raw


def npu_options(environ):
  """NpuOptions from `MIGRATION_*` variables; unset ones keep the run loop's defaults."""
  values = {}
  for name, default in run_config_lib.NPU_DEFAULTS._asdict().items():
    raw = environ.get(PREFIX + name.upper())
    values[name] = default if raw in (None, "") else _parse(name, raw, default)
  return run_config_lib.NpuOptions(**values)


def settings_from(environ):
  """Validated Settings for an environment mapping (no caching, nothing activated)."""
  try:
    npu_opts = npu_options(environ)
    validation.check_npu_options(npu_opts, environ)
    backend = backend_lib.select_backend(environ.get(PREFIX + "DEVICE") or "auto")
    loss_scale = precision.resolve_loss_scale(environ.get(PREFIX + "LOSS_SCALE") or "auto",
                                              backend, npu_opts.precision_mode)
  except (validation.ConfigError, backend_lib.BackendError) as error:
    # The checks name run-loop flags (--precision_mode); here they are variables.
    raise SystemExit("error: " + re.sub(r"--([a-z_]+)", lambda m: PREFIX + m.group(1).upper(),
                                        str(error)))
  return Settings(backend, npu_opts, loss_scale)


_settings = None


def settings():
  """The process's Settings, worked out on first use; activates the backend."""
  global _settings
  if _settings is None:
    _settings = settings_from(os.environ)
    backend_lib.activate(_settings.backend)
    logging.info("migration runtime: device=%s precision_mode=%s (runs as %s) loss_scale=%s",
                 _settings.backend.device, _settings.npu_opts.precision_mode,
                 precision.compute_dtype(_settings.backend, _settings.npu_opts.precision_mode),
                 _settings.loss_scale)
  return _settings


def reset():
  """Forgets the cached Settings (tests change the environment between runs)."""
  global _settings
  _settings = None
