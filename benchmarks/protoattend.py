"""ProtoAttend on real Fashion-MNIST: test accuracy against training steps and wall time.

Trains in chunks with the Runner `protoattend.py` runs (run_loop.prepare; each chunk resumes
from the last checkpoint), evaluating the whole test set (+ the OOD digits) after each. A
chunk ends after --eval_every_steps steps or --eval_every_minutes; the run stops at
--max_steps or after --max_minutes of training (train calls' wall time: graph build,
session, checkpoints). JSON (stdout's last line): the curve, best accuracies, when the
Ascend port's 93.81 % was first reached, timings, the input pipeline's rate, the settings,
the best accuracy and steps/s as ratios to the target, the run before issue 16 and
--previous, and the machine's matmul peak measured in the same run.

Usage (any protoattend.py / run-loop flag may follow, in --name=value form):
  python benchmarks/protoattend.py --output=pa.json       # TF 2.15: 100 min, 44000 steps
  python benchmarks/protoattend.py --max_minutes=25 --max_steps=3000 \
      --eval_every_steps=1000 --output=pa_tf1.json      # TF 1.15 (fp32, about 4x slower)
  python benchmarks/protoattend.py --model_dir=runs/pa ...           # a run that keeps its
  python benchmarks/protoattend.py --model_dir=runs/pa ... --resume  # checkpoints; resumed
"""
import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from estimators import registry  # pylint: disable=g-import-not-at-top
from estimators import run_loop  # pylint: disable=g-import-not-at-top
from input_fns import throughput  # pylint: disable=g-import-not-at-top

MODEL_NAME = "protoattend"
ASCEND_PORT_ACCURACY = 0.9381  # ModelZoo ProtoAttend_ID2040, GPU and NPU "Val Accuracy"
HUAWEI_DECAYS_PER_RUN = 50  # num_steps / decay_every = 100000 / 2000 (upstream 400000 / 8000)
DEFAULT_MAX_STEPS = 44000
AUTO_PRECISION_MODE = "allow_mix_precision"
# Model / run-loop flags this benchmark sets unless given on the command line (CHOICES: why).
MODEL_FLAG_DEFAULTS = {"in_batch_candidates": "--in_batch_candidates",
                       "log_step_count_steps": "--log_step_count_steps=500"}
CHOICES = {
    "in_batch_candidates": (
        "True: each query attends to the other 127 queries of its batch instead of 1024 "
        "extra candidate images; measured on 2 cores (TF 2.15, fp32) 3.9 steps/s vs 0.44 "
        "(1024 candidates) and 1.29 (256), i.e. about 9x more epochs in the same time. "
        "Evaluation still uses the fixed database of eval_cand_size training images."),
    "precision_mode": (
        "Unless given: %s (bf16 auto mixed precision) when TensorFlow has the oneDNN CPU "
        "bf16 rewrite (TF 2.x) and the CPU has native bf16 (AVX512_BF16 or AMX-BF16), "
        "else unset (fp32). Measured on this 2-core EPYC with avx512_bf16 (TF 2.15, "
        "in-batch, shared machine): 0.215 vs 0.29 CPU-seconds per step (-25 %%), 4.0-5.2 "
        "vs 3.4-4.2 steps/s. The rewrite makes convolutions, dense layers and the "
        "attention-score and weighting matmuls bf16; sparsemax, losses and Adam stay "
        "fp32." % AUTO_PRECISION_MODE),
    "decay_every": (
        "Unless given: max_steps / %d, so the exponential schedule keeps the shape of the "
        "published runs (Huawei 100000 / 2000, upstream 400000 / 8000: the learning rate "
        "ends at 0.9^50 = 0.5 %% of init_learning_rate) compressed onto the step budget. "
        "Set --max_steps to what fits into --max_minutes." % HUAWEI_DECAYS_PER_RUN),
    "max_steps": (
        "Default %d: what in-batch bf16 training does in about 90 of the 100 minutes "
        "on 2 idle cores with TF 2.15 (8.6 steps/s measured, 0.20 CPU-seconds per "
        "step; TF 1.15 fp32 2.0 steps/s), so the schedule completes inside the budget: "
        "pass what fits for another stack, precision or load."
        % DEFAULT_MAX_STEPS),
    "evaluation": (
        "Whole test set (10000) plus 1797 OOD digits, eval_cand_size candidates; "
        "'accuracy' is the prototype accuracy, the figure behind the Ascend port's "
        "93.81 %."),
    "unchanged": (
        "Huawei defaults for everything else: batch 128, Adam 1e-3, decay_rate 0.9, "
        "sparsemax, gradient clip 20, ResNet-32, eval_cand_size 1024, seed 1."),
}
RUN_SETTINGS = ("train_batch_size", "eval_batch_size", "eval_steps", "tf_random_seed",
                "loss_scale", "save_summary_steps", "log_step_count_steps", "intra_op_threads",
                "inter_op_threads", "eval_cand_seed", "data_dir", "precision_mode")
