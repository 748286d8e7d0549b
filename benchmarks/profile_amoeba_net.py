"""Where the AmoebaNet-D training step spends its time: per-op-type and per-node totals,
and the shares of the forward and backward passes, optimizer, EMA, input and summaries.

Trains the configuration of benchmarks/amoeba_net.py (default: full, N6 F256 224 px,
batch 8, synthetic images, the users' Runner) and traces --trace_steps steps after
--warmup_steps with RunOptions(trace_level=FULL_TRACE), the data TensorFlow's timeline is
drawn from. Each traced node is attributed to its op type (from the trace's own label, so
grappler's fused ops keep their names) and to one part of the step by its name scope. The
step's own hooks (summaries every --save_summary_steps, step counters, the NaN check) run
as in any training; the untraced steps' wall time is reported apart, since tracing slows
a step. "op_seconds" add the ops' own durations over the threads that ran them, so they can
exceed the wall time.

  python benchmarks/profile_amoeba_net.py                       # full, fp32 (about 3 min)
  python benchmarks/profile_amoeba_net.py --config=full_mixed   # bf16 where TF rewrites it
  python benchmarks/profile_amoeba_net.py --config=small --trace_steps=2 -- --inter_op_threads=1

Flags after `--` go to the run loop as they are (e.g. thread pools). JSON: stdout's last line.
"""
import argparse
import collections
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

from benchmarks import amoeba_net  # pylint: disable=g-import-not-at-top
from benchmarks import common  # pylint: disable=g-import-not-at-top
from estimators import registry  # pylint: disable=g-import-not-at-top
from estimators import run_loop  # pylint: disable=g-import-not-at-top

OPTIONS = (  # (name, default, help, valid)
    ("warmup_steps", 3, "untimed, untraced steps first", registry.at_least(2)),
    ("trace_steps", 3, "traced steps", registry.POSITIVE),
    ("plain_steps", 3, "untraced timed steps after them (the step's wall time without "
     "tracing)", registry.POSITIVE),
    ("top", 25, "op types and nodes listed, longest first", registry.POSITIVE),
    ("batch_size_full", 8, None, registry.POSITIVE),
    ("batch_size_small", 32, None, registry.POSITIVE))
# Parts of the training step, by the node's name scope; first match wins, else "forward".
# The optimizer's scope is its name (RMSProp, Momentum, GradientDescent) and gradient
# clipping's; TensorFlow names the gradient ops gradients/...; apply_ema's scope is
# moving_average; the Estimator's step counter and our hooks' fetches are global_step ops.
PART_PATTERNS = (
    ("summaries", re.compile(r"(^|/)(summaries?|Merge/MergeSummary)|Summary$")),
    ("checkpoint", re.compile(r"^save(_\d+)?/")),
    ("input", re.compile(r"^(IteratorGetNext|IteratorV2|Iterator|OneShotIterator|"
                         r"MakeIterator|input_fn)")),
    ("ema", re.compile(r"^moving_average/")),
    ("optimizer", re.compile(r"^(RMSProp|Momentum|GradientDescent|clip_by_global_norm|"
                             r"LossScale|loss_scale|global_norm)")),
    ("backward", re.compile(r"^gradients(_\d+)?/")),
    ("step_counter", re.compile(r"^(global_step|GreaterEqual|Assign(Add)?Variable)")),
)
RUNTIME = "(runtime)"
HOST_TRACER_DEVICE = "/host:CPU"
LABEL_OP_TYPE = re.compile(r"=\s*([\w:>-]+)\(")  # "name = OpType(inputs)"


def part_of(node_name, op_type):
  if op_type == RUNTIME:
    return "runtime"
  for part, pattern in PART_PATTERNS:
    if pattern.search(node_name) or (part == "summaries" and pattern.search(op_type)):
      return part
  return "forward"


def node_op_type(node_stats):
  """The op type the trace's label gives ("name = OpType(...)"); runtime nodes (_SOURCE,
  transfers) have none and count as "(runtime)"."""
  match = LABEL_OP_TYPE.search(node_stats.timeline_label)
  return match.group(1) if match else RUNTIME


