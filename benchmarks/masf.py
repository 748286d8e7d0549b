"""MASF / DeepAll on PACS, leave-one-domain-out: target accuracy and seconds per iteration.

For each --targets domain and each --algorithms entry, trains the registered "masf" model
(the project's run loop, in-process) on the three other domains' train lists for
--iterations steps of 3 x --meta_batch_size images, then evaluates on the target's whole
test list (<target>_test_kfold.txt). ImageNet AlexNet weights are not available here, so
every run starts from scratch (the published figures start from ImageNet weights and train
far longer: they are anchors, not targets).

Timing: seconds per iteration are the wall-clock intervals between consecutive training
steps from step 2 on, i.e. without the graph build, session set-up (variable init, step-0
checkpoint) and the first step (which decodes and caches every source image).

PACS tfrecords are built once (input_fns.pacs.build_tfrecords, bad list lines skipped and
counted) into --tfrecord_dir or a temporary folder, and shared by all runs.

  python benchmarks/masf.py                       # full: 4 targets x {masf, deepall}
  python benchmarks/masf.py --targets=cartoon --algorithms=masf --iterations=3 \
      --meta_batch_size=6 --eval_steps=2          # tiny check

Prints one JSON object on stdout (last line; also --output) and a per-target markdown
table on stderr.
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from estimators import run_loop  # pylint: disable=g-import-not-at-top
import estimators.masf as masf  # pylint: disable=g-import-not-at-top
from input_fns import pacs  # pylint: disable=g-import-not-at-top
from migration import backend as backend_lib  # pylint: disable=g-import-not-at-top
from migration import validation  # pylint: disable=g-import-not-at-top

ALGORITHMS = ("masf", "deepall")
# Sized so the full benchmark (8 runs, whole test lists) takes about 15 min on 2 free CPU
# cores with TF 1.15 (MASF ~3 s/iteration, DeepAll ~1.5 s) and about 11 min with TF 2.15.
DEFAULT_ITERATIONS = 30
DEFAULT_META_BATCH_SIZE = 16
DEFAULT_EVAL_BATCH_SIZE = 100

# MASF paper Table 2 (AlexNet, ImageNet-pretrained), in %.
PUBLISHED = {
    "masf": dict(masf.PUBLISHED_MASF, average=75.21),
    "deepall": dict(masf.PUBLISHED_DEEPALL, average=71.70),
}
# Huawei ModelZoo MASF port README (meta_batch_size 126, cartoon target, ImageNet weights).
ASCEND_PORT_TIMING = {
    "meta_batch_size": 126,
    "iterations": 99,
    "gpu_seconds": 133.377,
    "npu_mixed_precision_seconds": 115.603,
    "npu_fp32_seconds_approx": 198.0,
    "gpu_seconds_per_iteration": round(133.377 / 99, 3),
    "npu_mixed_precision_seconds_per_iteration": round(115.603 / 99, 3),
    "source": "Ascend ModelZoo MASF_ID1191_for_TensorFlow README (99 iterations: "
              "133 s on GPU, 116 s on NPU with mixed precision)",
}


class StepTimesHook(tf.train.SessionRunHook):
  """Wall-clock marks of the training loop (graph ready, first step start, each step end)
  and this process's CPU time (all threads) at each step end."""

  def __init__(self):
    self.graph_ready = None
    self.first_step_start = None
    self.step_ends = []
    self.step_end_cpu = []

  def begin(self):
    self.graph_ready = time.time()

  def before_run(self, run_context):
    if self.first_step_start is None:
      self.first_step_start = time.time()

  def after_run(self, run_context, run_values):
    self.step_ends.append(time.time())
    self.step_end_cpu.append(time.process_time())


def _median(values):
  ordered = sorted(values)
  middle = len(ordered) // 2
  if len(ordered) % 2:
    return ordered[middle]
  return (ordered[middle - 1] + ordered[middle]) / 2.0


