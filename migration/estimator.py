"""Estimator factory and TPUEstimator compatibility.

`create_estimator` returns an NPUEstimator on the NPU and a tf.estimator.Estimator
elsewhere. Model functions written for TPUEstimator run on either unchanged:
- `params["batch_size"]` is set per mode for the model_fn and the input_fn, as
  TPUEstimator does (train/eval/predict batch sizes);
- a returned TPUEstimatorSpec becomes an EstimatorSpec: `eval_metrics=(fn, tensors)` ->
  `eval_metric_ops`, `scaffold_fn` -> `scaffold`, `host_call` -> summaries written on the
  host every step (NPUEstimatorSpec's own host_call on the NPU);
- `tf.tpu.CrossShardOptimizer`, used inside the model_fn, is replaced while the model_fn
  runs by `migration.optimizers.CrossShardOptimizer` (or NPUDistributedOptimizer on a
  multi-device NPU run): the real one emits ops that have no CPU/GPU/NPU kernel.
Ported scripts call `migration.compat.TPUEstimator`, which builds on `create_estimator`.
"""
import contextlib
import functools
import sys

import tensorflow.compat.v1 as tf

from migration import backend as backend_lib
from migration import optimizers

_MODES = tf.estimator.ModeKeys


def _fn_args(fn):
  import inspect  # pylint: disable=g-import-not-at-top
  target = fn.func if hasattr(fn, "func") else fn
  return set(inspect.signature(target).parameters)


# Under a tf.distribute strategy TF 2.x may hand the model_fn to autograph: model and input
# functions are graph-building Python and run as written.
@tf.autograph.experimental.do_not_convert
def call_with_named_args(fn, **candidates):
  """Calls `fn` with the candidates it names, as Estimator does for model/input fns."""
  names = _fn_args(fn)
  return fn(**{k: v for k, v in candidates.items() if k in names})


def _is_tpu_spec(spec):
  return type(spec).__name__ == "TPUEstimatorSpec" and hasattr(spec, "eval_metrics")


def _call_tensors_fn(fn, tensors):
  """(fn, tensors) pairs take a list (positional) or a dict (keyword) of tensors."""
  return fn(**tensors) if isinstance(tensors, dict) else fn(*tensors)


class _HostCallHook(tf.train.SessionRunHook):
  """Runs host_call ops every step and initialises/flushes the v2 summary writers."""

  def __init__(self, host_ops):
    self._host_ops = host_ops

  def begin(self):
    from tensorflow.python.ops import summary_ops_v2  # pylint: disable=g-import-not-at-top
    self._init_ops = summary_ops_v2.summary_writer_initializer_op()
    self._flush_op = summary_ops_v2.flush()

  def after_create_session(self, session, coord):
    del coord
    session.run(self._init_ops)

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._host_ops)

  def end(self, session):
    session.run(self._flush_op)


def convert_spec(spec, mode, backend=None):
  """A TPUEstimatorSpec -> the EstimatorSpec (or NPUEstimatorSpec) of `backend`."""
  if not _is_tpu_spec(spec):
    return spec
  backend = backend or backend_lib.current()
  eval_metric_ops = None
  if mode == _MODES.EVAL and spec.eval_metrics is not None:
    eval_metric_ops = _call_tensors_fn(*spec.eval_metrics)
  scaffold = spec.scaffold_fn() if spec.scaffold_fn is not None else None
  kwargs = dict(mode=mode, predictions=spec.predictions, loss=spec.loss,
                train_op=spec.train_op, eval_metric_ops=eval_metric_ops,
                export_outputs=spec.export_outputs, scaffold=scaffold,
                training_hooks=list(spec.training_hooks or []),
                evaluation_hooks=list(spec.evaluation_hooks or []),
                prediction_hooks=list(spec.prediction_hooks or []))
  if spec.host_call is not None and mode in (_MODES.TRAIN, _MODES.EVAL):
    if backend.uses_npu_bridge:
      npu_estimator = backend.npu_module("estimator.npu.npu_estimator")
      return npu_estimator.NPUEstimatorSpec(host_call=spec.host_call, **kwargs)
    host_ops = _call_tensors_fn(*spec.host_call)
    hook_list = "training_hooks" if mode == _MODES.TRAIN else "evaluation_hooks"
    kwargs[hook_list].append(_HostCallHook(host_ops))
  return tf.estimator.EstimatorSpec(**kwargs)


@contextlib.contextmanager
def tpu_optimizer_stand_in(backend):
  """Replaces every loaded binding of tf's CrossShardOptimizer while the block runs."""
  from tensorflow.python.tpu import tpu_optimizer  # pylint: disable=g-import-not-at-top
  original = tpu_optimizer.CrossShardOptimizer
  stand_in = functools.partial(optimizers.cross_shard_optimizer, backend=backend)
  patched = [tpu_optimizer]
  for name, module in list(sys.modules.items()):
    if (name.startswith("tensorflow") and module is not None and
        getattr(module, "CrossShardOptimizer", None) is original):
      patched.append(module)
  for module in patched:
    module.CrossShardOptimizer = stand_in
  try:
    yield
  finally:
    for module in patched:
      module.CrossShardOptimizer = original


