"""BiT fine-tuning model_fn: ResNet-v2 (GN + WS), BiT-HyperRule schedule, shared head."""
from estimators import finetune
from estimators import schedules
from estimators.bit import network
from estimators.bit import weights


def learning_rate(global_step, config):
  """Linear warm-up, then lr / 10 after each boundary (bit_hyperrule.get_lr)."""
  boundaries = list(config["lr_boundaries"])
  if not boundaries:
    return schedules.learning_rate(global_step, "constant", config["learning_rate"],
                                   warmup_steps=config["warmup_steps"])
  return schedules.learning_rate(global_step, "piecewise", config["learning_rate"],
                                 boundaries=boundaries,
                                 factors=[0.1 ** i for i in range(len(boundaries) + 1)],
                                 warmup_steps=config["warmup_steps"])


def model_fn(features, labels, mode, config):
  """config (the run's Config, or a Mapping with these): variant (or network_config),
  num_classes, weights, reset_head, learning_rate, warmup_steps, lr_boundaries, momentum,
  grad_clip_norm, loss_scale; class_names (None: predictions without class_name)."""
  return finetune.fine_tuning_spec(features, labels, mode, config, network.build,
                                   weights.Filter, learning_rate)
