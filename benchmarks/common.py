"""Small helpers shared by the benchmark scripts: environment record, timing, peak RSS, JSON."""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import tensorflow.compat.v1 as tf
from tensorflow.core.framework import types_pb2

LOG_TAIL_CHARS = 3000
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # local time, ISO 8601 with offset


def environment_info():
  """What the figures were measured on: TF/Python versions, stack, CPU count, host."""
  affinity = getattr(os, "sched_getaffinity", None)
  return dict(load_average("load_average_at_start"), **{
      "stack": "tf1" if tf.__version__.startswith("1.") else "tf2",
      "tensorflow_version": tf.__version__, "python_executable": sys.executable,
      "python_version": platform.python_version(), "cpu_count": os.cpu_count(),
      "cpus_usable": len(affinity(0)) if affinity else os.cpu_count(),
      "platform": platform.platform()})


def peak_rss_mb():
  """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
  import resource  # pylint: disable=g-import-not-at-top
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)


class Stopwatch(object):
  """`with Stopwatch() as watch: ...` then `watch.seconds`."""

  def __enter__(self):
    self.start, self.seconds = time.time(), None
    return self

  def __exit__(self, *unused_exc):
    self.seconds = time.time() - self.start


def emit_json(result, output=None):
  """Prints `result` as one JSON line (the script's last stdout line); also to `output`."""
  text = json.dumps(result, sort_keys=True)
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      f.write(text + "\n")
  sys.stdout.write(text + "\n")
  sys.stdout.flush()


def options_parser(description, options, **kwargs):
  """An argparse parser with `options`' (name, default, help[, valid]) rows: False makes a
  switch, numbers take the default's type; check_options checks `valid` (a registry.Range)."""
  parser = argparse.ArgumentParser(description=description, **kwargs)
  for name, default, text in (row[:3] for row in options):
    if default is False:
      parser.add_argument("--" + name, action="store_true", help=text)
    else:
      number = type(default) if isinstance(default, (int, float)) else None
      parser.add_argument("--" + name, type=number, default=default, help=text)
  return parser


def check_options(parser, args, options):
  """Refuses, in one line, an option outside its range."""
  for name, valid in (row[::3] for row in options if len(row) > 3):
    if getattr(args, name) not in valid:
      parser.error("--%s=%r %s" % (name, getattr(args, name), valid))


def name_list(parser, flag, text, allowed, allow_empty=False):
  """The comma list `text` of --flag, each name from `allowed` (else one line)."""
  names = [name.strip() for name in text.split(",") if name.strip()]
  unknown = [name for name in names if name not in allowed]
  if unknown or not (names or allow_empty):
    parser.error("--%s=%s: expected a comma list of %s" % (flag, text, ", ".join(allowed)))
  return names


def header(benchmark):
  """The opening fields of a benchmark's JSON: its name, start time and environment."""
  return dict(environment_info(), benchmark=benchmark, started=time.strftime(TIME_FORMAT),
              **cpu_info())


def finish(result, output=None, start=None):
  """Adds the load average at the end (and total_seconds since `start`), emits the JSON."""
  result.update(load_average("load_average_at_end"))
  if start is not None:
    result["total_seconds"] = round(time.time() - start, 1)
  emit_json(result, output)


def load_average(key="load_average"):
  """{key: [1, 5, 15 min load]}: other processes on a shared machine skew timings."""
  return {key: [round(x, 2) for x in os.getloadavg()]} if hasattr(os, "getloadavg") else {}


def cpu_info():
  """CPU model and whether it has native bf16 instructions (AVX512_BF16, AMX-BF16)."""
  try:
    with open("/proc/cpuinfo") as f:  # the last CPU's fields (the CPUs are alike)
      rows = [line.partition(":") for line in f]
    fields = {key.strip(): value.strip() for key, _, value in rows}
  except IOError:
    fields = {}
  cpu_flags = set(fields.get("flags", "").split())
  return {"cpu_model": fields.get("model name"), "cpu_avx512_bf16": "avx512_bf16" in cpu_flags,
          "cpu_amx_bf16": "amx_bf16" in cpu_flags}


def ratio(value, base):
  """value / base to 3 decimals; None when either is missing or zero."""
  return round(value / base, 3) if value and base else None


def load_json(path):
  with open(path) as f:
    return json.load(f)


def matmul_peaks():
  """{"float32": GFLOP/s, "bfloat16": GFLOP/s or None}: see matmul_peak_gflops."""
  return {"float32": matmul_peak_gflops(), "bfloat16": matmul_peak_gflops(tf.bfloat16)}


def matmul_peak_gflops(dtype=tf.float32, size=2048, runs=5, matmuls_per_run=8):
  """The machine's dense matmul rate now (GFLOP/s, best of `runs`), with TensorFlow's
  default threads: the yardstick that makes images/sec comparable across machines and
  loads. None when this TensorFlow has no CPU kernel for `dtype`."""
  with tf.Graph().as_default():
    a, b = (tf.Variable(tf.random.uniform([size, size], dtype=tf.float32)) for _ in "ab")
    # Each product is reduced and fetched: grappler prunes a product nobody reads.
    products = tf.add_n([tf.reduce_sum(tf.cast(
        tf.matmul(tf.cast(a + i, dtype), tf.cast(b, dtype)), tf.float32))
                         for i in range(matmuls_per_run)])
    with tf.Session() as session:
      session.run(tf.global_variables_initializer())
      try:
        session.run(products)  # warm-up: kernels, thread pools
      except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError):
        return None
      best = float("inf")
      for _ in range(runs):
        with Stopwatch() as watch:
          session.run(products)
        best = min(best, watch.seconds)
  return round(2.0 * size ** 3 * matmuls_per_run / best / 1e9, 1)


