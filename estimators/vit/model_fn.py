"""ViT fine-tuning model_fn: the official network, the vit_jax schedule, the shared head."""
import tensorflow.compat.v1 as tf

from estimators import finetune
from estimators import predictions as predictions_lib
from estimators import schedules
from estimators.vit import network
from estimators.vit import weights


def learning_rate(global_step, params):
  """vit_jax `hyper.create_learning_rate_schedule`, decay_type cosine.

  lr = base * 0.5 * (1 + cos(pi * progress)) * min(1, step / warmup), where progress runs
  from 0 to 1 over the steps *after* the warm-up (schedules' cosine counts from step 0,
  so it is given the shifted step).
  """
  base, warmup = params["learning_rate"], params["warmup_steps"]
  step = tf.cast(global_step, tf.float32)
  lr = schedules.learning_rate(tf.maximum(step - warmup, 0.0), "cosine", base,
                               total_steps=params["train_steps"] - warmup)
  if warmup:
    lr = lr * tf.minimum(1.0, step / float(warmup))
  return lr


def network_config(params):
  """params["network_config"] (a custom ViTConfig) or the variant with the params' dropout
  and representation size."""
  if params.get("network_config") is not None:
    return params["network_config"]
  return network.get_config(params["variant"], dropout_rate=params["dropout_rate"],
                            attention_dropout_rate=params["attention_dropout_rate"],
                            representation_size=params["representation_size"])


def model_fn(features, labels, mode, params):
  """params: variant (or network_config), num_classes, dropout_rate,
  attention_dropout_rate, representation_size, weights, reset_head, learning_rate,
  warmup_steps, train_steps, momentum, grad_clip_norm (+ loss_scale, batch_size);
  class_names (None: predictions without class_name)."""
  config = network_config(params)
  spec = finetune.fine_tuning_spec(
      features, labels, mode, params,
      lambda images, training: network.vit(images, config, params["num_classes"], training),
      weights.scaffold, learning_rate)
  if mode == tf.estimator.ModeKeys.PREDICT:
    return predictions_lib.with_input_fields(spec, features, params.get("class_names"))
  return spec