def _split_names(text, allowed, flag):
  names = [n.strip() for n in text.split(",") if n.strip()]
  bad = [n for n in names if n not in allowed]
  if bad or not names:
    raise SystemExit("error: --%s=%s: expected a comma-separated subset of %s"
                     % (flag, text, ",".join(allowed)))
  return [n for n in allowed if n in names]


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                      help="training steps per run (>= 2; default %(default)s)")
  parser.add_argument("--meta_batch_size", type=int, default=DEFAULT_META_BATCH_SIZE,
                      help="images per source domain per step (default %(default)s; the "
                           "paper's port uses 126)")
  parser.add_argument("--targets", default=",".join(pacs.DOMAINS),
                      help="held-out domains (default: all four)")
  parser.add_argument("--algorithms", default=",".join(ALGORITHMS),
                      help="masf and/or deepall (default: both)")
  parser.add_argument("--eval_batch_size", type=int, default=DEFAULT_EVAL_BATCH_SIZE)
  parser.add_argument("--eval_steps", type=int, default=None,
                      help="evaluate only this many batches of the target's test list "
                           "(default: the whole list; for quick checks only)")
  parser.add_argument("--dataroot", default=pacs.default_dataroot(),
                      help="PACS root with kfold/ and splits/ (default: %(default)s)")
  parser.add_argument("--tfrecord_dir", default=None,
                      help="reuse the PACS tfrecords here if present, else build them here "
                           "and keep them (default: a temporary folder, removed at the end)")
  parser.add_argument("--work_dir", default=None,
                      help="model dirs go here (default: a temporary folder, removed)")
  parser.add_argument("--keep_model_dirs", action="store_true",
                      help="keep each run's checkpoints (MASF's are ~1 GB at 227 px)")
  parser.add_argument("--device", default="auto", choices=backend_lib.DEVICES)
  parser.add_argument("--seed", type=int, default=1, help="--tf_random_seed of every run")
  parser.add_argument("--cache_decoded_images", default="true", choices=("true", "false"),
                      help="the model's flag: decode source images once per run (the "
                           "first step pays for it; default %(default)s)")
  parser.add_argument("--model_flags", default="",
                      help="extra masf.py flags for every run, space-separated, e.g. "
                           "'--outer_lr=1e-4 --image_size=227'")
  parser.add_argument("--output", default=None, help="also write the JSON here")
  parser.add_argument("--verbose", action="store_true", help="TensorFlow INFO logging")
  args = parser.parse_args(argv)
  args.target_list = _split_names(args.targets, pacs.DOMAINS, "targets")
  args.algorithm_list = _split_names(args.algorithms, ALGORITHMS, "algorithms")
  if args.iterations < 2:
    raise SystemExit("error: --iterations=%d: need >= 2 (the first step is not timed)"
                     % args.iterations)
  for name in ("meta_batch_size", "eval_batch_size"):
    if getattr(args, name) < 1:
      raise SystemExit("error: --%s=%d must be positive" % (name, getattr(args, name)))
  if args.eval_steps is not None and args.eval_steps < 1:
    raise SystemExit("error: --eval_steps=%d must be positive" % args.eval_steps)
  if not os.path.isdir(os.path.join(args.dataroot, "splits")):
    raise SystemExit("error: --dataroot=%s has no splits/ folder (PACS root expected; "
                     "set DATA_ROOT or --dataroot)" % args.dataroot)
  return args


def needed_lists(targets):
  """"<domain>_<split>" lists the runs read: every source's train and crossval lists (the
  model's flag validation checks the crossval ones) and every target's test list."""
  sources = set()
  for target in targets:
    sources.update(masf.source_domains(target))
  sources = sorted(sources, key=pacs.DOMAINS.index)
  return (["%s_%s" % (d, s) for d in sources for s in ("train", "crossval")] +
          ["%s_test" % d for d in targets])


def prepare_tfrecords(args, directory):
  """Builds (or reuses) the PACS tfrecords every run reads; returns a description dict."""
  wanted = needed_lists(args.target_list)
  summary_path = os.path.join(directory, pacs.SUMMARY_FILE)
  if os.path.isfile(summary_path):
    summary = pacs.read_summary(directory)
    missing = [k for k in wanted if k not in summary["counts"] or not os.path.isfile(
        os.path.join(directory, "pacs_%s.tfrecord" % k))]
    if not missing:
      return dict(_describe(summary, directory), built=False, build_seconds=0.0)
    sys.stderr.write("%s lacks %s: rebuilding\n" % (directory, ", ".join(missing)))
  domains = sorted(set(k.rsplit("_", 1)[0] for k in wanted), key=pacs.DOMAINS.index)
  with common.Stopwatch() as watch:
    # Each image is decoded once however many lists name it (a test list is a whole domain).
    summary = pacs.build_tfrecords(args.dataroot, directory, domains=domains,
                                   splits=pacs.SPLITS, skip_bad_lines=True)
  return dict(_describe(summary, directory), built=True, build_seconds=round(watch.seconds, 1))


def _describe(summary, directory):
  return {"tfrecord_dir": directory, "dataroot": summary.get("dataroot"),
          "counts": summary["counts"], "skipped_list_lines": len(summary["skipped_lines"]),
          "skipped_list_line_details": summary["skipped_lines"]}