CURVE_METRICS = dict(  # curve point key: its evaluation result
    {name: name for name in ("accuracy_prototypes", "accuracy_query", "accuracy_joint",
                             "ood_auroc", "mean_max_weight")}, eval_loss="loss",
    **{"median_prototypes_%dpct_weight" % pct: "prototypes_for_%d%%_weight/median" % pct
       for pct in (50, 90, 95)})
# The README's run before issue 16 (TF 2.15, bf16, in-batch, 44,000 steps, weight decay 0):
# best 93.06 % after 63 min, 8.6 steps/s.
ISSUE_16_BEFORE = {"best_accuracy_prototypes": 0.9306, "steps_per_sec_steady": 8.6}
# Written to the model_dir after each chunk: what --resume continues from.
PROGRESS_FILE = "benchmark_progress.json"
OPTIONS = (  # (name, default, help[, valid]) of the benchmark's own options
    ("max_minutes", 100.0, "Stop after this much training wall time (evaluations "
     "excluded).", registry.POSITIVE),
    ("max_steps", DEFAULT_MAX_STEPS, "Stop at this global step (also scales decay_every).",
     registry.POSITIVE),
    ("eval_every_steps", 4000, "Training steps per chunk.", registry.POSITIVE),
    ("eval_every_minutes", 0.0, "Training minutes per chunk (0: chunks by steps only).",
     registry.NON_NEGATIVE),
    ("decays_per_run", float(HUAWEI_DECAYS_PER_RUN), "decay_every = max_steps / this, unless "
     "--decay_every is given.", registry.POSITIVE),
    ("target_accuracy", ASCEND_PORT_ACCURACY, "Report when the prototype accuracy first "
     "reaches this.", registry.within(0, 1, "(]")),
    ("input_batches", 300, "Batches timed for the input pipeline's own rate (0: skip).",
     registry.NON_NEGATIVE),
    ("output", None, "Also write the JSON here."),
    ("previous", None, "An earlier run's JSON: the best accuracy and steps/s also as "
     "ratios to that run's."),
    ("keep_model_dir", False, "Keep the temporary model_dir (ignored with --model_dir)."),
    ("resume", False, "Continue the run whose checkpoints and %s are in --model_dir (the "
     "same --max_steps and schedule): its curve and training time carry on." % PROGRESS_FILE),
    ("verbose", False, "TensorFlow INFO logging."))


