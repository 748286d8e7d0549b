"""Training on more than one device: tf.distribute off the NPU, HCCL ranks on it.

`resolve()` works out once, before any graph, how this process takes part: a
`Distribution` from `--distribution`, the standard `TF_CONFIG` (cluster + task) and, on the
NPU, `RANK_SIZE`/`RANK_ID` (their rank table is checked by migration.validation). Every
inconsistency is one ConfigError line. The engines are TensorFlow's own:

  none                   one process, one device (or one NPU rank of RANK_SIZE)
  mirrored               synchronous, the GPUs of one machine (one replica on a CPU)
  multi_worker_mirrored  synchronous all-reduce over the TF_CONFIG workers (collective ops)
  parameter_server       asynchronous: variables on the TF_CONFIG ps tasks

`--train_batch_size` is the global batch of one synchronous step; each replica takes an
equal share (`per_replica_batch`). With parameter servers each worker's update is one step
of the global step, over its share of the batch.
"""
import collections
import json
import os

import tensorflow.compat.v1 as tf

from migration import optimizers
from migration.validation import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker_mirrored", "parameter_server")
# What each strategy is in TF 1.15's and TF 2.15's tf.compat.v1 (Estimators need the v1
# classes; 1.15's MultiWorkerMirroredStrategy is its CollectiveAllReduceStrategy).
_STRATEGY_CLASSES = {
    "mirrored": "MirroredStrategy",
    "multi_worker_mirrored": "experimental.MultiWorkerMirroredStrategy",
    "parameter_server": "experimental.ParameterServerStrategy",
}
# The jobs of a TF_CONFIG cluster each strategy runs with.
_JOBS = {"multi_worker_mirrored": ("chief", "worker"),
         "parameter_server": ("chief", "worker", "ps")}


class Distribution(collections.namedtuple("Distribution", [
    "strategy", "task_type", "task_index", "num_workers", "worker_index",
    "replicas_per_worker", "npu_ranks", "in_cluster"])):
  """How this process trains. `num_workers` processes take part (TF_CONFIG's chief and
  workers, or the NPU ranks); this one is `worker_index` of them. `in_cluster`: TF_CONFIG
  names the tasks, and TensorFlow's distribute coordinator runs this one."""

  @property
  def is_chief(self):
    """The one process that writes checkpoints, summaries, exports and the final metrics."""
    return self.worker_index == 0 and self.task_type != "ps"

  @property
  def synchronous(self):
    return self.strategy != "parameter_server"

  @property
  def num_replicas(self):
    """The replicas that share one step's batch."""
    return self.num_workers * self.replicas_per_worker

  def describe(self):
    if self.npu_ranks:
      return "NPU rank %d of %d (HCCL)" % (self.worker_index, self.num_workers)
    if self.task_type == "ps":
      return "parameter_server: ps task %d" % self.task_index
    return "%s: %s task %d, worker %d of %d, %d replica(s) each" % (
        self.strategy, self.task_type, self.task_index, self.worker_index, self.num_workers,
        self.replicas_per_worker)


# One process on one device: what a run is unless told otherwise.
SINGLE = Distribution("none", "chief", 0, 1, 0, 1, npu_ranks=False, in_cluster=False)


