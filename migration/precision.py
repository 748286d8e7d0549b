"""`--precision_mode` off the NPU: never silently ignored.

On the NPU the mode goes to NPURunConfig. Elsewhere the reduced-precision modes turn on
TensorFlow's own automatic mixed precision (a grappler rewrite of the graph):
- GPU: fp16 auto mixed precision (with dynamic loss scaling);
- CPU: bf16 auto mixed precision where the TF build has it (TF 2.x oneDNN builds), else
  fp32, said in one log line.
The fp32-keeping modes (force_fp32, must_keep_origin_dtype) and an unset mode run fp32.
"""
from absl import logging
from tensorflow.core.protobuf import rewriter_config_pb2

from migration import validation

REDUCED_PRECISION_MODES = (
    "allow_fp32_to_fp16", "force_fp16", "cube_fp16in_fp32out", "allow_mix_precision",
    "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16")
BF16_MODES = ("allow_mix_precision_bf16", "allow_fp32_to_bf16")

_CPU_BF16_FIELDS = ("auto_mixed_precision_onednn_bfloat16", "auto_mixed_precision_mkl")


def _cpu_bf16_field():
  """The RewriterConfig field of the oneDNN bf16 rewrite, if this TF build runs it."""
  fields = rewriter_config_pb2.RewriterConfig.DESCRIPTOR.fields_by_name
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    onednn = _pywrap_util_port.IsMklEnabled()
  except (ImportError, AttributeError):
    onednn = False
  if not onednn:
    return None
  for name in _CPU_BF16_FIELDS:
    if name in fields:
      return name
  return None


def compute_dtype(backend, precision_mode):
  """'float16', 'bfloat16' or 'float32': what the mode runs as on `backend`."""
  if precision_mode not in REDUCED_PRECISION_MODES:
    return "float32"
  if backend.is_npu:
    return "bfloat16" if precision_mode in BF16_MODES else "float16"
  if backend.is_gpu:
    return "float16"
  return "bfloat16" if _cpu_bf16_field() else "float32"


def needs_loss_scaling(backend, precision_mode):
  """Loss scaling follows the mode: fp16 needs it, bf16 and fp32 do not."""
  return compute_dtype(backend, precision_mode) == "float16"


def apply_to_session_config(config, backend, precision_mode):
  """Turns on the auto-mixed-precision rewrite for `precision_mode` off the NPU."""
  if precision_mode not in REDUCED_PRECISION_MODES:
    return config
  rewrite = config.graph_options.rewrite_options
  if backend.is_gpu:
    rewrite.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    logging.info("precision_mode=%s: GPU fp16 auto mixed precision on", precision_mode)
    return config
  field = _cpu_bf16_field()
  if field:
    setattr(rewrite, field, rewriter_config_pb2.RewriterConfig.ON)
    logging.info("precision_mode=%s: CPU bf16 auto mixed precision on (%s)",
                 precision_mode, field)
  else:
    logging.warning("precision_mode=%s: this TensorFlow build has no CPU bf16 auto mixed "
                    "precision; running fp32", precision_mode)
  return config


def resolve_loss_scale(loss_scale, backend, precision_mode):
  """`--loss_scale` -> "none", "dynamic" or a number string; auto follows the precision."""
  if loss_scale == "auto":
    return "dynamic" if needs_loss_scaling(backend, precision_mode) else "none"
  if loss_scale in ("none", "dynamic"):
    return loss_scale
  try:
    if float(loss_scale) >= 1:
      return loss_scale
  except ValueError:
    pass
  raise validation.ConfigError("--loss_scale=%s: expected auto, none, dynamic or a number "
                               ">= 1" % loss_scale)
