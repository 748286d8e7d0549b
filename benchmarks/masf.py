"""MASF / DeepAll on PACS, leave-one-domain-out: target accuracy and seconds per iteration.

For each --targets domain and --algorithms entry, trains "masf" with the Runner `masf.py`
runs (run_loop.prepare) from scratch (no ImageNet AlexNet: the published figures are
anchors, not targets) for --iterations steps of 3 x --meta_batch_size images, then evaluates
the target's whole test list. JSON on stdout (last line; also --output), tables on stderr.

  python benchmarks/masf.py                       # full: 4 targets x {masf, deepall}
  python benchmarks/masf.py --targets=cartoon --algorithms=masf --iterations=3 \
      --meta_batch_size=6 --eval_steps=2          # tiny check
"""
import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top
from estimators import run_loop  # pylint: disable=g-import-not-at-top
import estimators.masf as masf  # pylint: disable=g-import-not-at-top
from input_fns import pacs  # pylint: disable=g-import-not-at-top
from migration import backend as backend_lib  # pylint: disable=g-import-not-at-top
from tools import build_pacs_tfrecords  # pylint: disable=g-import-not-at-top

ALGORITHMS = ("masf", "deepall")
# Sized so the full benchmark (8 runs, whole test lists) takes about 15 min on 2 free CPU
# cores with TF 1.15 (MASF ~3 s/iteration, DeepAll ~1.5 s) and about 11 min with TF 2.15.
DEFAULT_ITERATIONS, DEFAULT_META_BATCH_SIZE, DEFAULT_EVAL_BATCH_SIZE = 30, 16, 100
# MASF paper Table 2 (AlexNet, ImageNet-pretrained), in %.
PUBLISHED = {"masf": dict(masf.PUBLISHED_MASF, average=75.21),
             "deepall": dict(masf.PUBLISHED_DEEPALL, average=71.70)}
# Huawei ModelZoo MASF port README (meta_batch_size 126, cartoon target, ImageNet weights).
ASCEND_PORT_TIMING = dict(
    meta_batch_size=126, iterations=99, gpu_seconds=133.377,
    npu_mixed_precision_seconds=115.603, npu_fp32_seconds_approx=198.0,
    gpu_seconds_per_iteration=round(133.377 / 99, 3),
    npu_mixed_precision_seconds_per_iteration=round(115.603 / 99, 3),
    source="Ascend ModelZoo MASF_ID1191_for_TensorFlow README (99 iterations: 133 s on "
           "GPU, 116 s on NPU with mixed precision)")
TIMING_NOTE = ("common.StepTimer: seconds_per_iteration = mean wall-clock interval between "
               "training steps from step 2 on (graph build, session set-up and the first, "
               "decoding/caching step excluded); median/min/max and cpu_seconds_per_iteration "
               "(this process's CPU time, all threads: less sensitive to other load) likewise")


