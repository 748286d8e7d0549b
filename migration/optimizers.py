"""Optimizer wrappers per backend: cross-shard/distributed averaging and loss scaling.

Model code calls `wrap_optimizer(opt, params)` once; the result is
- through npu_bridge: `NPUDistributedOptimizer` when RANK_SIZE > 1, then
  `NPULossScaleOptimizer` with a Fixed/ExponentialUpdate manager when loss scaling is on;
- through npu_device: `AllReduceOptimizer` when RANK_SIZE > 1, then the loss scaling below;
- elsewhere: the optimizer itself, or `LossScaleOptimizer` below, which follows the NPU
  semantics exactly (npu_bridge_api.md §4), so a run behaves the same on both: gradients of
  the scaled loss are unscaled, a step with non-finite gradients is skipped (including its
  global_step increment) and logged, and the manager updates the scale.

`params["loss_scale"]` is "none", "dynamic" or a number (a fixed scale); the run loop sets
it from `--loss_scale`, which by default follows `--precision_mode`.
"""
import os

import tensorflow.compat.v1 as tf

from migration import backend as backend_lib

# AmoebaNet-D's NPU settings (npu_bridge_api.md §4.2), used for "dynamic".
DYNAMIC_LOSS_SCALE = dict(init_loss_scale=2.0 ** 32, incr_every_n_steps=1000,
                          decr_every_n_nan_or_inf=2, incr_ratio=2.0, decr_ratio=0.5)
_FLOAT32_MAX = 3.4e38


def rank_size(environ=None):
  """RANK_SIZE, else CM_WORKER_SIZE, else 1 (a non-numeric value counts as 1)."""
  env = os.environ if environ is None else environ
  value = env.get("RANK_SIZE", env.get("CM_WORKER_SIZE", "1"))
  return int(value) if value.isdigit() else 1


class FixedLossScaleManager(object):
  """A constant loss scale (>= 1)."""

  def __init__(self, loss_scale):
    if loss_scale < 1:
      raise ValueError("loss_scale must be >= 1, got %r" % loss_scale)
    self._scale = float(loss_scale)

  def get_loss_scale(self):
    return tf.constant(self._scale, tf.float32)

  def update_loss_scale(self, finite_grads):
    del finite_grads
    return tf.no_op()


class ExponentialUpdateLossScaleManager(object):
  """Dynamic loss scale with the NPU update rule (grow every N good steps, shrink on
  `decr_every_n_nan_or_inf` bad ones, never below 1 and never past float32 range)."""

  def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2,
               incr_ratio=2.0, decr_ratio=0.8):
    self._incr_every = incr_every_n_steps
    self._decr_every = decr_every_n_nan_or_inf
    self._incr_ratio = float(incr_ratio)
    self._decr_ratio = float(decr_ratio)
    with tf.variable_scope("loss_scale", reuse=tf.AUTO_REUSE):
      self._scale = tf.get_variable("scale", initializer=float(init_loss_scale),
                                    trainable=False)
      self._good = tf.get_variable("good_steps", initializer=0, trainable=False)
      self._bad = tf.get_variable("bad_steps", initializer=0, trainable=False)

  def get_loss_scale(self):
    return self._scale.read_value()

  def update_loss_scale(self, finite_grads):
    # Read all three once, before any assignment: resource-variable reads are not ordered
    # against assignments in the same step otherwise.
    scale, good, bad = (v.read_value() for v in (self._scale, self._good, self._bad))
    with tf.control_dependencies([scale, good, bad]):
      grow = tf.logical_and(good + 1 >= self._incr_every,
                            scale < _FLOAT32_MAX / self._incr_ratio)
      shrink = bad + 1 >= self._decr_every
      new_scale = tf.where(
          finite_grads,
          tf.where(grow, scale * self._incr_ratio, scale),
          tf.where(shrink, tf.maximum(1.0, scale * self._decr_ratio), scale))
      new_good = tf.where(tf.logical_and(finite_grads, good + 1 < self._incr_every),
                          good + 1, 0)
      threshold = tf.where(finite_grads, good + 1 >= self._incr_every, shrink)
      new_bad = tf.where(threshold, 0, tf.where(finite_grads, bad, bad + 1))
      return tf.group(tf.assign(self._scale, new_scale), tf.assign(self._good, new_good),
                      tf.assign(self._bad, new_bad))