def run_one(args, algorithm, target, data_dir, model_dir):
  """Trains and evaluates one (algorithm, target); returns its figures."""
  argv = ["--algorithm=%s" % algorithm, "--target_domain=%s" % target,
          "--meta_batch_size=%d" % args.meta_batch_size,
          "--train_iterations=%d" % args.iterations,
          "--data_dir=%s" % data_dir, "--model_dir=%s" % model_dir,
          "--eval_batch_size=%d" % args.eval_batch_size,
          "--tf_random_seed=%d" % args.seed, "--device=%s" % args.device,
          "--cache_decoded_images=%s" % args.cache_decoded_images,
          "--mode=train", "--keep_checkpoint_max=1",
          "--log_step_count_steps=%d" % max(args.iterations, 1)] + args.model_flags.split()
  model, flag_values = run_loop.parse_flags("masf", argv)
  run_loop.check_common_flags(flag_values)
  try:
    model.validate_flags(flag_values)
  except ValueError as e:
    raise validation.ConfigError(str(e))
  backend = backend_lib.activate(backend_lib.select_backend(flag_values.device))
  runner = run_loop.Runner(model, flag_values, backend)

  timer = StepTimesHook()
  train_start = time.time()
  runner.estimator.train(model.input_fn(flag_values, tf.estimator.ModeKeys.TRAIN),
                         max_steps=model.train_steps(flag_values), hooks=[timer])
  train_seconds = time.time() - train_start
  ends = timer.step_ends
  if len(ends) < 2:
    raise RuntimeError("%s/%s ran %d training steps; need >= 2 to time one"
                       % (algorithm, target, len(ends)))
  intervals = [b - a for a, b in zip(ends[:-1], ends[1:])]
  cpu_per_iteration = (timer.step_end_cpu[-1] - timer.step_end_cpu[0]) / len(intervals)

  eval_cpu_start = time.process_time()
  with common.Stopwatch() as eval_watch:
    results = runner.estimator.evaluate(model.domain_eval_input_fn(flag_values, target, "test"),
                                        steps=args.eval_steps)
  eval_cpu_seconds = time.process_time() - eval_cpu_start
  accuracy = float(results["accuracy/" + target])
  seconds_per_iteration = sum(intervals) / len(intervals)
  return {
      "algorithm": algorithm,
      "target_domain": target,
      "source_domains": list(masf.source_domains(target)),
      "device": backend.device,
      "iterations": len(ends),
      "global_step": int(results["global_step"]),
      "target_accuracy": accuracy,
      "target_accuracy_percent": round(100.0 * accuracy, 2),
      "published_percent": PUBLISHED[algorithm][target],
      "target_test_examples": int(round(float(results["examples/" + target]))),
      "target_test_list_size": pacs.PacsSource(data_dir=data_dir).count(target, "test"),
      "eval_loss": float(results["loss"]),
      "seconds_per_iteration": round(seconds_per_iteration, 4),
      "seconds_per_iteration_median": round(_median(intervals), 4),
      "seconds_per_iteration_min": round(min(intervals), 4),
      "seconds_per_iteration_max": round(max(intervals), 4),
      "cpu_seconds_per_iteration": round(cpu_per_iteration, 4),
      "images_per_second": round(3 * args.meta_batch_size / seconds_per_iteration, 2),
      "timed_iterations": len(intervals),
      "first_step_seconds": round(ends[0] - timer.first_step_start, 2),
      "graph_build_seconds": round(timer.graph_ready - train_start, 2),
      "session_setup_seconds": round(timer.first_step_start - timer.graph_ready, 2),
      "train_seconds": round(train_seconds, 2),
      "final_checkpoint_and_close_seconds": round(train_start + train_seconds - ends[-1], 2),
      "eval_seconds": round(eval_watch.seconds, 2),
      "eval_cpu_seconds": round(eval_cpu_seconds, 2),
  }


def summarize(runs, algorithms):
  """{algorithm: {target: accuracy %, ..., average: mean over the targets run}}."""
  measured = {}
  for algorithm in algorithms:
    rows = dict((r["target_domain"], r["target_accuracy_percent"]) for r in runs
                if r["algorithm"] == algorithm)
    if rows:
      rows["average"] = round(sum(rows.values()) / len(rows), 2)
      measured[algorithm] = rows
  return measured