# Every evaluation counts what it saw, so that one over no examples is never a result.
EXAMPLES_EVALUATED = "examples_evaluated"


class EmptyEvaluationError(ValueError):
  """An evaluation that saw no examples (raised before any summary of it is written)."""


class _RefuseEmptyEvaluation(tf.train.SessionRunHook):
  """Ends an evaluation over no examples with EmptyEvaluationError: the Estimator writes the
  evaluation's summaries after its hooks end, so no zeros reach TensorBoard."""

  def __init__(self, total):
    self._total = total

  def end(self, session):
    if session.run(self._total) == 0:
      raise EmptyEvaluationError("the evaluation saw no examples")


def _with_example_count(spec, features, labels):
  """`spec` with an `examples_evaluated` metric and the hook refusing a count of 0."""
  tensor = tf.nest.flatten(labels if labels is not None else features)[0]
  with tf.control_dependencies([tensor]):  # a static batch size must wait for real data
    batch = tf.shape(tensor, out_type=tf.int64)[0]
  total = tf.Variable(0, dtype=tf.int64, trainable=False, name=EXAMPLES_EVALUATED,
                      collections=[tf.GraphKeys.LOCAL_VARIABLES,
                                   tf.GraphKeys.METRIC_VARIABLES])
  metrics = dict(spec.eval_metric_ops or {})
  metrics[EXAMPLES_EVALUATED] = (tf.identity(total), tf.assign_add(total, batch))
  hooks = list(spec.evaluation_hooks or []) + [_RefuseEmptyEvaluation(total)]
  replaced = spec._replace(eval_metric_ops=metrics, evaluation_hooks=hooks)
  if hasattr(spec, "_host_call"):  # NPUEstimatorSpec keeps it outside the tuple
    replaced._host_call = spec._host_call  # pylint: disable=protected-access
  return replaced


def compat_model_fn(model_fn, batch_sizes, backend=None):
  """Wraps a model_fn (Estimator- or TPUEstimator-style) for `create_estimator`."""

  def _model_fn(features, labels, mode, params, config):
    active = backend or backend_lib.current()
    params = dict(params or {})
    if batch_sizes.get(mode) is not None:
      params["batch_size"] = batch_sizes[mode]
    with tpu_optimizer_stand_in(active):
      spec = call_with_named_args(model_fn, features=features, labels=labels, mode=mode,
                                   params=params, config=config)
    spec = convert_spec(spec, mode, active)
    if mode == _MODES.EVAL:
      spec = _with_example_count(spec, features, labels)
    if mode == _MODES.TRAIN and active.uses_npu_device and optimizers.rank_size() > 1:
      hooks = list(spec.training_hooks) + [optimizers.BroadcastVariablesHook(active.adapter)]
      spec = spec._replace(training_hooks=hooks)
    return spec

  return _model_fn


def _with_batch_size(input_fn, batch_size):
  """An input_fn whose `params["batch_size"]` is `batch_size` (TPUEstimator convention)."""
  if batch_size is None:
    return input_fn

  def _input_fn(params, mode, config, input_context=None):
    params = dict(params or {}, batch_size=batch_size)
    return call_with_named_args(input_fn, params=params, mode=mode, config=config,
                                 input_context=input_context)

  return _input_fn


class _BatchSizeMixin(object):
  """Gives each mode's input_fn its batch size through params, as TPUEstimator does."""

  _batch_sizes = {}

  def train(self, input_fn, *args, **kwargs):
    return super(_BatchSizeMixin, self).train(
        _with_batch_size(input_fn, self._batch_sizes.get(_MODES.TRAIN)), *args, **kwargs)

  def evaluate(self, input_fn, *args, **kwargs):
    return super(_BatchSizeMixin, self).evaluate(
        _with_batch_size(input_fn, self._batch_sizes.get(_MODES.EVAL)), *args, **kwargs)

  def predict(self, input_fn, *args, **kwargs):
    return super(_BatchSizeMixin, self).predict(
        _with_batch_size(input_fn, self._batch_sizes.get(_MODES.PREDICT)), *args, **kwargs)


def create_estimator(model_fn, config, params=None, train_batch_size=None,
                     eval_batch_size=None, predict_batch_size=None, warm_start_from=None,
                     backend=None):
  """NPUEstimator through npu_bridge, tf.estimator.Estimator elsewhere (npu_device runs it
  as it is), TPU-compatible on both."""
  backend = backend or backend_lib.current()
  batch_sizes = {_MODES.TRAIN: train_batch_size, _MODES.EVAL: eval_batch_size,
                 _MODES.PREDICT: predict_batch_size or eval_batch_size}
  if backend.uses_npu_bridge:
    base = backend.npu_module("estimator.npu.npu_estimator").NPUEstimator
  else:
    base = tf.estimator.Estimator
  cls = type(base.__name__, (_BatchSizeMixin, base), {"_batch_sizes": batch_sizes})
  return cls(model_fn=compat_model_fn(model_fn, batch_sizes, backend), config=config,
             params=params, warm_start_from=warm_start_from)