class _DelegatingOptimizer(tf.train.Optimizer):
  """An optimizer that hands every call to the one it wraps (subclasses override some)."""

  def __init__(self, optimizer, name):
    super(_DelegatingOptimizer, self).__init__(use_locking=False, name=name)
    self._optimizer = optimizer

  def compute_gradients(self, loss, var_list=None, **kwargs):
    return self._optimizer.compute_gradients(loss, var_list=var_list, **kwargs)

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    return self._optimizer.apply_gradients(grads_and_vars, global_step, name)

  def get_slot(self, var, name):
    return self._optimizer.get_slot(var, name)

  def get_slot_names(self):
    return self._optimizer.get_slot_names()

  def variables(self):
    return self._optimizer.variables()

  def _apply_dense(self, grad, var):
    raise NotImplementedError("%s delegates apply_gradients" % type(self).__name__)

  def _resource_apply_dense(self, grad, handle):
    raise NotImplementedError("%s delegates apply_gradients" % type(self).__name__)


class LossScaleOptimizer(_DelegatingOptimizer):
  """Loss scaling for CPU/GPU with NPULossScaleOptimizer's behaviour."""

  def __init__(self, optimizer, loss_scale_manager, name="LossScaleOptimizer"):
    super(LossScaleOptimizer, self).__init__(optimizer, name)
    self._manager = loss_scale_manager

  def compute_gradients(self, loss, var_list=None, **kwargs):
    scale = self._manager.get_loss_scale()
    grads_and_vars = self._optimizer.compute_gradients(loss * scale, var_list=var_list,
                                                       **kwargs)
    return [(None if g is None else g / scale, v) for g, v in grads_and_vars]

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    grads_and_vars = list(grads_and_vars)
    grads = [g for g, _ in grads_and_vars if g is not None]
    finite = tf.reduce_all([tf.reduce_all(tf.is_finite(g)) for g in grads])

    def _apply():
      return self._optimizer.apply_gradients(grads_and_vars, global_step, name)

    def _skip():
      step = global_step if global_step is not None else -1
      return tf.print("loss scaling: non-finite gradients at global_step", step,
                      "- step skipped; loss scale was", self._manager.get_loss_scale(),
                      output_stream=tf.logging.warning)

    apply_op = tf.cond(finite, lambda: tf.group(_apply()), lambda: tf.group(_skip()))
    return tf.group(apply_op, self._manager.update_loss_scale(finite))


class CrossShardOptimizer(_DelegatingOptimizer):
  """Stand-in for `tf.tpu.CrossShardOptimizer` off the TPU.

  With one shard the TPU version is an average over one replica; the real class emits
  CrossReplicaSum ops that have no CPU/GPU/NPU kernel. On the NPU with RANK_SIZE > 1 the
  averaging is done by NPUDistributedOptimizer (see `wrap_optimizer`).
  """

  def __init__(self, opt, reduction="mean", name="CrossShardOptimizer", group_assignment=None):
    del reduction, group_assignment
    super(CrossShardOptimizer, self).__init__(opt, name)


class AllReduceOptimizer(_DelegatingOptimizer):
  """Data parallelism through npu_device (TF 2.x): gradients are averaged over the ranks
  with npu_device.distribute.all_reduce before they are applied."""

  def __init__(self, optimizer, npu_device, name="AllReduceOptimizer"):
    super(AllReduceOptimizer, self).__init__(optimizer, name)
    self._npu_device = npu_device

  def compute_gradients(self, loss, var_list=None, **kwargs):
    grads_and_vars = self._optimizer.compute_gradients(loss, var_list=var_list, **kwargs)
    reduced = iter(self._npu_device.distribute.all_reduce(
        [g for g, _ in grads_and_vars if g is not None], "mean"))
    return [(None if g is None else next(reduced), v) for g, v in grads_and_vars]