def parse_args(argv):
  parser = common.options_parser(__doc__, OPTIONS, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  args, model_argv = parser.parse_known_args(argv)
  common.check_options(parser, args, OPTIONS)
  if args.previous and not os.path.isfile(args.previous):
    parser.error("--previous=%s is not a file" % args.previous)
  for arg in model_argv:
    if not arg.startswith("--"):
      parser.error("unexpected argument %r: model flags take the form --name=value" % arg)
  return args, model_argv


def given_flag_names(model_argv):
  """Names of the flags on the command line (`--x=1`, `--x`, `--nox` all name x)."""
  names = {arg[2:].split("=", 1)[0] for arg in model_argv}
  return names | {name[2:] for name in names if name.startswith("no")}


def build_model_argv(args, model_argv, model_dir):
  """The model flags: the user's, plus this benchmark's defaults where not given."""
  given = given_flag_names(model_argv)
  for alias in ("train_steps", "num_steps"):
    if alias in given:
      raise SystemExit("error: --%s: use the benchmark's --max_steps" % alias)
  extra = [arg for name, arg in sorted(MODEL_FLAG_DEFAULTS.items()) if name not in given]
  extra.append("--train_steps=%d" % args.max_steps)
  decay_source = "flag"
  if "decay_every" not in given:
    extra.append("--decay_every=%d" % max(1, int(round(args.max_steps / args.decays_per_run))))
    decay_source = "max_steps / decays_per_run"
  if "model_dir" not in given and "train_url" not in given:
    extra.append("--model_dir=%s" % model_dir)
  return list(model_argv) + extra, decay_source


def learning_rate_at(step, config):
  return config.init_learning_rate * config.decay_rate ** (step / float(config.decay_every))


def curve_point(results, config, totals, eval_seconds, start):
  point = {
      "global_step": int(results["global_step"]),
      "train_wall_seconds": round(totals["train_wall"], 2),
      "train_step_seconds": round(totals["train_step"], 2),
      "total_wall_seconds": round(time.time() - start, 2),
      "eval_seconds": round(eval_seconds, 2),
      "learning_rate": learning_rate_at(int(results["global_step"]), config),
  }
  for key, name in CURVE_METRICS.items():
    if name in results:
      point[key] = round(float(results[name]), 5)
  return point


def milestone(point, key):
  """When `point` (None: never) was reached, and its `key`."""
  return point and {k: point[k] for k in ("global_step", "train_wall_seconds",
                                          "total_wall_seconds", key)}


def best_of(curve, key):
  return milestone(max(curve, key=lambda p: p[key]) if curve and key in curve[0] else None, key)


def run(args, model_argv):
  """The benchmark; returns its JSON object."""
  start, result = time.time(), common.header("protoattend_accuracy_vs_time")
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)
  tf.logging.set_verbosity(tf.logging.INFO if args.verbose else tf.logging.WARN)
  temp_dir = tempfile.mkdtemp(prefix="bench_protoattend_")
  temp_model_dir = os.path.join(temp_dir, "model")
  try:
    full_argv, decay_source = build_model_argv(args, model_argv, temp_model_dir)
    with common.Stopwatch() as preparation:
      runner, full_argv, precision_source = prepare(full_argv, model_argv)
    config = runner.config
    progress = earlier_progress(args, config)
    input_rate = input_pipeline_rate(runner.model.input_fn(config, "train"),
                                     config.train_batch_size, args.input_batches)
    result["matmul_peak_gflops"] = common.matmul_peaks()
    result.update(report(args, config, *train_in_chunks(args, runner, start, progress),
                         start=start))
    if progress:
      result["resumed_at_step"] = progress["step"]
  finally:
    if not args.keep_model_dir:
      shutil.rmtree(temp_dir, ignore_errors=True)
  result["data"]["data_prep_seconds"] = round(preparation.seconds, 2)
  result["timing"]["input_pipeline_examples_per_sec"] = input_rate
  result["settings"] = settings(args, config, decay_source, precision_source, full_argv)
  result["comparison"] = comparison(result, args,
                                    common.load_json(args.previous) if args.previous else None)
  if args.keep_model_dir or config.model_dir != temp_model_dir:
    result["model_dir"] = config.model_dir
  return result


def prepare(full_argv, model_argv):
  """The run's Runner (run_loop.prepare: every check; the TFRecord cache built), its flags
  and where its precision mode came from: unless given, bf16 auto mixed precision where it
  runs on native CPU bf16 units (AVX512_BF16, AMX-BF16), else fp32."""
  try:
    if "precision_mode" in given_flag_names(model_argv):
      return run_loop.prepare(MODEL_NAME, full_argv), full_argv, "flag"
    cpu = common.cpu_info()
    if cpu["cpu_avx512_bf16"] or cpu["cpu_amx_bf16"]:
      bf16_argv = full_argv + ["--precision_mode=" + AUTO_PRECISION_MODE]
      runner = run_loop.prepare(MODEL_NAME, bf16_argv)
      if runner.config.device == "cpu" and runner.config.compute_dtype == "bfloat16":
        return runner, bf16_argv, "default: native CPU bf16 found"
    return run_loop.prepare(MODEL_NAME, full_argv), full_argv, "default: fp32"
  except (flags.Error, ValueError) as e:  # ValueError: the one-line ConfigError/BackendError
    raise SystemExit("error: %s" % e)