def parse_tf_config(raw):
  """(cluster {job: [address]}, task type, task index) from a TF_CONFIG string."""
  try:
    tf_config = json.loads(raw)
  except ValueError as error:
    raise ConfigError("TF_CONFIG is not valid JSON (%s): %r" % (error, raw[:200]))
  if not isinstance(tf_config, dict):
    raise ConfigError("TF_CONFIG must be a JSON object with \"cluster\" and \"task\", got %r"
                      % raw[:200])
  cluster, task = tf_config.get("cluster"), tf_config.get("task")
  if not isinstance(cluster, dict) or not cluster:
    raise ConfigError('TF_CONFIG needs "cluster": {"<job>": ["host:port", ...], ...}')
  addresses = []
  for job, job_addresses in cluster.items():
    if not isinstance(job_addresses, list) or not job_addresses or not all(
        isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in job_addresses):
      raise ConfigError('TF_CONFIG cluster job "%s" must be a non-empty list of "host:port", '
                        "got %r" % (job, job_addresses))
    addresses += job_addresses
  duplicates = sorted(set(a for a in addresses if addresses.count(a) > 1))
  if duplicates:
    raise ConfigError("TF_CONFIG cluster lists %s more than once" % ", ".join(duplicates))
  if not isinstance(task, dict) or not isinstance(task.get("type"), str) or not isinstance(
      task.get("index", 0), int):
    raise ConfigError('TF_CONFIG needs "task": {"type": "<job>", "index": <int>}, got %r'
                      % (task,))
  task_type, task_index = task["type"], task.get("index", 0)
  if task_type not in cluster:
    raise ConfigError('TF_CONFIG task type "%s" is not a job of its cluster (%s)'
                      % (task_type, ", ".join(sorted(cluster))))
  if not 0 <= task_index < len(cluster[task_type]):
    raise ConfigError("TF_CONFIG task %s:%d is outside its cluster, which has %d %s task(s)"
                      % (task_type, task_index, len(cluster[task_type]), task_type))
  return cluster, task_type, task_index


def _describe_cluster(cluster):
  return ", ".join("%s: %d" % (job, len(cluster[job])) for job in sorted(cluster))


def _cluster_distribution(strategy, cluster, task_type, task_index, replicas_per_worker):
  jobs = _JOBS[strategy]
  unknown = sorted(set(cluster) - set(jobs))
  if unknown:
    raise ConfigError("--distribution=%s runs the TF_CONFIG jobs %s, not %s%s" % (
        strategy, "/".join(jobs), ", ".join(unknown),
        " (an evaluator is a separate --mode=continuous_eval run)" if "evaluator" in unknown
        else " (ps tasks serve --distribution=parameter_server)" if "ps" in unknown else ""))
  if len(cluster.get("chief", ())) > 1:
    raise ConfigError("TF_CONFIG lists %d chief tasks; a cluster has at most one"
                      % len(cluster["chief"]))
  if strategy == "parameter_server" and not (cluster.get("ps") and cluster.get("chief")):
    raise ConfigError("--distribution=parameter_server needs TF_CONFIG jobs chief (1) and ps "
                      "(1 or more); the cluster has %s" % _describe_cluster(cluster))
  chiefs = len(cluster.get("chief", ()))
  num_workers = chiefs + len(cluster.get("worker", ()))
  worker_index = {"chief": 0, "worker": chiefs + task_index}.get(task_type, -1)
  return Distribution(strategy, task_type, task_index, num_workers, worker_index,
                      replicas_per_worker, npu_ranks=False, in_cluster=True)


