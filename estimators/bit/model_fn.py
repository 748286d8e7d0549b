"""BiT fine-tuning model_fn: ResNet-v2 (GN + WS), BiT-HyperRule schedule, shared head."""
import tensorflow.compat.v1 as tf

from estimators import finetune
from estimators import predictions as predictions_lib
from estimators import schedules
from estimators.bit import network
from estimators.bit import weights


def learning_rate(global_step, params):
  """Linear warm-up, then lr / 10 after each boundary (bit_hyperrule.get_lr)."""
  boundaries = list(params["lr_boundaries"])
  if not boundaries:
    return schedules.learning_rate(global_step, "constant", params["learning_rate"],
                                   warmup_steps=params["warmup_steps"])
  return schedules.learning_rate(global_step, "piecewise", params["learning_rate"],
                                 boundaries=boundaries,
                                 factors=[0.1 ** i for i in range(len(boundaries) + 1)],
                                 warmup_steps=params["warmup_steps"])


def network_config(params):
  """params["network_config"] (a custom BiTConfig) or the named variant."""
  if params.get("network_config") is not None:
    return params["network_config"]
  return network.get_config(params["variant"])


def model_fn(features, labels, mode, params):
  """params: variant (or network_config), num_classes, weights, reset_head,
  learning_rate, warmup_steps, lr_boundaries, momentum, grad_clip_norm
  (+ loss_scale, batch_size from the run loop); class_names (None: predictions without
  class_name)."""
  config = network_config(params)
  spec = finetune.fine_tuning_spec(
      features, labels, mode, params,
      lambda images, training: network.bit(images, config, params["num_classes"]),
      weights.scaffold, learning_rate)
  if mode == tf.estimator.ModeKeys.PREDICT:
    return predictions_lib.with_input_fields(spec, features, params.get("class_names"))
  return spec
