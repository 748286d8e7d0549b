"""ViT fine-tuning model_fn: the official network, the vit_jax schedule, the shared head."""
import tensorflow.compat.v1 as tf

from estimators import finetune
from estimators import schedules
from estimators.vit import network
from estimators.vit import weights


def learning_rate(global_step, config):
  """vit_jax `hyper.create_learning_rate_schedule`, decay_type cosine.

  lr = base * 0.5 * (1 + cos(pi * progress)) * min(1, step / warmup), where progress runs
  from 0 to 1 over the steps *after* the warm-up (schedules' cosine counts from step 0,
  so it is given the shifted step).
  """
  base, warmup = config["learning_rate"], config["warmup_steps"]
  step = tf.cast(global_step, tf.float32)
  lr = schedules.learning_rate(tf.maximum(step - warmup, 0.0), "cosine", base,
                               total_steps=config["train_steps"] - warmup)
  if warmup:
    lr = lr * tf.minimum(1.0, step / float(warmup))
  return lr


def model_fn(features, labels, mode, config):
  """config (the run's Config, or a Mapping with these): variant (or network_config),
  num_classes, dropout_rate, attention_dropout_rate, representation_size, weights,
  reset_head, learning_rate, warmup_steps, train_steps, momentum, grad_clip_norm,
  loss_scale; class_names (None: predictions without class_name)."""
  return finetune.fine_tuning_spec(features, labels, mode, config, network.build,
                                   weights.Filter, learning_rate)