class BroadcastVariablesHook(tf.train.SessionRunHook):
  """Starts every rank from rank `root_rank`'s initial variables (npu_device); npu_bridge's
  NPUEstimator adds its own NPUBroadcastGlobalVariablesHook."""

  def __init__(self, npu_device, root_rank=0):
    self._npu_device = npu_device
    self._root_rank = root_rank

  def begin(self):
    self._broadcast = self._npu_device.distribute.broadcast(tf.global_variables(),
                                                            self._root_rank)

  def after_create_session(self, session, coord):
    del coord
    session.run(self._broadcast)


def distributed_optimizer(optimizer, backend=None):
  """`optimizer` averaging gradients over the NPU ranks when several train, else itself."""
  backend = backend or backend_lib.current()
  if not backend.is_npu or rank_size() == 1:
    return optimizer
  if backend.uses_npu_bridge:
    return backend.npu_module("estimator.npu.npu_optimizer").NPUDistributedOptimizer(optimizer)
  return AllReduceOptimizer(optimizer, backend.adapter)


def all_reduce_sum(tensor, backend=None):
  """The sum of `tensor` over the NPU ranks (HCCL); `tensor` itself on one device."""
  backend = backend or backend_lib.current()
  if not backend.is_npu or rank_size() == 1:
    return tensor
  if backend.uses_npu_bridge:
    return backend.npu_module("hccl.hccl_ops").allreduce(tensor, "sum")
  return backend.adapter.distribute.all_reduce(tensor, "sum")


def cross_shard_optimizer(opt, reduction="mean", name=None, group_assignment=None,
                          backend=None):
  """`tf.tpu.CrossShardOptimizer` for the backend: averaging over the NPU ranks when several
  train, else the single-shard pass-through above."""
  backend = backend or backend_lib.current()
  if backend.is_npu and rank_size() > 1:
    return distributed_optimizer(opt, backend)
  return CrossShardOptimizer(opt, reduction, name or "CrossShardOptimizer", group_assignment)


def loss_scale_manager(loss_scale, backend=None):
  """The manager for a `--loss_scale` value, or None for "none"."""
  backend = backend or backend_lib.current()
  if loss_scale in (None, "none"):
    return None
  if backend.uses_npu_bridge:
    managers = backend.npu_module("estimator.npu.npu_loss_scale_manager")
    fixed, dynamic = (managers.FixedLossScaleManager,
                      managers.ExponentialUpdateLossScaleManager)
  else:
    fixed, dynamic = FixedLossScaleManager, ExponentialUpdateLossScaleManager
  if loss_scale == "dynamic":
    return dynamic(**DYNAMIC_LOSS_SCALE)
  return fixed(loss_scale=float(loss_scale))


def loss_scale_optimizer(optimizer, manager, backend=None):
  """NPULossScaleOptimizer through npu_bridge, the LossScaleOptimizer above elsewhere
  (npu_device's own NpuLossScaleOptimizer wraps Keras optimizers, not these)."""
  backend = backend or backend_lib.current()
  if backend.uses_npu_bridge:
    scaler = backend.npu_module("estimator.npu.npu_loss_scale_optimizer")
    return scaler.NPULossScaleOptimizer(optimizer, manager, is_distributed=rank_size() > 1)
  return LossScaleOptimizer(optimizer, manager)


def wrap_optimizer(optimizer, params, backend=None):
  """Wraps `optimizer` for the active backend (see the module docstring)."""
  backend = backend or backend_lib.current()
  manager = loss_scale_manager(params.get("loss_scale", "none"), backend)
  optimizer = distributed_optimizer(optimizer, backend)
  return optimizer if manager is None else loss_scale_optimizer(optimizer, manager, backend)
