"""Multi-worker scaling on local clusters: images/sec, step time and all-reduce time per step
for 1, 2 and 4 workers (--distribution=multi_worker_mirrored, tools/launch_local.py).

Weak scaling: each worker keeps its batch (--per_worker_batch_*), the global batch grows with
the workers. Every configuration is one local cluster; its chief times --steps training steps
after --warmup_steps with common.StepTimer and traces one of them (RunMetadata) for the wall
time during which its CollectiveReduce ops ran: the all-reduce of the gradients as the chief
sees it, waiting for the slowest worker included. The gradient bytes per step are the trainable
parameters x 4 (float32).

All the workers of a local cluster share this machine's cores: on 2 cores two workers already
halve each one's CPU, and four oversubscribe it. The figures measure the collective path's
cost here, not the speed-up of a real cluster (README "Training past one device").

  python benchmarks/distributed.py --output=distributed.json   # JSON: stdout's last line
  python benchmarks/distributed.py --models=protoattend --workers=1,2 --steps=3  # quick
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from estimators import registry  # pylint: disable=g-import-not-at-top
from input_fns import data_root  # pylint: disable=g-import-not-at-top

LAUNCHER = os.path.join(REPO, "tools", "launch_local.py")
# The Estimator saves at the ends of training only: no periodic save inside the timed steps.
CHECKPOINT_ONLY_AT_ENDS = 10 ** 9
# Model flags per benchmark configuration (the amoeba_net benchmark's small configuration).
MODELS = {
    "amoeba_small": ("amoeba_net", ["--use_synthetic_data", "--num_cells=3",
                                    "--reduction_size=32", "--image_size=64",
                                    "--num_label_classes=1001", "--use_aux_head=false"]),
    "protoattend": ("protoattend", ["--data_dir=%s" % os.path.join(data_root(),
                                                                   "fashion_mnist")]),
}
ALL_REDUCE_OPS = ("CollectiveReduce", "CollectiveReduceV2")
OPTIONS = (  # (name, default, help, valid)
    ("models", ",".join(MODELS), "comma list of %s" % ", ".join(MODELS)),
    ("workers", "1,2,4", "comma list of cluster sizes"),
    ("steps", 10, "timed training steps per configuration", registry.POSITIVE),
    ("warmup_steps", 3, "untimed steps before them", registry.at_least(2)),
    ("per_worker_batch_amoeba_small", 32, None, registry.POSITIVE),
    ("per_worker_batch_protoattend", 128, None, registry.POSITIVE),
    ("timeout", 1800, "seconds per configuration", registry.POSITIVE),
    ("output", "", "also write the JSON here"),
    ("child", "", "(internal) run as a task of the cluster, writing the chief's result here"))


def covered_seconds(intervals):
  """The length of the union of (start, end) intervals (in microseconds) in seconds."""
  covered, reach = 0, None
  for start, end in sorted(intervals):
    if reach is None or start > reach:
      covered, reach = covered + end - start, end
    elif end > reach:
      covered, reach = covered + end - reach, end
  return covered / 1e6


class AllReduceTracer(tf.train.SessionRunHook):
  """Traces step `step` (0-based): the wall time during which any all-reduce op ran (they
  overlap one another and the backward pass), and their count."""

  def __init__(self, step):
    self.step, self.calls = step, 0
    self.seconds = self.ops = None

  def before_run(self, run_context):
    if self.calls == self.step:
      return tf.train.SessionRunArgs(None, options=tf.RunOptions(
          trace_level=tf.RunOptions.FULL_TRACE))
    return None

  def after_run(self, run_context, run_values):
    if self.calls == self.step and run_values.run_metadata is not None:
      stats = [node for device in run_values.run_metadata.step_stats.dev_stats
               for node in device.node_stats
               if node.timeline_label.split("(")[0].split(" = ")[-1] in ALL_REDUCE_OPS]
      self.ops = len(stats)
      self.seconds = covered_seconds(
          (node.all_start_micros, node.all_start_micros + node.all_end_rel_micros)
          for node in stats)
    self.calls += 1


def child(args, model_argv):
  """One task of the cluster: trains; the chief writes its timings to args.child."""
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  runner = run_loop.prepare(args.model_name, model_argv)
  timer = common.StepTimer(warmup_steps=args.warmup_steps)
  tracer = AllReduceTracer(step=args.warmup_steps)
  start = time.time()
  runner.train(args.warmup_steps + args.steps, extra_hooks=[timer, tracer])
  if runner.config.distribution.is_chief:
    config = runner.config
    result = timer.summary(config.train_batch_size, start)
    result.update(
        global_batch=config.train_batch_size, per_worker_batch=config.replica_batch_size,
        all_reduce_ops=tracer.ops, all_reduce_seconds=tracer.seconds,
        gradient_bytes_per_step=4 * result["trainable_parameters"], peak_rss_mb_chief=
        common.peak_rss_mb())
    with open(args.child, "w") as out:
      json.dump(result, out)


def run_cluster(name, workers, args, work_dir):
  """Launches one cluster for configuration `name`; returns its result dict."""
  model_name, flags = MODELS[name]
  per_worker = getattr(args, "per_worker_batch_" + name)
  folder = os.path.join(work_dir, "%s_%d" % (name, workers))
  result_path = folder + ".json"
  argv = [sys.executable, LAUNCHER, "--workers=%d" % workers, "--log_dir=" + folder, "--",
          os.path.abspath(__file__), "--child=" + result_path, "--model_name=" + model_name,
          "--steps=%d" % args.steps, "--warmup_steps=%d" % args.warmup_steps, "--",
          "--model_dir=" + os.path.join(folder, "run"), "--device=cpu", "--mode=train",
          "--distribution=multi_worker_mirrored", "--train_batch_size=%d" % (per_worker *
                                                                              workers),
          "--save_checkpoints_steps=%d" % CHECKPOINT_ONLY_AT_ENDS,
          "--log_step_count_steps=%d" % args.steps] + flags
  start = time.time()
  try:
    completed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True, timeout=args.timeout)
    code, output = completed.returncode, completed.stdout
  except subprocess.TimeoutExpired as error:
    code, output = "timeout after %ds" % args.timeout, error.stdout or ""
  result = {"config": name, "workers": workers, "process_seconds": round(time.time() - start, 1)}
  if code == 0 and os.path.exists(result_path):
    with open(result_path) as f:
      result.update(json.load(f))
    if result["images_per_sec"]:
      result["step_seconds_mean"] = round(result["global_batch"] / result["images_per_sec"], 4)
  else:
    result.update(error="exit %s" % code, log_dir=folder, log_tail=output[-common.LOG_TAIL_CHARS:])
  return result


def add_scaling(results):
  """Speed-up and efficiency of each cluster against the one-worker run of its config."""
  single = {r["config"]: r.get("images_per_sec") for r in results if r["workers"] == 1}
  for result in results:
    base, rate = single.get(result["config"]), result.get("images_per_sec")
    if base and rate:
      result["speedup_vs_1_worker"] = round(rate / base, 3)
      result["scaling_efficiency"] = round(rate / base / result["workers"], 3)


def main():
  parser = common.options_parser(__doc__.split("\n\n")[0], OPTIONS)
  parser.add_argument("--model_name", help="(internal) the child's model")
  args, rest = parser.parse_known_args()
  common.check_options(parser, args, OPTIONS)
  if args.child:
    return child(args, [arg for arg in rest if arg != "--"])
  names = common.name_list(parser, "models", args.models, list(MODELS))
  try:
    sizes = [int(size) for size in args.workers.split(",")]
  except ValueError:
    parser.error("--workers=%s: expected a comma list of worker counts" % args.workers)
  if not sizes or min(sizes) < 1:
    parser.error("--workers=%s: each cluster needs at least one worker" % args.workers)
  start = time.time()
  result = common.header("distributed")
  result["note"] = ("%d CPUs shared by every worker of a local cluster: more workers than "
                    "cores cannot run faster; the figures show the cost of the synchronous "
                    "collective path on one machine" % (os.cpu_count() or 0))
  work_dir = tempfile.mkdtemp(prefix="distributed-bench-")
  results = []
  for name in names:
    for workers in sizes:
      print("distributed: %s on %d worker(s)" % (name, workers), file=sys.stderr, flush=True)
      results.append(run_cluster(name, workers, args, work_dir))
  add_scaling(results)
  result["results"] = results
  if not any("error" in r for r in results):
    shutil.rmtree(work_dir)
  common.finish(result, args.output or None, start)


if __name__ == "__main__":
  main()
