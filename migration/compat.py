"""Drop-in replacements for TPU- and GPU-only TensorFlow APIs: what `migration.convert` ports to.

Every name here has the signature of the API it replaces, so a ported script differs from
the original only in the names it calls. Each runs on the backend `migration.runtime`
picks (from `MIGRATION_*` environment variables): through `npu_bridge` on an Ascend NPU,
with plain TensorFlow on a GPU or CPU. There is no TPU here, so a script's own TPU
switches (`use_tpu=True`, a TPU name) are accepted and logged, never fatal.
"""
import os
import re

import tensorflow as tf_root
import tensorflow.compat.v1 as tf
from absl import logging
# The modules behind tf.compat.v1.estimator.tpu (same on TF 1.15 and 2.x), imported
# directly: through the public name TF 1.15 logs a deprecation warning per attribute.
from tensorflow_estimator.python.estimator.tpu import tpu_config as _tpu_config
from tensorflow_estimator.python.estimator.tpu import tpu_estimator as _tpu_estimator

from migration import estimator as estimator_lib
from migration import optimizers
from migration import precision
from migration import run_config as run_config_lib
from migration import runtime
from migration import session as session_lib

# Pure-Python value classes of the TPU Estimator: kept as they are (they validate their
# arguments as on a TPU); the RunConfig below reads what applies off the TPU.
TPUConfig = _tpu_config.TPUConfig
InputPipelineConfig = _tpu_config.InputPipelineConfig


def _backend():
  return runtime.settings().backend


def _where(backend):
  return "npu via %s" % backend.adapter.__name__ if backend.is_npu else backend.device


def rank_size():
  """Devices in this data-parallel run: RANK_SIZE on the NPU, else 1."""
  return optimizers.rank_size() if _backend().is_npu else 1


def rank_id():
  return int(os.environ.get("RANK_ID", "0")) if rank_size() > 1 else 0


# --- Estimator -------------------------------------------------------------------------------

def _npu_options(iterations_per_loop=None):
  npu_opts = runtime.settings().npu_opts
  if iterations_per_loop is not None and iterations_per_loop != npu_opts.iterations_per_loop:
    if npu_opts.iterations_per_loop != run_config_lib.NPU_DEFAULTS.iterations_per_loop:
      logging.info("iterations_per_loop=%d from the script's TPUConfig overrides "
                   "MIGRATION_ITERATIONS_PER_LOOP=%d", iterations_per_loop,
                   npu_opts.iterations_per_loop)
    npu_opts = npu_opts._replace(iterations_per_loop=iterations_per_loop)
  return npu_opts


def _backend_run_config(config):
  """Any RunConfig (None: a default one) -> the backend's, keeping a TPUConfig's loop size."""
  config = config or tf.estimator.RunConfig()
  tpu_config = getattr(config, "tpu_config", None)
  iterations = tpu_config.iterations_per_loop if tpu_config is not None else None
  return run_config_lib.to_backend(config, _backend(), _npu_options(iterations))


def RunConfig(tpu_config=None, evaluation_master=None, master=None, cluster=None, **kwargs):  # pylint: disable=invalid-name
  """tf.estimator.tpu.RunConfig: the backend's RunConfig (NPURunConfig on the NPU).

  From `tpu_config` the loop size is kept (`iterations_per_loop`, the NPU's loop too);
  `num_shards` and `per_host_input_for_training` describe TPU cores and their infeed, and
  `cluster`/`master` a TPU to connect to: logged and left out.
  """
  if cluster is not None or master or evaluation_master:
    logging.info("RunConfig: TPU cluster/master ignored; running on %s", _backend().device)
  tpu_config = tpu_config or TPUConfig()
  if tpu_config.num_shards not in (None, 1):
    logging.info("TPUConfig(num_shards=%d): TPU cores; this run has %d device(s) and keeps "
                 "the global batch size", tpu_config.num_shards, rank_size())
  config = tf.estimator.RunConfig(**kwargs)
  config = run_config_lib.to_backend(
      config, _backend(), _npu_options(tpu_config.iterations_per_loop))
  config.tpu_config = tpu_config
  return config


