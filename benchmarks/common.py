"""Small helpers shared by the benchmark scripts: environment record, timing, peak RSS, JSON."""
import json
import os
import platform
import sys
import time


def tensorflow_stack():
  """("tf1" or "tf2", TF version string) of the imported TensorFlow."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  version = tf.__version__ if hasattr(tf, "__version__") else tf.VERSION
  return ("tf1" if version.startswith("1.") else "tf2"), version


def environment_info():
  """What the figures were measured on: TF/Python versions, stack, CPU count, host."""
  stack, tf_version = tensorflow_stack()
  affinity = getattr(os, "sched_getaffinity", None)
  return {
      "stack": stack,
      "tensorflow_version": tf_version,
      "python_version": platform.python_version(),
      "python_executable": sys.executable,
      "cpu_count": os.cpu_count(),
      "cpus_usable": len(affinity(0)) if affinity else os.cpu_count(),
      "platform": platform.platform(),
      "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }


def peak_rss_mb():
  """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
  import resource  # pylint: disable=g-import-not-at-top
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)


class Stopwatch(object):
  """`with Stopwatch() as watch: ...` then `watch.seconds`."""

  def __enter__(self):
    self.start = time.time()
    self.seconds = None
    return self

  def __exit__(self, *unused_exc):
    self.seconds = time.time() - self.start
    return False


def emit_json(result, output=None):
  """Prints `result` as one JSON line on stdout (the script's last line) and writes it to
  `output` when given."""
  text = json.dumps(result, sort_keys=True)
  if output:
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
      os.makedirs(directory)
    with open(output, "w") as f:
      f.write(text + "\n")
  sys.stdout.write(text + "\n")
  sys.stdout.flush()
  return text


def timestamp():
  """Local time, ISO 8601 with offset."""
  return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def load_average(key="load_average"):
  """{key: [1, 5, 15 min load]}: other processes on a shared machine skew timings."""
  try:
    return {key: [round(x, 2) for x in os.getloadavg()]}
  except (AttributeError, OSError):
    return {}


def cpu_info():
  """CPU model and whether it has native bf16 instructions (AVX512_BF16, AMX-BF16)."""
  model, cpu_flags = None, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
          model = value.strip()
        elif key == "flags" and not cpu_flags:
          cpu_flags = set(value.split())
  except IOError:
    pass
  return {"cpu_model": model, "cpu_avx512_bf16": "avx512_bf16" in cpu_flags,
          "cpu_amx_bf16": "amx_bf16" in cpu_flags}


def data_root():
  """The real data sets: $DATA_ROOT, else ../shared/data next to the repository."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.environ.get("DATA_ROOT") or os.path.join(repo, "..", "shared", "data")


def reduced_precision_node_counts(graph_defs):
  """Counts nodes of (post-grappler) GraphDefs whose type attributes are bf16 / fp16.

  Shows which dtype a run really used: the auto-mixed-precision rewrite changes the
  graph the session runs, not the graph Python built.
  """
  from tensorflow.core.framework import types_pb2  # pylint: disable=g-import-not-at-top
  counts = {"nodes": 0, "bfloat16_nodes": 0, "float16_nodes": 0}
  for graph_def in graph_defs:
    for node in graph_def.node:
      counts["nodes"] += 1
      types = set()
      for value in node.attr.values():
        kind = value.WhichOneof("value")
        if kind == "type":
          types.add(value.type)
        elif kind == "list":
          types.update(value.list.type)
      counts["bfloat16_nodes"] += types_pb2.DT_BFLOAT16 in types
      counts["float16_nodes"] += types_pb2.DT_HALF in types
  return counts


def observed_dtype(counts):
  """'bfloat16', 'float16' or 'float32' from reduced_precision_node_counts."""
  if counts["bfloat16_nodes"]:
    return "bfloat16"
  if counts["float16_nodes"]:
    return "float16"
  return "float32"


_STEP_TIMER_CLASS = []


def step_timer_hook(warmup_steps, trace_step=None):
  """A SessionRunHook that times each session.run of an Estimator train/evaluate call.

  Pass it in `hooks=`; afterwards `hook.summary(batch_size, call_start)` gives images/sec
  over the steps after `warmup_steps` (the first runs build executors and run grappler),
  every step's seconds, and the set-up time from `call_start` (time.time() just before
  the train/evaluate call) to the first step. At step `trace_step` (0-based) it asks for
  the partition graphs and keeps only their reduced-precision node counts.
  """
  if not _STEP_TIMER_CLASS:
    _STEP_TIMER_CLASS.append(_define_step_timer_class())
  return _STEP_TIMER_CLASS[0](warmup_steps, trace_step)


def _define_step_timer_class():
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top

  class StepTimerHook(tf.train.SessionRunHook):
    """See step_timer_hook."""

    def __init__(self, warmup_steps, trace_step):
      self.warmup_steps = warmup_steps
      self.trace_step = trace_step
      self.begin_time = None
      self.session_ready_time = None
      self.step_starts = []
      self.step_ends = []
      self.trainable_parameters = None
      self.dtype_counts = None

    def begin(self):
      self.begin_time = time.time()
      self.trainable_parameters = int(sum(
          v.shape.num_elements() for v in tf.trainable_variables()))

    def after_create_session(self, session, coord):
      del session, coord
      self.session_ready_time = time.time()

    def before_run(self, run_context):
      self.step_starts.append(time.time())
      if len(self.step_starts) - 1 == self.trace_step:
        return tf.train.SessionRunArgs(
            None, options=tf.RunOptions(output_partition_graphs=True))
      return None

    def after_run(self, run_context, run_values):
      self.step_ends.append(time.time())
      if len(self.step_ends) - 1 == self.trace_step and run_values.run_metadata is not None:
        self.dtype_counts = reduced_precision_node_counts(
            run_values.run_metadata.partition_graphs)

    def summary(self, batch_size, call_start=None):
      """Images/sec after warm-up (None if no step ran after it) and the step timings."""
      steps = len(self.step_ends)
      seconds = [round(end - start, 4) for start, end in
                 zip([self.step_starts[0]] + self.step_ends[:-1], self.step_ends)] \
          if steps else []
      timed = steps - self.warmup_steps
      rate = None
      if timed > 0:
        window_start = (self.step_ends[self.warmup_steps - 1] if self.warmup_steps
                        else self.step_starts[0])
        rate = timed * batch_size / (self.step_ends[-1] - window_start)
      result = {
          "images_per_sec": round(rate, 3) if rate else None,
          "steps_run": steps,
          "warmup_steps": min(self.warmup_steps, steps),
          "timed_steps": max(timed, 0),
          "step_seconds": seconds,
          "first_step_seconds": seconds[0] if seconds else None,
      }
      if call_start is not None and self.step_starts:
        result["setup_seconds"] = round(self.step_starts[0] - call_start, 3)
      if self.begin_time and self.session_ready_time:
        result["session_create_seconds"] = round(self.session_ready_time - self.begin_time, 3)
      if self.dtype_counts is not None:
        result["partition_graph_dtype_counts"] = self.dtype_counts
        result["observed_compute_dtype"] = observed_dtype(self.dtype_counts)
      return result

  return StepTimerHook