def parse_args(argv):
  """The options; the model's flags (batch sizes, --eval_steps) are checked by the run."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add = parser.add_argument
  add("--iterations", type=int, default=DEFAULT_ITERATIONS, help="training steps per run "
      "(>= 2: the first step is not timed; default %(default)s)")
  add("--meta_batch_size", type=int, default=DEFAULT_META_BATCH_SIZE, help="images per "
      "source domain per step (default %(default)s; the paper's port uses 126)")
  add("--targets", default=",".join(pacs.DOMAINS), help="held-out domains (default: all)")
  add("--algorithms", default=",".join(ALGORITHMS), help="masf and/or deepall (default: both)")
  add("--eval_batch_size", type=int, default=DEFAULT_EVAL_BATCH_SIZE)
  add("--eval_steps", type=int, default=None, help="evaluate only this many batches of the "
      "target's test list (default: the whole list; for quick checks only)")
  add("--dataroot", default=pacs.default_dataroot(),
      help="PACS root with kfold/ and splits/ (default: %(default)s)")
  add("--tfrecord_dir", help="reuse the PACS tfrecords here, else build and keep them here "
      "(default: a temporary folder, removed at the end)")
  add("--work_dir", help="model dirs go here (default: a temporary folder)")
  add("--keep_model_dirs", action="store_true", help="keep the checkpoints (~1 GB at 227 px)")
  add("--device", default="auto", choices=backend_lib.DEVICES)
  add("--seed", type=int, default=1, help="--tf_random_seed of every run")
  add("--cache_decoded_images", default="true", choices=("true", "false"), help="the model's "
      "flag: decode source images once per run (the first step pays for it)")
  add("--model_flags", default="", help="extra masf.py flags for every run, space-separated, "
      "e.g. '--outer_lr=1e-4 --image_size=227'")
  add("--output", help="also write the JSON here")
  add("--verbose", action="store_true", help="TensorFlow INFO logging")
  args = parser.parse_args(argv)
  for name, allowed in (("targets", pacs.DOMAINS), ("algorithms", ALGORITHMS)):
    chosen = common.name_list(parser, name, getattr(args, name), allowed)
    setattr(args, name[:-1] + "_list", [n for n in allowed if n in chosen])
  if args.iterations < 2:
    parser.error("--iterations=%d: need >= 2 (the first step is not timed)" % args.iterations)
  if not os.path.isdir(os.path.join(args.dataroot, "splits")):
    parser.error("--dataroot=%s has no splits/ folder (set DATA_ROOT or --dataroot)"
                 % args.dataroot)
  return args


def prepare_tfrecords(args, directory):
  """Reuses, else builds, the PACS tfrecords of every domain and split (a run reads all four
  domains: its target's test list, the others' train and crossval lists)."""
  watch = common.Stopwatch()
  summary = (pacs.read_summary(directory)
             if os.path.isfile(os.path.join(directory, pacs.SUMMARY_FILE)) else None)
  built = summary is None or not all(os.path.isfile(pacs.tfrecord_path(directory, d, s))
                                     for d in pacs.DOMAINS for s in pacs.SPLITS)
  if built:
    with watch:
      summary = build_pacs_tfrecords.build_tfrecords(args.dataroot, directory,
                                                     skip_bad_lines=True)
  return {"tfrecord_dir": directory, "dataroot": summary.get("dataroot"),
          "counts": summary["counts"], "skipped_list_lines": len(summary["skipped_lines"]),
          "skipped_list_line_details": summary["skipped_lines"], "built": built,
          "build_seconds": round(watch.seconds, 1) if built else 0.0}


def iteration_timing(timer, batch_size, train_start, train_end):
  """The training's timing figures from the step timer (see TIMING_NOTE)."""
  timing = timer.summary(batch_size, train_start)
  steps, cpu = timing["step_seconds"][1:], timing["step_cpu_seconds"][1:]
  graph_build = timer.begin_time - train_start
  return {
      "iterations": timing["steps_run"], "timed_iterations": timing["timed_steps"],
      "seconds_per_iteration": round(batch_size / timing["images_per_sec"], 4),
      "seconds_per_iteration_median": round(statistics.median(steps), 4),
      "seconds_per_iteration_min": min(steps), "seconds_per_iteration_max": max(steps),
      "cpu_seconds_per_iteration": round(sum(cpu) / len(cpu), 4),
      "images_per_second": round(timing["images_per_sec"], 2),
      "first_step_seconds": round(timing["first_step_seconds"], 2),
      "graph_build_seconds": round(graph_build, 2),
      "session_setup_seconds": round(timing["setup_seconds"] - graph_build, 2),
      "train_seconds": round(train_end - train_start, 2),
      "final_checkpoint_and_close_seconds": round(train_end - timer.step_ends[-1], 2)}


def run_one(args, algorithm, target, data_dir, model_dir):
  """Trains and evaluates one (algorithm, target); returns its figures."""
  runner = run_loop.prepare("masf", [
      "--algorithm=" + algorithm, "--target_domain=" + target, "--data_dir=" + data_dir,
      "--model_dir=" + model_dir, "--meta_batch_size=%d" % args.meta_batch_size,
      "--train_iterations=%d" % args.iterations, "--log_step_count_steps=%d" % args.iterations,
      "--eval_batch_size=%d" % args.eval_batch_size, "--tf_random_seed=%d" % args.seed,
      "--device=" + args.device, "--cache_decoded_images=" + args.cache_decoded_images,
      "--mode=train", "--keep_checkpoint_max=1"] + args.model_flags.split() +
      (["--eval_steps=%d" % args.eval_steps] if args.eval_steps is not None else []))
  config, timer, train_start = runner.config, common.StepTimer(warmup_steps=1), time.time()
  runner.train(config.train_steps, extra_hooks=[timer])
  timing = iteration_timing(timer, config.train_batch_size, train_start, time.time())
  eval_cpu_start = time.process_time()
  with common.Stopwatch() as eval_watch:  # the target's test list alone, not the crossval
    results = runner.estimator.evaluate(
        runner.model.domain_eval_input_fn(config, target, "test"), steps=config.eval_steps)
  accuracy = float(results["accuracy/" + target])
  return dict(
      timing, algorithm=algorithm, target_domain=target,
      source_domains=list(config.source_domains), device=config.device,
      global_step=int(results["global_step"]), target_accuracy=accuracy,
      target_accuracy_percent=round(100.0 * accuracy, 2),
      published_percent=PUBLISHED[algorithm][target],
      target_test_examples=int(round(float(results["examples/" + target]))),
      target_test_list_size=pacs.PacsSource(data_dir=data_dir).count(target, "test"),
      eval_loss=float(results["loss"]), eval_seconds=round(eval_watch.seconds, 2),
      eval_cpu_seconds=round(time.process_time() - eval_cpu_start, 2))