def _float32_features(model_fn, compute_dtype):
  """TPU input pipelines often emit bfloat16 images (half the infeed). Where this run does
  not compute in bfloat16 they are cast to float32 before the model sees them."""
  if compute_dtype == "bfloat16":
    return model_fn

  def _cast(tensor):
    if isinstance(tensor, tf.Tensor) and tensor.dtype == tf.bfloat16:
      logging.log_first_n(logging.INFO, "bfloat16 features cast to float32 (this run "
                          "computes %s)", 1, compute_dtype)
      return tf.cast(tensor, tf.float32)
    return tensor

  def _model_fn(features, labels, mode, params, config):
    features = tf.nest.map_structure(_cast, features)
    return estimator_lib.call_with_named_args(model_fn, features=features, labels=labels,
                                              mode=mode, params=params, config=config)

  return _model_fn


def _per_device(batch_size):
  """A global batch size -> this device's share (TPUEstimator's per-shard batch)."""
  devices = rank_size()
  if batch_size is None or devices == 1:
    return batch_size
  if batch_size % devices:
    raise SystemExit("error: batch size %d does not divide over RANK_SIZE=%d devices"
                     % (batch_size, devices))
  logging.info("global batch %d over %d devices: %d per device", batch_size, devices,
               batch_size // devices)
  return batch_size // devices


def _estimator(model_fn, model_dir, config, params, warm_start_from, batch_sizes=(None,) * 3):
  settings = runtime.settings()
  config = _backend_run_config(config)
  if model_dir and config.model_dir and model_dir != config.model_dir:
    raise ValueError("model_dir=%s differs from config.model_dir=%s"
                     % (model_dir, config.model_dir))
  if model_dir and not config.model_dir:
    config = config.replace(model_dir=model_dir)
  compute_dtype = precision.compute_dtype(settings.backend, settings.npu_opts.precision_mode)
  estimator = estimator_lib.create_estimator(
      _float32_features(model_fn, compute_dtype), config, params,
      *[_per_device(size) for size in batch_sizes], warm_start_from=warm_start_from,
      backend=settings.backend)
  logging.info("migration: %s with %s on %s", type(estimator).__mro__[2].__name__,
               type(config).__name__, _where(settings.backend))
  return estimator


def TPUEstimator(model_fn=None, model_dir=None, config=None, params=None, use_tpu=True,  # pylint: disable=invalid-name
                 train_batch_size=None, eval_batch_size=None, predict_batch_size=None,
                 batch_axis=None, eval_on_tpu=True, export_to_tpu=True, export_to_cpu=True,
                 warm_start_from=None, embedding_config_spec=None,
                 export_saved_model_api_version=None):
  """tf.estimator.tpu.TPUEstimator on the NPU, GPU or CPU (see migration.estimator).

  Batch sizes are global, as on the TPU: `params["batch_size"]` is each device's share.
  TPU-only arguments are accepted and have no effect; `use_tpu=True` is logged.
  """
  del batch_axis, eval_on_tpu, export_to_tpu, export_to_cpu, export_saved_model_api_version
  if embedding_config_spec is not None:
    raise ValueError("TPUEstimator(embedding_config_spec=...) needs a TPU; not supported")
  if use_tpu:
    logging.info("TPUEstimator(use_tpu=True): no TPU here, running on %s", _backend().device)
  return _estimator(model_fn, model_dir, config, params, warm_start_from,
                    (train_batch_size, eval_batch_size, predict_batch_size))


def Estimator(model_fn, model_dir=None, config=None, params=None, warm_start_from=None):  # pylint: disable=invalid-name
  """tf.estimator.Estimator: NPUEstimator with NPURunConfig on the NPU, itself elsewhere."""
  return _estimator(model_fn, model_dir, config, params, warm_start_from)


def run_config(config=None):
  """A canned estimator's `config=`: the backend's session settings on the given RunConfig."""
  config = config or tf.estimator.RunConfig()
  settings = runtime.settings()
  if not settings.backend.is_npu:
    return run_config_lib.to_backend(config, settings.backend, settings.npu_opts)
  return config.replace(session_config=session_config(config.session_config))


def TPUEstimatorSpec(*args, **kwargs):  # pylint: disable=invalid-name
  """tf.estimator.tpu.TPUEstimatorSpec (same arguments, same checks) as the backend's
  EstimatorSpec: eval_metrics -> eval_metric_ops, scaffold_fn -> scaffold, host_call ->
  summaries written on the host (NPUEstimatorSpec's host_call on the NPU)."""
  spec = _tpu_estimator.TPUEstimatorSpec(*args, **kwargs)
  return estimator_lib.convert_spec(spec, spec.mode, _backend())


class TPUClusterResolver(object):
  """tf.distribute.cluster_resolver.TPUClusterResolver with nothing to resolve: no TPU
  name, zone or GCP project is needed; the run uses this machine's device."""

  def __init__(self, tpu=None, zone=None, project=None, job_name="worker",
               coordinator_name=None, coordinator_address=None, credentials="default",
               service=None, discovery_url=None):
    del zone, project, job_name, coordinator_name, coordinator_address, credentials
    del service, discovery_url
    if tpu:
      logging.info("TPUClusterResolver(tpu=%r): no TPU here; ignored", tpu)
    self.task_type = None
    self.task_id = None
    self.rpc_layer = None
    self.environment = ""

  def master(self, task_type=None, task_id=None, rpc_layer=None):
    del task_type, task_id, rpc_layer
    return ""

  get_master = master

  def cluster_spec(self):
    return tf.train.ClusterSpec({})

  def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
    del task_type, task_id, config_proto
    return {}


# --- Training ----------------------------------------------------------------------------------

def CrossShardOptimizer(opt, reduction="mean", name=None, group_assignment=None):  # pylint: disable=invalid-name
  """tf.tpu.CrossShardOptimizer: NPUDistributedOptimizer when several NPU devices train, a
  pass-through on one; where TPU code wraps its optimizer, so loss scaling
  (MIGRATION_LOSS_SCALE; auto: dynamic for fp16) is applied here too."""
  settings = runtime.settings()
  optimizer = optimizers.cross_shard_optimizer(opt, reduction, name, group_assignment,
                                               settings.backend)
  manager = optimizers.loss_scale_manager(settings.loss_scale, settings.backend)
  return optimizer if manager is None else LossScaleOptimizer(optimizer, manager)


def _float32_variables(getter, *args, **kwargs):
  if kwargs.get("dtype") == tf.bfloat16:
    kwargs["dtype"] = tf.float32
  return getter(*args, **kwargs)


def bfloat16_scope(name=None):
  """tf.tpu.bfloat16_scope where this run computes bfloat16 (MIGRATION_PRECISION_MODE on a
  backend that has it). Elsewhere a scope of the same name whose bfloat16 variables are
  float32, as the TPU stores them: the model runs float32 (logged), same checkpoints."""
  settings = runtime.settings()
  dtype = precision.compute_dtype(settings.backend, settings.npu_opts.precision_mode)
  if dtype == "bfloat16":
    return tf.tpu.bfloat16_scope(name)
  logging.log_first_n(logging.INFO, "tf.tpu.bfloat16_scope: this run computes %s "
                      "(precision_mode=%s on %s)", 1, dtype, settings.npu_opts.precision_mode,
                      settings.backend.device)
  return tf.variable_scope(name or "", custom_getter=_float32_variables)


def bfloat16_or_float32():
  """tf.bfloat16 as the dtype of a hand-written cast in TPU code: itself where this run
  computes bfloat16, else float32 (logged), so the model runs as bfloat16_scope's does."""
  settings = runtime.settings()
  dtype = precision.compute_dtype(settings.backend, settings.npu_opts.precision_mode)
  if dtype != "bfloat16":
    logging.log_first_n(logging.INFO, "casts to bfloat16 run as float32 here (precision_mode"
                        "=%s on %s)", 1, settings.npu_opts.precision_mode,
                        settings.backend.device)
  return tf.bfloat16 if dtype == "bfloat16" else tf.float32


def cross_replica_sum(x, group_assignment=None, name=None):
  """tpu_ops.cross_replica_sum: an HCCL allreduce over the NPU ranks; identity on one."""
  if group_assignment is not None:
    raise NotImplementedError("cross_replica_sum(group_assignment=...) has no NPU/CPU "
                              "equivalent here")
  if rank_size() > 1:
    return optimizers.all_reduce_sum(x, _backend())
  return tf.identity(x, name=name)


class _TpuContext(object):
  """What tpu_function.get_tpu_context() answers: the number of data-parallel devices."""

  def __init__(self, number_of_shards):
    self.number_of_shards = number_of_shards

  def set_number_of_shards(self, number_of_shards):
    self.number_of_shards = number_of_shards


def get_tpu_context():
  """tpu_function.get_tpu_context(): number_of_shards is the NPU rank size, 1 elsewhere."""
  return _TpuContext(rank_size())


def outside_compilation(computation, *args, **kwargs):
  """tf.tpu.outside_compilation: everything runs where it is placed here; just call it."""
  return computation(*args, **kwargs)


def initialize_system(embedding_config=None, job=None, compilation_failure_closes_chips=True,
                      tpu_cancellation_closes_chips=None):
  """tf.tpu.initialize_system: nothing to initialise off the TPU."""
  del embedding_config, job, compilation_failure_closes_chips, tpu_cancellation_closes_chips
  return tf.no_op(name="initialize_system")


def shutdown_system(job=None):
  del job
  return tf.no_op(name="shutdown_system")


def AsyncCheckpointSaverHook(checkpoint_dir, save_secs=None, save_steps=None, saver=None,  # pylint: disable=invalid-name
                             checkpoint_basename="model.ckpt", scaffold=None, listeners=None):
  """TPU async checkpointing -> a synchronous CheckpointSaverHook (the TPU version saves
  while the device trains on; here saving in line is what keeps checkpoints consistent)."""
  return tf.train.CheckpointSaverHook(checkpoint_dir, save_secs=save_secs,
                                      save_steps=save_steps, saver=saver,
                                      checkpoint_basename=checkpoint_basename,
                                      scaffold=scaffold, listeners=listeners)


class TPUProfilerHook(tf.train.SessionRunHook):
  """The TPU profiler hook (it runs capture_tpu_profile against a TPU): a no-op here; use
  MIGRATION_ENABLE_PROFILING on the NPU or TensorBoard's profiler elsewhere."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    logging.info("TPUProfilerHook: TPU-only, dropped (see MIGRATION_ENABLE_PROFILING)")


# --- Ops and input pipelines -------------------------------------------------------------------

def _dropout(original, keep_prob_of):
  """A dropout with `original`'s signature: npu_ops.dropout through npu_bridge (as Huawei's
  tool ports it), `original` itself elsewhere."""

  def dropout(*args, **kwargs):
    if not _backend().uses_npu_bridge:
      return original(*args, **kwargs)
    bound = _bind(original, args, kwargs)
    if bound.get("noise_shape") is not None:
      return original(*args, **kwargs)
    npu_ops = _backend().npu_module("estimator.npu_ops")
    return npu_ops.dropout(bound["x"], keep_prob=keep_prob_of(bound), seed=bound.get("seed"),
                           name=bound.get("name"))

  dropout.__doc__ = "%s, through npu_ops.dropout on the NPU." % original.__name__
  return dropout


def _bind(function, args, kwargs):
  import inspect  # pylint: disable=g-import-not-at-top
  bound = inspect.signature(function).bind(*args, **kwargs)
  bound.apply_defaults()
  return dict(bound.arguments)


def _v1_keep_prob(bound):
  return 1.0 - bound["rate"] if bound.get("rate") is not None else bound["keep_prob"]


dropout_v1 = _dropout(tf.nn.dropout, _v1_keep_prob)
dropout_v2 = _dropout(tf_root.compat.v2.nn.dropout, lambda bound: 1.0 - bound["rate"])
# `import tensorflow as tf; tf.nn.dropout`: the v1 signature on TF 1.x, v2 on TF 2.x.
dropout = dropout_v1 if tf_root.__version__.startswith("1.") else dropout_v2


def drop_remainder(value):
  """A batch's `drop_remainder`: True on the NPU (static shapes: a last, smaller batch is
  dropped there), `value` elsewhere. A value that is no bool is returned as it is: the
  converter wraps the second argument of any `.batch(...)` method call, and not every
  such method is a Dataset's."""
  return True if _backend().is_npu and isinstance(value, bool) else value