def schedule_of(args, config):
  return {"max_steps": args.max_steps, "decay_every": config.decay_every,
          "init_learning_rate": config.init_learning_rate, "decay_rate": config.decay_rate}


def earlier_progress(args, config):
  """What --resume continues from (None for a fresh run); one line when the model_dir
  holds checkpoints of no resumable run, or of a run with another schedule."""
  checkpoint = tf.train.latest_checkpoint(config.model_dir)
  path = os.path.join(config.model_dir, PROGRESS_FILE)
  if not checkpoint:
    return None
  if not args.resume:
    raise SystemExit("error: --model_dir=%s already holds a checkpoint; the benchmark "
                     "trains from scratch unless --resume" % config.model_dir)
  if not os.path.isfile(path):
    raise SystemExit("error: --resume: %s not found (the checkpoints are not a benchmark "
                     "run's)" % path)
  with open(path) as f:
    progress = json.load(f)
  if progress["schedule"] != schedule_of(args, config):
    raise SystemExit("error: --resume: %s was run with %s, this run asks for %s"
                     % (path, progress["schedule"], schedule_of(args, config)))
  return progress


def save_progress(args, config, curve, totals, step):
  path = os.path.join(config.model_dir, PROGRESS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"schedule": schedule_of(args, config), "curve": curve, "totals": totals,
               "step": step}, f)
  os.replace(path + ".tmp", path)  # a run killed while writing keeps the previous file


def train_in_chunks(args, runner, start, progress=None):
  """Trains chunk by chunk, evaluating after each (from `progress` when resuming); returns
  the curve, the chunks' summed figures (collections.Counter) and the last global step."""
  budget = args.max_minutes * 60.0
  totals, curve, step = collections.Counter(), [], 0
  if progress:
    totals.update(progress["totals"])
    curve, step = progress["curve"], progress["step"]
  while step < args.max_steps and totals["train_wall"] < budget:
    chunk_start = time.time()
    deadline = chunk_start + budget - totals["train_wall"]
    if args.eval_every_minutes:
      deadline = min(deadline, chunk_start + 60.0 * args.eval_every_minutes)
    timer = common.StepTimer(deadline=deadline)
    runner.train(min(step + args.eval_every_steps, args.max_steps), extra_hooks=[timer])
    totals.update(timer.totals(chunk_start, time.time()))
    with common.Stopwatch() as evaluation:
      results = runner.evaluate()
    totals.update(chunks=1, eval=evaluation.seconds)
    point = curve_point(results, runner.config, totals, evaluation.seconds, start)
    curve.append(point)
    sys.stderr.write("protoattend bench: %s\n" % point)
    if point["global_step"] <= step:
      break  # no progress (e.g. every step skipped): stop instead of looping
    step = point["global_step"]
    save_progress(args, runner.config, curve, totals, step)
  return curve, totals, step