def reduced_precision_node_counts(graph_defs):
  """Nodes of (post-grappler) GraphDefs with bf16 / fp16 type attributes: the dtype that
  really ran (auto mixed precision rewrites the graph the session runs, not Python's)."""
  counts = {"nodes": 0, "bfloat16_nodes": 0, "float16_nodes": 0}
  for graph_def in graph_defs:
    for node in graph_def.node:
      counts["nodes"] += 1
      attrs = node.attr.values()  # unset `type` / `list` fields read as DT_INVALID / empty
      types = {attr.type for attr in attrs}.union(*(attr.list.type for attr in attrs))
      counts["bfloat16_nodes"] += types_pb2.DT_BFLOAT16 in types
      counts["float16_nodes"] += types_pb2.DT_HALF in types
  return counts


class StepTimer(tf.train.SessionRunHook):
  """The benchmarks' one step timer: a SessionRunHook recording each Session.run's wall and
  process CPU time; pass it as an extra hook. `summary(batch_size, call_start)`: images/sec
  after `warmup_steps` (executors, grappler) and the timings; `totals(call_start, call_end)`:
  summed seconds. At step `probe_step` (0-based) it counts the partition graphs' reduced-
  precision nodes; past `deadline` (time.time()) it stops the training."""

  def __init__(self, warmup_steps=1, probe_step=None, deadline=None):
    self.warmup_steps, self.probe_step, self.deadline = warmup_steps, probe_step, deadline
    self.begin_time = self.session_ready_time = None
    self.step_starts, self.step_ends = [], []
    self.cpu_starts, self.cpu_ends = [], []
    self.trainable_parameters = self.dtype_counts = None

  def begin(self):
    self.begin_time = time.time()
    self.trainable_parameters = int(sum(v.shape.num_elements() for v in tf.trainable_variables()))

  def after_create_session(self, session, coord):
    del session, coord
    self.session_ready_time = time.time()

  def before_run(self, run_context):
    self.step_starts.append(time.time())
    self.cpu_starts.append(time.process_time())
    if len(self.step_starts) - 1 == self.probe_step:
      return tf.train.SessionRunArgs(None, options=tf.RunOptions(output_partition_graphs=True))
    return None

  def after_run(self, run_context, run_values):
    self.step_ends.append(time.time())
    self.cpu_ends.append(time.process_time())
    if len(self.step_ends) - 1 == self.probe_step and run_values.run_metadata is not None:
      self.dtype_counts = reduced_precision_node_counts(
          run_values.run_metadata.partition_graphs)
    if self.deadline is not None and self.step_ends[-1] >= self.deadline:
      run_context.request_stop()

  def summary(self, batch_size, call_start=None):
    """Images/sec after warm-up (None if no step ran after it) and the step timings."""
    steps = len(self.step_ends)
    seconds = [round(end - start, 4) for start, end in zip(self.step_starts, self.step_ends)]
    timed = steps - self.warmup_steps
    rate = None
    if timed > 0:
      window_start = (self.step_ends[self.warmup_steps - 1] if self.warmup_steps
                      else self.step_starts[0])
      rate = timed * batch_size / (self.step_ends[-1] - window_start)
    result = {
        "images_per_sec": round(rate, 3) if rate else None, "steps_run": steps,
        "warmup_steps": min(self.warmup_steps, steps), "timed_steps": max(timed, 0),
        "step_seconds": seconds, "first_step_seconds": seconds[0] if seconds else None,
        "step_cpu_seconds": [round(end - start, 4)
                             for start, end in zip(self.cpu_starts, self.cpu_ends)],
        "trainable_parameters": self.trainable_parameters,
    }
    if call_start is not None and self.step_starts:
      result["setup_seconds"] = round(self.step_starts[0] - call_start, 3)
    if self.begin_time and self.session_ready_time:
      result["session_create_seconds"] = round(self.session_ready_time - self.begin_time, 3)
    if self.dtype_counts is not None:
      result["partition_graph_dtype_counts"] = self.dtype_counts
      result["observed_compute_dtype"] = ("bfloat16" if self.dtype_counts["bfloat16_nodes"] else
                                          "float16" if self.dtype_counts["float16_nodes"] else
                                          "float32")
    return result

  def totals(self, call_start, call_end):
    """One call's summed seconds: its steps (wall, CPU; the first apart) and overheads."""
    walls = [end - start for start, end in zip(self.step_starts, self.step_ends)]
    cpus = [end - start for start, end in zip(self.cpu_starts, self.cpu_ends)]
    totals = {"train_wall": call_end - call_start, "steps": len(walls)}
    if walls:
      totals.update(
          train_step=sum(walls), first_step=walls[0], step_cpu=sum(cpus),
          first_step_cpu=cpus[0], graph_build=self.begin_time - call_start,
          session_setup_and_restore=self.session_ready_time - self.begin_time,
          between_steps=self.step_ends[-1] - self.session_ready_time - sum(walls),
          final_checkpoint_save=call_end - self.step_ends[-1])
    return totals


