"""What the converter knows: TPU/GPU-only API spellings and what each becomes.

Names in source are resolved through the file's imports to a dotted path
(`tf_estimator.tpu.TPUEstimator` with `from tensorflow.compat.v1 import estimator as
tf_estimator` -> `tensorflow.compat.v1.estimator.tpu.TPUEstimator`), then folded to one
canonical path per API (`estimator.tpu.TPUEstimator`), whatever the spelling: the public
`tf`, `tf.compat.v1`/`v2`, `tensorflow_estimator`, `tf.contrib` and the internal
`tensorflow.python...` modules.
"""
import collections

COMPAT = "migration.compat"
HOROVOD = "migration.horovod"

# Package prefixes of the TensorFlow API -> the API flavour they give ("" = the installed
# version's own). Longest first.
_PACKAGES = (
    ("tensorflow.compat.v1", "v1"), ("tensorflow.compat.v2", "v2"),
    ("tensorflow_estimator.compat.v1", "v1"), ("tensorflow_estimator.compat.v2", "v2"),
    ("tensorflow_estimator", ""), ("tensorflow", ""))

# Module paths that hold the same names as a public one, applied until none matches (the
# longest match first): `contrib.tpu.python.tpu.tpu_optimizer.X` -> `tpu.tpu_optimizer.X`
# -> `tpu.X`.
_MODULE_ALIASES = {
    "python.estimator.estimator": "estimator",
    "python.estimator": "estimator",
    "python.tpu": "tpu",
    "python.distribute.cluster_resolver": "distribute.cluster_resolver",
    "contrib.tpu.python.tpu": "tpu",
    "contrib.tpu.python.ops": "tpu.ops",
    "contrib.tpu": "tpu",
    "contrib.cluster_resolver": "distribute.cluster_resolver",
    # Modules inside those packages whose names the package exports.
    "tpu.tpu_estimator": "estimator.tpu",
    "tpu.tpu_config": "estimator.tpu",
    "estimator.tpu.tpu_estimator": "estimator.tpu",
    "estimator.tpu.tpu_config": "estimator.tpu",
    "tpu.tpu_optimizer": "tpu",
    "tpu.bfloat16": "tpu",
    "tpu.ops.tpu_ops": "tpu",
    "tpu.tpu": "tpu",  # also contrib_tpu.tpu.TPUEstimatorSpec (tensorflow/tpu amoeba_net)
    "distribute.cluster_resolver.tpu.tpu_cluster_resolver": "distribute.cluster_resolver",
    "distribute.cluster_resolver.tpu_cluster_resolver": "distribute.cluster_resolver",
}
_ESTIMATOR_NAMES = ("TPUEstimator", "TPUEstimatorSpec", "RunConfig", "TPUConfig",
                    "InputPipelineConfig")

Canonical = collections.namedtuple("Canonical", ["path", "flavor"])


def canonical(dotted):
  """A resolved dotted name -> Canonical(path, flavor); flavor None outside TensorFlow."""
  for package, flavor in _PACKAGES:
    if dotted == package or dotted.startswith(package + "."):
      path = dotted[len(package) + 1:]
      break
  else:
    return Canonical(dotted, None)
  folded = True
  while folded:
    folded = False
    for module in sorted(_MODULE_ALIASES, key=len, reverse=True):
      if path == module or path.startswith(module + "."):
        path = (_MODULE_ALIASES[module] + path[len(module):]).lstrip(".")
        folded = True
        break
  head, _, name = path.rpartition(".")
  if head == "tpu" and name in _ESTIMATOR_NAMES:  # tf.contrib.tpu held them too
    path = "estimator.tpu." + name
  return Canonical(path, flavor)


def _same(*names):
  """Rename targets: each canonical path -> migration.compat.<the same last name>."""
  return {path: "%s.%s" % (COMPAT, path.rsplit(".", 1)[1]) for path in names}


# Canonical path -> the replacement reference. The replacement has the same signature.
RENAMES = dict(
    _same("estimator.tpu.TPUEstimator", "estimator.Estimator", "estimator.tpu.RunConfig",
          "estimator.tpu.TPUConfig", "estimator.tpu.InputPipelineConfig",
          "estimator.tpu.TPUEstimatorSpec",
          "distribute.cluster_resolver.TPUClusterResolver",
          "tpu.CrossShardOptimizer", "tpu.bfloat16_scope", "tpu.cross_replica_sum",
          "tpu.tpu_function.get_tpu_context", "tpu.outside_compilation",
          "tpu.initialize_system", "tpu.shutdown_system",
          "tpu.async_checkpoint.AsyncCheckpointSaverHook",
          "contrib.mixed_precision.LossScaleOptimizer",
          "contrib.mixed_precision.FixedLossScaleManager",
          "contrib.mixed_precision.ExponentialUpdateLossScaleManager",
          "train.experimental.MixedPrecisionLossScaleOptimizer",
          "mixed_precision.MixedPrecisionLossScaleOptimizer",
          "train.experimental.enable_mixed_precision_graph_rewrite",
          "mixed_precision.enable_mixed_precision_graph_rewrite"),
    **{"horovod.tensorflow." + name: "%s.%s" % (HOROVOD, name) for name in (
        "init", "size", "rank", "local_size", "local_rank", "DistributedOptimizer",
        "BroadcastGlobalVariablesHook", "allreduce")})