def report(args, config, curve, totals, step, start):
  """The data, the curve and its summary, the timing."""
  counts = config.record_counts
  steady_steps = totals["steps"] - totals["chunks"]
  steady_seconds = totals["train_step"] - totals["first_step"]
  return {
      "data": {
          "dataset": "Fashion-MNIST (official IDX files) + scikit-learn digits as OOD",
          "data_dir": os.path.abspath(config.data_dir),
          "tfrecord_dir": config.tfrecord_dir,
          "train_examples": counts["train"],
          "eval_examples_per_evaluation": min(config.eval_steps * config.eval_batch_size,
                                              counts["test"] + counts.get("ood", 0)),
          "eval_steps": config.eval_steps},
      "choices": CHOICES, "curve": curve, "final": curve[-1] if curve else None,
      "best_accuracy_prototypes": best_of(curve, "accuracy_prototypes"),
      "best_accuracy_query": best_of(curve, "accuracy_query"),
      "first_reaching_target": milestone(next((point for point in curve if point.get(
          "accuracy_prototypes", 0.0) >= args.target_accuracy), None), "accuracy_prototypes"),
      "target_accuracy": args.target_accuracy,
      "stopped_by": ("max_steps" if step >= args.max_steps else "max_minutes"
                     if totals["train_wall"] >= args.max_minutes * 60.0 else "no_progress"),
      "timing": dict({key + "_seconds": round(totals[key], 2) for key in (
          "train_wall", "train_step", "eval")}, **{
          "first_step_seconds_all_chunks": round(totals["first_step"], 2),
          "total_wall_seconds": round(time.time() - start, 2),
          "chunks": totals["chunks"],
          "chunk_overhead_seconds": {name: round(totals[name], 2) for name in (
              "graph_build", "session_setup_and_restore", "between_steps",
              "final_checkpoint_save")},
          "steps_per_sec_train_wall": rate(step, totals["train_wall"]),
          "steps_per_sec_steady": rate(steady_steps, steady_seconds),
          "examples_per_sec_steady": rate(steady_steps * config.train_batch_size,
                                          steady_seconds),
          "cpu_seconds_per_step_steady": rate(
              totals["step_cpu"] - totals["first_step_cpu"], steady_steps)}),
      "peak_rss_mb": common.peak_rss_mb()}


def comparison(result, args, previous):
  """The best prototype accuracy and the steady steps/s as ratios to the target, the run
  before issue 16 and `previous` (an earlier run's JSON, or None); steps/s per peak
  TFLOP/s of the matmul measured in this run (bf16's when training ran in bf16)."""
  figures = {"best_accuracy_prototypes": (result["best_accuracy_prototypes"] or {}).get(
      "accuracy_prototypes"), "steps_per_sec_steady": result["timing"]["steps_per_sec_steady"]}
  out = {}
  for key, value in figures.items():
    entry = {"issue_16_before": common.ratio(value, ISSUE_16_BEFORE[key])}
    if previous:
      earlier = ((previous.get("best_accuracy_prototypes") or {}).get("accuracy_prototypes")
                 if key == "best_accuracy_prototypes" else previous["timing"].get(key))
      entry["previous_run"] = common.ratio(value, earlier)
    out[key] = entry
  out["best_accuracy_prototypes"]["target"] = common.ratio(
      figures["best_accuracy_prototypes"], args.target_accuracy)
  peaks = result["matmul_peak_gflops"]
  peak = (peaks["bfloat16"] if result["settings"]["compute_dtype"] == "bfloat16"
          else peaks["float32"])
  out["steps_per_sec_steady"]["per_peak_tflops"] = common.ratio(
      figures["steps_per_sec_steady"], peak / 1000.0 if peak else None)
  return out


def input_pipeline_rate(train_input_fn, batch_size, num_batches):
  """Query images/sec the training input_fn delivers alone (no model), before training:
  compare with examples_per_sec_steady to see whether the input could starve the model."""
  if not num_batches:
    return None

  def query_images(params):  # every feature is still produced; only query images count
    return train_input_fn(params).map(lambda features, labels: features["image"])

  return round(throughput.measure_throughput(query_images, batch_size, num_batches), 1)


def rate(count, seconds):
  return round(count / seconds, 3) if seconds > 0 else None


def settings(args, config, decay_source, precision_source, full_argv):
  """The benchmark's options and the run's values."""
  out = {name: getattr(args, name) for name in (
      "max_minutes", "max_steps", "eval_every_steps", "eval_every_minutes", "decays_per_run")}
  # The Config's value, else the flag's (the RunConfig's options, the precision mode).
  out.update((name, config.get(name, flags.FLAGS[name].value)) for name in RUN_SETTINGS)
  return dict(out, decay_every_source=decay_source, precision_mode_source=precision_source,
              model_argv=full_argv, model_params=dict(config), device=config.device,
              compute_dtype=config.compute_dtype,
              final_learning_rate=learning_rate_at(args.max_steps, config))


def main(argv=None):
  args, model_argv = parse_args(sys.argv[1:] if argv is None else argv)
  result = run(args, model_argv)
  common.finish(result, args.output)
  return result


if __name__ == "__main__":
  main()
