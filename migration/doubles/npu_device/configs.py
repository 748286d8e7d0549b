"""NpuConfig, the options of global_options() (master), checked as the adapter checks them."""
import json
import warnings

# Keys and values from npu_bridge_api.md §11.3; the key order is the double's choice.
DEFAULT_PROFILING_OPTIONS = json.dumps({
    "output": "./", "training_trace": "on", "task_trace": "on", "hccl": "on",
    "aicpu": "on", "aic_metrics": "PipeUtilization"})


class _Option(object):
  """An option's default, allowed values (None: free) and deprecation note.

  A default that is a class (a nested config) means a new instance of that class.
  """

  def __init__(self, default=None, allowed=None, deprecated=None):
    self.default = default
    self.allowed = allowed
    self.deprecated = deprecated

  def new_default(self):
    return self.default() if isinstance(self.default, type) else self.default

  def check(self, owner, name, value):
    default_type = self.default if isinstance(self.default, type) else type(self.default)
    if self.default is not None and type(value) is not default_type:  # pylint: disable=unidiomatic-typecheck
      raise TypeError("%s.%s must be of type %s (the default's type), got %r" % (
          owner, name, default_type.__name__, value))
    if self.allowed is not None and not any(
        type(value) is type(allowed) and value == allowed for allowed in self.allowed):  # pylint: disable=unidiomatic-typecheck
      raise ValueError("%s.%s must be one of %r, got %r" % (
          owner, name, list(self.allowed), value))


def _serialise(value):
  if isinstance(value, bool):
    return "1" if value else "0"
  return str(value)


class NpuConfigBase(object):
  """Options as attributes; unknown names and bad values are refused on assignment."""

  _OPTIONS = ()  # (name, _Option) pairs in documented order

  def __init__(self):
    for name, option in self._OPTIONS:
      object.__setattr__(self, name, option.new_default())

  def __setattr__(self, name, value):
    options = dict(self._OPTIONS)
    owner = type(self).__name__
    if name not in options:
      raise ValueError("%r is not an option of %s; valid options: %s" % (
          name, owner, ", ".join(n for n, _ in self._OPTIONS) or "(none)"))
    options[name].check(owner, name, value)
    object.__setattr__(self, name, value)

  def as_dict(self):
    """The options that are set (not None) as strings; nested configs are flattened."""
    result = {}
    for name, option in self._OPTIONS:
      value = getattr(self, name)
      if isinstance(value, NpuConfigBase):
        result.update(value.as_dict())
      elif value is not None:
        if option.deprecated is not None:
          warnings.warn("npu_device option %s is deprecated%s" % (name, option.deprecated))
        result[name] = _serialise(value)
    return result


class NpuDumpConfig(NpuConfigBase):
  _OPTIONS = (
      ("enable_dump", _Option(False)),
      ("dump_path", _Option()),
      ("dump_step", _Option()),
      ("dump_mode", _Option("output", ["input", "output", "all"])),
      ("enable_dump_debug", _Option(False)),
      ("dump_debug_mode", _Option("all", ["aicore_overflow", "atomic_overflow", "all"])),
      ("dump_data", _Option("tensor", ["tensor", "stats"])),
      ("dump_layer", _Option()),
  )


class NpuProfilingConfig(NpuConfigBase):
  _OPTIONS = (
      ("enable_profiling", _Option(False)),
      ("profiling_options", _Option(DEFAULT_PROFILING_OPTIONS)),
  )


class NpuAoeConfig(NpuConfigBase):
  """Placeholder: the reference lists no fields, so every assignment is refused."""


class MemoryConfig(NpuConfigBase):
  """Placeholder: the reference lists no fields, so every assignment is refused."""


class NpuExperimentalConfig(NpuConfigBase):
  """Placeholder: the reference lists no fields, so every assignment is refused."""


_BOOL = [True, False]
_REPLACED_BY = ", use %s instead"


class NpuConfig(NpuConfigBase):
  """The options of global_options() (npu_bridge_api.md §11.3)."""
  _OPTIONS = (
      ("graph_run_mode", _Option(1, [0, 1])),
      ("graph_memory_max_size", _Option()),
      ("variable_memory_max_size", _Option()),
      ("variable_format_optimize", _Option(None, _BOOL, deprecated="")),
      ("enable_scope_fusion_passes", _Option()),
      ("fusion_switch_file", _Option()),
      ("precision_mode", _Option(None, [
          "force_fp32", "allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype",
          "allow_mix_precision", "cube_fp16in_fp32out", "allow_mix_precision_fp16",
          "allow_mix_precision_bf16", "allow_fp32_to_bf16"])),
      ("op_select_implmode", _Option(None, ["high_performance", "high_precision"],
                                     deprecated=_REPLACED_BY % "op_precision_mode")),
      ("optypelist_for_implmode",
       _Option(deprecated=_REPLACED_BY % "op_precision_mode")),
      ("op_compiler_cache_mode", _Option("enable", ["enable", "disable", "force"])),
      ("op_compiler_cache_dir", _Option()),
      ("stream_max_parallel_num", _Option()),
      ("ac_parallel_enable", _Option(None, ["0", "1"])),
      ("hcom_parallel", _Option(True, _BOOL)),
      ("hcom_multi_mode", _Option()),
      ("is_tailing_optimization", _Option(False, _BOOL)),
      ("op_debug_level", _Option(None, [0, 1, 2, 3, 4],
                                 deprecated=_REPLACED_BY % "op_debug_config")),
      ("op_debug_config", _Option()),
      ("debug_dir", _Option()),
      ("modify_mixlist", _Option()),
      ("enable_exception_dump", _Option(2, [0, 1, 2])),
      ("dump_config", _Option(NpuDumpConfig)),
      ("aoe_config", _Option(NpuAoeConfig)),
      ("profiling_config", _Option(NpuProfilingConfig)),
      ("enable_small_channel", _Option(False, _BOOL)),
      ("deterministic", _Option(0, [0, 1])),
      ("op_precision_mode", _Option()),
      ("graph_exec_timeout", _Option()),
      ("topo_sorting_mode", _Option(None, [0, 1, None])),
      ("customize_dtypes", _Option()),
      ("overflow_flag", _Option(1, [0, 1])),
      ("stream_sync_timeout", _Option(-1)),
      ("event_sync_timeout", _Option(-1)),
      ("external_weight", _Option(False, _BOOL)),
      ("memory_config", _Option(MemoryConfig)),
      ("jit_compile", _Option("auto", ["true", "false", "auto"])),
      ("graph_compiler_cache_dir", _Option()),
      ("experimental", _Option(NpuExperimentalConfig)),
      ("precision_mode_v2", _Option(None, [
          "fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16"])),
  )