def tables(runs, algorithms):
  parts = []
  for algorithm in algorithms:
    accuracies = dict((r["target_domain"], r["target_accuracy"]) for r in runs
                      if r["algorithm"] == algorithm)
    if accuracies:
      reference = masf.PUBLISHED_MASF if algorithm == "masf" else masf.PUBLISHED_DEEPALL
      parts.append(masf.format_domain_table(
          accuracies, reference,
          title="%s target accuracy (%%), from scratch; reference = published, ImageNet "
                "AlexNet" % ("MASF" if algorithm == "masf" else "DeepAll")))
  speed = ["", "| algorithm | target | s/iteration (median) | first step s | eval s |",
           "|---|---|---|---|---|"]
  for r in runs:
    speed.append("| %s | %s | %.3f (%.3f) | %.1f | %.1f |"
                 % (r["algorithm"], r["target_domain"], r["seconds_per_iteration"],
                    r["seconds_per_iteration_median"], r["first_step_seconds"],
                    r["eval_seconds"]))
  return "\n\n".join(parts) + "\n" + "\n".join(speed)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  level = logging.INFO if args.verbose else logging.WARNING
  tf.logging.set_verbosity(tf.logging.INFO if args.verbose else tf.logging.WARN)
  logging.getLogger("tensorflow").setLevel(level)
  logging.basicConfig(level=level, format="%(levelname)s %(message)s")
  started = time.time()
  environment = dict(common.environment_info(), **common.cpu_info())
  started_at = common.timestamp()

  temporary = []
  tfrecord_dir = args.tfrecord_dir
  if not tfrecord_dir:
    tfrecord_dir = tempfile.mkdtemp(prefix="masf_bench_pacs_")
    temporary.append(tfrecord_dir)
  work_dir = args.work_dir
  if not work_dir:
    work_dir = tempfile.mkdtemp(prefix="masf_bench_runs_")
    temporary.append(work_dir)
  try:
    data = prepare_tfrecords(args, tfrecord_dir)
    sys.stderr.write("PACS tfrecords in %s (%s, %.1f s)\n"
                     % (tfrecord_dir, "built" if data["built"] else "reused",
                        data["build_seconds"]))
    runs = []
    for target in args.target_list:
      for algorithm in args.algorithm_list:
        model_dir = os.path.join(work_dir, "%s_%s" % (algorithm, target))
        if os.path.exists(model_dir):
          shutil.rmtree(model_dir)
        try:
          run = run_one(args, algorithm, target, tfrecord_dir, model_dir)
        except (validation.ConfigError, backend_lib.BackendError, ValueError) as e:
          raise SystemExit("error: %s/%s: %s" % (algorithm, target, e))
        finally:
          if not args.keep_model_dirs and os.path.isdir(model_dir):
            shutil.rmtree(model_dir, ignore_errors=True)
        runs.append(run)
        sys.stderr.write("%s %s: %.2f%% on %d test images, %.3f s/iteration, first step "
                         "%.1f s, eval %.1f s\n"
                         % (algorithm, target, run["target_accuracy_percent"],
                            run["target_test_examples"], run["seconds_per_iteration"],
                            run["first_step_seconds"], run["eval_seconds"]))
  finally:
    for path in temporary:
      shutil.rmtree(path, ignore_errors=True)

  table = tables(runs, args.algorithm_list)
  sys.stderr.write(table + "\n")
  whole_lists = args.eval_steps is None
  result = {
      "benchmark": "masf",
      "started": started_at,
      "weights": "from scratch",
      "weights_note": "ImageNet AlexNet (bvlc_alexnet.npy) is not available here; the "
                      "published figures start from it and train far longer, so they are "
                      "anchors, not expected values",
      "environment": environment,
      "settings": {
          "iterations": args.iterations, "meta_batch_size": args.meta_batch_size,
          "images_per_iteration": 3 * args.meta_batch_size,
          "targets": args.target_list, "algorithms": args.algorithm_list,
          "eval_batch_size": args.eval_batch_size, "eval_steps": args.eval_steps,
          "evaluated_whole_target_test_list": whole_lists,
          "eval_note": None if whole_lists else (
              "--eval_steps cut the evaluation short: the test lists are ordered by class, "
              "so the accuracies cover only the first class(es) and mean nothing"),
          "device": args.device, "seed": args.seed,
          "cache_decoded_images": args.cache_decoded_images == "true",
          "model_flags": args.model_flags,
          "timing": "seconds_per_iteration = mean wall-clock interval between consecutive "
                    "training steps from step 2 on (graph build, session set-up and the "
                    "first, decoding/caching step excluded); cpu_seconds_per_iteration = "
                    "this process's CPU time (all threads) over the same steps, less "
                    "sensitive to other load on the machine",
      },
      "data": dict(data, tfrecord_dir_kept=bool(args.tfrecord_dir)),
      "runs": runs,
      "measured_accuracy_percent": summarize(runs, args.algorithm_list),
      "published_accuracy_percent": PUBLISHED,
      "published_timing": ASCEND_PORT_TIMING,
      "table_markdown": table,
      "measured_seconds_per_iteration": dict(
          (a, dict((r["target_domain"], r["seconds_per_iteration"]) for r in runs
                   if r["algorithm"] == a)) for a in args.algorithm_list),
      "load_average_at_end": common.load_average().get("load_average"),
      "peak_rss_mb": common.peak_rss_mb(),
      "total_seconds": round(time.time() - started, 1),
  }
  common.emit_json(result, args.output)
  return 0


if __name__ == "__main__":
  sys.exit(main())