def aggregate(step_stats_list):
  """Per op type and per part: op seconds summed over `step_stats_list` and divided by the
  number of steps, with each one's share of all op seconds."""
  by_type, by_part, by_node, counts = (collections.Counter(), collections.Counter(),
                                       collections.Counter(), collections.Counter())
  for step_stats in step_stats_list:
    for device in step_stats.dev_stats:
      if device.device.endswith(HOST_TRACER_DEVICE):
        continue  # the profiler's host tracer: a second record of the same ops
      for node in device.node_stats:
        seconds = node.all_end_rel_micros / 1e6
        op_type = node_op_type(node)
        by_type[op_type] += seconds
        by_node[node.node_name] += seconds
        counts[op_type] += 1
        by_part[part_of(node.node_name, op_type)] += seconds
  steps = max(len(step_stats_list), 1)
  total = sum(by_type.values()) or 1.0

  def rows(counter):
    return [{"name": name, "op_seconds_per_step": round(seconds / steps, 4),
             "share": round(seconds / total, 4)} for name, seconds in counter.most_common()]

  types = rows(by_type)
  for row in types:
    row["nodes_per_step"] = counts[row["name"]] // steps
  return {"op_seconds_per_step": round(total / steps, 4), "parts": rows(by_part),
          "op_types": types, "nodes": rows(by_node)}


class TraceHook(tf.train.SessionRunHook):
  """Traces Session.run calls number `first` .. `first + count - 1` (0-based) and times
  every call's wall time."""

  def __init__(self, first, count):
    self.first, self.count = first, count
    self.step_stats, self.walls, self.traced = [], [], []
    self.end_of_steps = self._start = None

  def _this_call_traced(self):
    return self.first <= len(self.walls) < self.first + self.count

  def before_run(self, run_context):
    self._start = time.time()
    if self._this_call_traced():
      return tf.train.SessionRunArgs(
          None, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))
    return None

  def after_run(self, run_context, run_values):
    self.end_of_steps = time.time()
    traced = self._this_call_traced()
    if traced:
      self.step_stats.append(run_values.run_metadata.step_stats)
    self.traced.append(traced)
    self.walls.append(self.end_of_steps - self._start)


def parse_args(argv):
  parser = common.options_parser(__doc__.split("\n")[0], OPTIONS,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--config", default="full", choices=amoeba_net.CONFIG_NAMES)
  parser.add_argument("--device", default="auto", help="the run loop's --device")
  parser.add_argument("--output", default=None, help="also write the JSON here")
  parser.add_argument("run_loop_flags", nargs="*", help="after --: run-loop flags")
  args = parser.parse_args(argv)
  common.check_options(parser, args, OPTIONS)
  return args


def profile(args, model_dir):
  settings = amoeba_net.config_settings(args.config, args)
  steps = args.warmup_steps + args.trace_steps + args.plain_steps
  argv = amoeba_net.training_argv(settings, args.device, model_dir, steps) + args.run_loop_flags
  runner = run_loop.prepare(amoeba_net.MODEL_NAME, argv)
  hook = TraceHook(args.warmup_steps, args.trace_steps)
  start = time.time()
  runner.train(steps, [hook])
  end = time.time()
  plain = hook.walls[args.warmup_steps + args.trace_steps:]
  traced = [wall for wall, was_traced in zip(hook.walls, hook.traced) if was_traced]
  profile_result = aggregate(hook.step_stats)
  for key in ("op_types", "nodes"):
    profile_result[key] = profile_result[key][:args.top]
  batch = settings["batch_size"]
  summary_steps = runner.estimator.config.save_summary_steps
  return dict(
      profile_result, config=args.config, batch_size=batch,
      compute_dtype=runner.config.compute_dtype,
      untraced_step_seconds=[round(wall, 4) for wall in plain],
      untraced_images_per_sec=round(batch * len(plain) / sum(plain), 3),
      traced_step_seconds=[round(wall, 4) for wall in traced],
      # The Estimator writes summaries at step 0 and every save_summary_steps; the checkpoint
      # at the end is saved after the last step, with the finite-weights check before it.
      summary_steps_traced=[step for step in range(args.warmup_steps,
                                                   args.warmup_steps + args.trace_steps)
                            if summary_steps and step % summary_steps == 0],
      first_step_seconds=round(hook.walls[0], 3),
      end_of_training_seconds=round(end - hook.end_of_steps, 3),
      train_call_seconds=round(end - start, 3), run_loop_flags=argv[1:])


def main(argv):
  args = parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  start, result = time.time(), common.header("amoeba_net_profile")
  with tempfile.TemporaryDirectory(prefix="profile_amoeba_") as model_dir:
    result.update(profile(args, model_dir))
  result["peak_rss_mb"] = common.peak_rss_mb()
  common.finish(result, args.output, start)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