def run_all(args, tfrecord_dir, work_dir):
  """Every (target, algorithm) run in turn, each from a fresh model dir."""
  runs = []
  for target in args.target_list:
    for algorithm in args.algorithm_list:
      model_dir = os.path.join(work_dir, "%s_%s" % (algorithm, target))
      shutil.rmtree(model_dir, ignore_errors=True)
      try:
        run = run_one(args, algorithm, target, tfrecord_dir, model_dir)
      except ValueError as e:  # the run's one-line ConfigError / BackendError
        raise SystemExit("error: %s/%s: %s" % (algorithm, target, e))
      finally:
        if not args.keep_model_dirs:
          shutil.rmtree(model_dir, ignore_errors=True)
      runs.append(run)
      sys.stderr.write("%(algorithm)s %(target_domain)s: %(target_accuracy_percent).2f%% on "
                       "%(target_test_examples)d test images, %(seconds_per_iteration).3f "
                       "s/iteration, first step %(first_step_seconds).1f s, eval "
                       "%(eval_seconds).1f s\n" % run)
  return runs


def by_algorithm(runs, field):
  """{algorithm: {target: run[field]}}, algorithms in the order they ran."""
  table = {}
  for run in runs:
    table.setdefault(run["algorithm"], {})[run["target_domain"]] = run[field]
  return table


def tables(runs):
  parts = [masf.format_domain_table(accuracies, PUBLISHED[algorithm], title=(
      "%s target accuracy (%%), from scratch; reference = published, ImageNet AlexNet"
      % ("MASF" if algorithm == "masf" else "DeepAll")))
           for algorithm, accuracies in by_algorithm(runs, "target_accuracy").items()]
  speed = ["| %(algorithm)s | %(target_domain)s | %(seconds_per_iteration).3f "
           "(%(seconds_per_iteration_median).3f) | %(first_step_seconds).1f | "
           "%(eval_seconds).1f |" % r for r in runs]
  return "\n\n".join(parts) + "\n\n" + "\n".join(
      ["| algorithm | target | s/iteration (median) | first step s | eval s |",
       "|---|---|---|---|---|"] + speed)


def report(args, runs, data, environment, started_at):
  whole_lists = args.eval_steps is None
  measured = by_algorithm(runs, "target_accuracy_percent")
  for rows in measured.values():  # the mean over the targets run
    rows["average"] = round(sum(rows.values()) / len(rows), 2)
  settings = dict(
      {name: getattr(args, name) for name in ("iterations", "meta_batch_size", "eval_batch_size",
                                              "eval_steps", "device", "seed", "model_flags")},
      images_per_iteration=3 * args.meta_batch_size, targets=args.target_list,
      algorithms=args.algorithm_list, evaluated_whole_target_test_list=whole_lists,
      eval_note=None if whole_lists else (
          "--eval_steps cut the evaluation short: the test lists are ordered by class, so "
          "the accuracies cover only the first class(es) and mean nothing"),
      cache_decoded_images=args.cache_decoded_images == "true", timing=TIMING_NOTE)
  return {
      "benchmark": "masf", "started": started_at, "weights": "from scratch",
      "weights_note": "ImageNet AlexNet (bvlc_alexnet.npy) is not available here; the "
                      "published figures start from it and train far longer, so they are "
                      "anchors, not expected values",
      "environment": environment, "settings": settings,
      "data": dict(data, tfrecord_dir_kept=bool(args.tfrecord_dir)),
      "runs": runs, "measured_accuracy_percent": measured,
      "published_accuracy_percent": PUBLISHED, "published_timing": ASCEND_PORT_TIMING,
      "table_markdown": tables(runs),
      "measured_seconds_per_iteration": by_algorithm(runs, "seconds_per_iteration"),
      "peak_rss_mb": common.peak_rss_mb()}


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  level = logging.INFO if args.verbose else logging.WARNING
  logging.basicConfig(level=level, format="%(levelname)s %(message)s")
  logging.getLogger("tensorflow").setLevel(level)
  started, started_at = time.time(), time.strftime(common.TIME_FORMAT)
  environment = dict(common.environment_info(), **common.cpu_info())
  tfrecord_dir = args.tfrecord_dir or tempfile.mkdtemp(prefix="masf_bench_pacs_")
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="masf_bench_runs_")
  try:
    data = prepare_tfrecords(args, tfrecord_dir)
    sys.stderr.write("PACS tfrecords in %s (%s, %.1f s)\n" % (
        tfrecord_dir, "built" if data["built"] else "reused", data["build_seconds"]))
    runs = run_all(args, tfrecord_dir, work_dir)
  finally:
    for path, given in ((tfrecord_dir, args.tfrecord_dir), (work_dir, args.work_dir)):
      if not given:
        shutil.rmtree(path, ignore_errors=True)
  result = report(args, runs, data, environment, started_at)
  sys.stderr.write(result["table_markdown"] + "\n")
  common.finish(result, args.output, started)
  return 0


if __name__ == "__main__":
  sys.exit(main())