def resolve(strategy, backend, environ=None):
  """The Distribution of this process; raises ConfigError (one line) when `--distribution`,
  TF_CONFIG, RANK_SIZE and the device disagree."""
  env = os.environ if environ is None else environ
  if strategy not in STRATEGIES:
    raise ConfigError("--distribution=%s is not one of %s" % (strategy, "|".join(STRATEGIES)))
  rank_size = optimizers.rank_size(env)
  raw_tf_config = env.get("TF_CONFIG", "").strip()
  cluster, task_type, task_index = (parse_tf_config(raw_tf_config) if raw_tf_config
                                    else ({}, "chief", 0))
  if backend.is_npu:
    if strategy != "none":
      raise ConfigError("--distribution=%s with --device=npu: on Ascend NPUs the devices train "
                        "in parallel through HCCL, one process per device (RANK_SIZE, RANK_ID, "
                        "RANK_TABLE_FILE; scripts/train_full_8p.sh); keep --distribution=none"
                        % strategy)
    rank_id = int(env.get("RANK_ID") or "0")
    return Distribution("none", "chief" if rank_id == 0 else "worker", rank_id, rank_size,
                        rank_id, 1, npu_ranks=rank_size > 1, in_cluster=False)
  if rank_size > 1:
    raise ConfigError("RANK_SIZE=%d asks for %d NPU ranks (HCCL), but this run is on the %s; "
                      "off the NPU train on several workers with "
                      "--distribution=multi_worker_mirrored and TF_CONFIG (tools/launch_local.py)"
                      % (rank_size, rank_size, backend.device.upper()))
  tasks = sum(len(addresses) for addresses in cluster.values())
  if strategy in ("none", "mirrored") and tasks > 1:
    raise ConfigError("TF_CONFIG describes a cluster (%s) but --distribution=%s trains in one "
                      "process: pass --distribution=multi_worker_mirrored or parameter_server, "
                      "or unset TF_CONFIG" % (_describe_cluster(cluster), strategy))
  replicas_per_worker = _local_replicas(backend) if strategy != "none" else 1
  if strategy in _JOBS:
    if not cluster and strategy == "parameter_server":
      raise ConfigError("--distribution=parameter_server needs TF_CONFIG naming the chief, "
                        "worker and ps tasks (tools/launch_local.py --ps=1 sets it)")
    if cluster:
      return _cluster_distribution(strategy, cluster, task_type, task_index,
                                   replicas_per_worker)
  return Distribution(strategy, "chief", 0, 1, 0, replicas_per_worker, npu_ranks=False,
                      in_cluster=False)


def _local_replicas(backend):
  """The devices one worker mirrors over: its GPUs, else its CPU."""
  if not backend.is_gpu:
    return 1
  return len(tf.config.experimental.list_physical_devices("GPU"))


def per_replica_batch(flag, global_batch, distribution):
  """`global_batch` split over the replicas of a step; ConfigError if it does not split."""
  replicas = distribution.num_replicas
  if global_batch % replicas:
    raise ConfigError("--%s=%d does not split over the %d replicas of %s; give a multiple of %d"
                      % (flag, global_batch, replicas, distribution.describe(), replicas))
  return global_batch // replicas


def make_strategy(distribution):
  """The tf.distribute strategy for `distribution` (None for none and NPU ranks)."""
  if distribution.strategy == "none":
    return None
  module = tf.distribute
  path = _STRATEGY_CLASSES[distribution.strategy]
  for name in path.split("."):
    module = getattr(module, name, None)
    if module is None:
      raise ConfigError("--distribution=%s needs tf.distribute.%s, which TensorFlow %s lacks"
                        % (distribution.strategy, path, tf.__version__))
  return module()


def worker_checkpoint_dir(model_dir, distribution):
  """Where a non-chief multi_worker_mirrored worker keeps its own copy of the variables.
  TensorFlow's MonitoredTrainingSession names it (tmp_<task type>_<index>, monitored_session.py);
  each worker restores from it, so it must hold the chief's newest checkpoint (see
  `follow_chief`)."""
  return os.path.join(model_dir, "tmp_%s_%d" % (distribution.task_type, distribution.task_index))


def follow_chief(model_dir, distribution, chief_checkpoint):
  """Makes a non-chief worker start from the chief's checkpoint `chief_checkpoint` (or from
  scratch when None): collective workers broadcast their initial values only when none
  restores, so every worker must restore the same step or none may. Returns the folder."""
  folder = worker_checkpoint_dir(model_dir, distribution)
  if tf.gfile.Exists(folder):
    tf.gfile.DeleteRecursively(folder)
  if chief_checkpoint is None:
    return folder
  tf.gfile.MakeDirs(folder)
  for path in tf.gfile.Glob(chief_checkpoint + ".*"):
    tf.gfile.Copy(path, os.path.join(folder, os.path.basename(path)))
  tf.train.update_checkpoint_state(
      folder, os.path.join(folder, os.path.basename(chief_checkpoint)))
  return folder