def shard_count(num_shards):
  """`dataset.shard(n, i)`: the NPU rank size when several devices train, else `n`."""
  return rank_size() if rank_size() > 1 else num_shards


def shard_index(index):
  return rank_id() if rank_size() > 1 else index


_TPU_DEVICE = re.compile(r"(^|/)(device:)?TPU(_SYSTEM)?(:|$)", re.IGNORECASE)


def device(name_or_function):
  """`tf.device(...)`'s argument: the host CPU on the NPU (the adapter places the graph, as
  Huawei's tool ports it); TPU devices unpinned elsewhere; everything else unchanged."""
  if _backend().is_npu and not callable(name_or_function):
    return "/cpu:0"
  if isinstance(name_or_function, str) and _TPU_DEVICE.search(name_or_function):
    return ""
  return name_or_function


def session_config(config=None):
  """The `config=` of tf.Session / MonitoredTrainingSession: the script's ConfigProto (or a
  new one) with the NPU's NpuOptimizer on the NPU, auto mixed precision elsewhere."""
  settings = runtime.settings()
  return session_lib.session_config(settings.npu_opts, base=config, backend=settings.backend)


# --- Loss scaling ------------------------------------------------------------------------------

def FixedLossScaleManager(loss_scale):  # pylint: disable=invalid-name
  return optimizers.loss_scale_manager(float(loss_scale), _backend())


