"""Learning-rate schedules shared by every model (graph mode, TF 1.15 and TF 2.x compat.v1).

One entry point, `learning_rate(global_step, method, base_lr, ...)`:

  method        lr(step) before warm-up and floor
  ------------  ----------------------------------------------------------------------
  constant      base_lr
  exponential   base_lr * decay_rate ** (step / decay_steps), exponent floored when
                `staircase` (tf.train.exponential_decay semantics)
  cosine        0.5 * base_lr * (1 + cos(pi * min(step, total_steps) / total_steps))
  piecewise     values[i] (or base_lr * factors[i]) where i = number of boundaries b with
                step > b (tf.train.piecewise_constant semantics: the value changes on
                the step after a boundary); "stepwise" is an alias

Then, in this order (as the tensorflow/tpu AmoebaNet reference does):
  warm-up  while step < warmup_steps: lr = base_lr * step / warmup_steps (linear from 0,
           towards base_lr, not towards the decayed value);
  floor    lr = max(lr, min_lr), applied to the warm-up too.
"""
import math

import tensorflow.compat.v1 as tf

METHODS = ("constant", "exponential", "cosine", "piecewise", "stepwise")


def _check(condition, message):
  if not condition:
    raise ValueError(message)


def learning_rate(global_step, method, base_lr, decay_steps=None, decay_rate=None,
                  staircase=True, total_steps=None, boundaries=None, values=None,
                  factors=None, warmup_steps=0, min_lr=0.0, name="learning_rate_schedule"):
  """Returns a float32 scalar tensor: the learning rate at `global_step`.

  Args:
    global_step: int or float scalar tensor (usually tf.train.get_or_create_global_step()).
    method: one of METHODS.
    base_lr: peak learning rate (Python float).
    decay_steps, decay_rate, staircase: for "exponential".
    total_steps: for "cosine" (steps over which lr goes from base_lr to 0).
    boundaries: for "piecewise": increasing step counts.
    values / factors: for "piecewise": len(boundaries) + 1 learning rates, or multipliers
      of base_lr (exactly one of the two).
    warmup_steps: linear warm-up length in steps (0 = none).
    min_lr: floor.
    name: name scope of the schedule's ops; not "learning_rate", which would make the
      model's tf.summary.scalar("learning_rate", ...) tag `learning_rate_1`.
  """
  _check(method in METHODS, "learning-rate method %r is not one of %s"
         % (method, ", ".join(METHODS)))
  _check(warmup_steps >= 0, "warmup_steps must be >= 0, got %r" % (warmup_steps,))
  with tf.name_scope(name):
    step = tf.cast(global_step, tf.float32)
    if method == "constant":
      lr = tf.constant(base_lr, tf.float32)
    elif method == "exponential":
      _check(decay_steps and decay_steps > 0,
             "exponential decay needs decay_steps > 0, got %r" % (decay_steps,))
      _check(decay_rate is not None and decay_rate > 0,
             "exponential decay needs decay_rate > 0, got %r" % (decay_rate,))
      exponent = step / float(decay_steps)
      if staircase:
        exponent = tf.floor(exponent)
      lr = base_lr * tf.pow(tf.constant(decay_rate, tf.float32), exponent)
    elif method == "cosine":
      _check(total_steps and total_steps > 0,
             "cosine decay needs total_steps > 0, got %r" % (total_steps,))
      progress = tf.minimum(step, float(total_steps)) / float(total_steps)
      lr = 0.5 * base_lr * (1.0 + tf.cos(math.pi * progress))
    else:
      lr = _piecewise(step, base_lr, boundaries, values, factors)
    if warmup_steps > 0:
      warmup_lr = base_lr * step / float(warmup_steps)
      lr = tf.where(step < float(warmup_steps), warmup_lr, lr)
    if min_lr:
      lr = tf.maximum(lr, float(min_lr))
    return tf.identity(lr, name="value")


def _piecewise(step, base_lr, boundaries, values, factors):
  _check(boundaries is not None and len(boundaries) > 0,
         "piecewise schedule needs a non-empty list of boundaries")
  _check(list(boundaries) == sorted(boundaries),
         "piecewise boundaries must increase, got %r" % (list(boundaries),))
  _check((values is None) != (factors is None),
         "piecewise schedule needs exactly one of values or factors")
  rates = list(values) if values is not None else [base_lr * f for f in factors]
  _check(len(rates) == len(boundaries) + 1,
         "piecewise schedule needs len(boundaries) + 1 = %d values/factors, got %d"
         % (len(boundaries) + 1, len(rates)))
  index = tf.reduce_sum(tf.cast(step > tf.constant(boundaries, tf.float32), tf.int32))
  return tf.gather(tf.constant(rates, tf.float32), index)