# tf.nn.dropout's second positional argument is keep_prob in the v1 API and rate in v2.
DROPOUT = {"v1": COMPAT + ".dropout_v1", "v2": COMPAT + ".dropout_v2", "": COMPAT + ".dropout"}

# A helper of the tensorflow/tpu repository, found by its class name in any module.
TPU_PROFILER_HOOK = "TPUProfilerHook"

# TPUEstimator arguments that only mean something on a TPU: removed from the call.
TPU_ONLY_ARGUMENTS = ("batch_axis", "eval_on_tpu", "export_to_tpu", "export_to_cpu")

# Calls whose `config=` (keyword, or positional at this index) becomes
# migration.compat.session_config(...), added when absent.
SESSION_CONFIG_INDEX = {"Session": 2, "InteractiveSession": 2,
                        "train.MonitoredTrainingSession": 9}

# Canned estimators: `config=` becomes migration.compat.run_config(...), as Huawei's tool
# wraps it in npu_run_config_init.
CANNED_ESTIMATORS = tuple("estimator." + kind + role for kind in (
    "Baseline", "BoostedTrees", "DNN", "DNNLinearCombined", "Linear")
                          for role in ("Classifier", "Estimator", "Regressor"))

# `drop_remainder` position in these batching calls. The methods are any method call of
# that name not resolving to a TensorFlow function (tf.train.batch keeps its own).
MAP_AND_BATCH = ("data.experimental.map_and_batch", "contrib.data.map_and_batch")
MAP_AND_BATCH_DROP_REMAINDER_INDEX = 3
BATCH_METHODS = {"batch": 1, "padded_batch": 3}

# Casts (dtype argument: keyword, or positional at this index) in whose dtype `tf.bfloat16`
# becomes migration.compat.bfloat16_or_float32(): TPU models cast activations to bf16 by
# hand; where the run does not compute bf16 they stay float32. Comparisons with
# tf.bfloat16 (custom getters) are left alone.
CASTS = {"cast": 1, "dtypes.cast": 1, "saturate_cast": 1, "dtypes.saturate_cast": 1,
         "image.convert_image_dtype": 1}
BFLOAT16 = ("bfloat16", "dtypes.bfloat16")

# Modules a ported file no longer needs once their names are rewritten; an import of
# one of them is removed when nothing refers to it any more.
PORTED_AWAY = ("tpu", "estimator.tpu", "distribute.cluster_resolver")
PORTED_AWAY_OTHER = ("horovod",)

# TPU APIs with no replacement: canonical prefix -> (manual?, why). Manual ones have a
# known hand port (need_migration_doc.txt); the others are reported as failed.
UNSUPPORTED = (
    ("tpu.rewrite", True, "call the computation directly: off the TPU it runs as it is"),
    ("tpu.replicate", True, "call the computation once: one device here; use "
     "NPUDistributedOptimizer for data parallelism on the NPU"),
    ("tpu.shard", True, "call the computation once: one device here"),
    ("tpu.batch_parallel", True, "call the computation once: one device here"),
    ("distribute.TPUStrategy", True, "use tf.distribute.MirroredStrategy (CPU/GPU) or "
     "NPUDistributedOptimizer (NPU)"),
    ("distribute.experimental.TPUStrategy", True, "use tf.distribute.MirroredStrategy "
     "(CPU/GPU) or NPUDistributedOptimizer (NPU)"),
    ("estimator.tpu.experimental.EmbeddingConfigSpec", False,
     "TPU embeddings need TPU hardware; use tf.nn.embedding_lookup tables"),
    ("tpu.experimental.embedding", False,
     "TPU embeddings need TPU hardware; use tf.nn.embedding_lookup tables"),
)
TPU_PREFIXES = ("tpu", "estimator.tpu", "distribute.TPUStrategy",
                "distribute.experimental.TPUStrategy",
                "distribute.cluster_resolver.TPUClusterResolver")
DEFAULT_WHY = "TPU-only API with no NPU/CPU counterpart in migration.compat; port it by hand"


def under(path, prefixes):
  return any(path == p or path.startswith(p + ".") for p in prefixes)


def rename(name):
  """The replacement reference for a Canonical name, or None."""
  if name.flavor is None:
    return RENAMES.get(name.path) if under(name.path, ("horovod",)) else None
  if name.path == "nn.dropout":
    return DROPOUT[name.flavor]
  return RENAMES.get(name.path)


def ported_away(name):
  """True for a module (or name in one) that ported files stop importing."""
  if name.flavor is None:
    return under(name.path, PORTED_AWAY_OTHER)
  return under(name.path, PORTED_AWAY)


def unsupported(name):
  """(manual, why) for a TPU API without a rule, or None when `name` is no TPU API."""
  if name.flavor is None:
    return None
  for prefix, manual, why in UNSUPPORTED:
    if under(name.path, (prefix,)):
      return manual, why
  if under(name.path, TPU_PREFIXES):
    return False, DEFAULT_WHY
  return None