def ExponentialUpdateLossScaleManager(init_loss_scale, incr_every_n_steps,  # pylint: disable=invalid-name
                                      decr_every_n_nan_or_inf=2, incr_ratio=2, decr_ratio=0.8):
  cls = (_backend().npu_module("estimator.npu.npu_loss_scale_manager")
         .ExponentialUpdateLossScaleManager if _backend().uses_npu_bridge
         else optimizers.ExponentialUpdateLossScaleManager)
  return cls(init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf, incr_ratio,
             decr_ratio)


def LossScaleOptimizer(opt, loss_scale_manager):  # pylint: disable=invalid-name
  """contrib LossScaleOptimizer: NPULossScaleOptimizer through npu_bridge, the same
  semantics (skip the step on non-finite gradients) elsewhere."""
  return optimizers.loss_scale_optimizer(opt, loss_scale_manager, _backend())


def _manager_for(loss_scale):
  """A tf.train.experimental loss_scale ("dynamic", a number) as a manager; the dynamic
  defaults are TF's (2**15, grow x2 every 2000 finite steps), as Huawei's tool maps them."""
  if loss_scale == "dynamic":
    return ExponentialUpdateLossScaleManager(2 ** 15, 2000)
  return FixedLossScaleManager(loss_scale)


def MixedPrecisionLossScaleOptimizer(opt, loss_scale):  # pylint: disable=invalid-name
  return LossScaleOptimizer(opt, _manager_for(loss_scale))


def enable_mixed_precision_graph_rewrite(opt, loss_scale="dynamic"):
  """On the NPU the precision comes from MIGRATION_PRECISION_MODE, so only the loss
  scaling applies; elsewhere TensorFlow's own function runs."""
  if _backend().is_npu:
    return LossScaleOptimizer(opt, _manager_for(loss_scale))
  return tf.train.experimental.enable_mixed_precision_graph_rewrite(opt, loss_scale)