def run_child(work):
  """The child side of `spawn`: prints work()'s dict (or {"error": ...}) as one JSON line."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  try:
    result = work()
  except Exception as error:  # pylint: disable=broad-except
    logging.exception("benchmark child failed")
    result = {"error": "%s: %s" % (type(error).__name__, error)}
  emit_json(dict(result, peak_rss_mb=peak_rss_mb()))


def spawn(argv, log_path, timeout=None):
  """Runs `python argv...` (ending in `run_child`) in a fresh process (one measurement's
  memory and threads stay out of the next), stderr to `log_path`; returns the child's dict
  plus process_seconds (and log, log_tail on an "error")."""
  start = time.time()
  with open(log_path, "w") as log:
    try:
      completed = subprocess.run([sys.executable] + list(argv), stdout=subprocess.PIPE,
                                 stderr=log, universal_newlines=True, timeout=timeout)
      output, code = completed.stdout, completed.returncode
    except subprocess.TimeoutExpired as error:
      output, code = error.stdout or "", "timeout after %ds" % timeout
  lines = [line for line in (output or "").splitlines() if line.strip()]
  try:
    result = json.loads(lines[-1])
  except (IndexError, ValueError):
    result = {"error": "exit %s%s" % (code, " (killed; out of memory?)" if code == -9 else "")}
  if "error" in result:
    with open(log_path) as log:
      result.update(log=log_path, log_tail=log.read()[-LOG_TAIL_CHARS:])
  result["process_seconds"] = round(time.time() - start, 1)
  return result
