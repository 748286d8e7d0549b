"""AmoebaNet-D speed: training and evaluation images/sec, graph build, peak RSS, parameters,
and the Inception input pipeline on real JPEGs.

Configurations (synthetic images; `_mixed`: --precision_mode=allow_mix_precision): full (N6
F256, 224 px) and small (N3 F32, 64 px, no aux head). Each runs in its own process on the
Runner users get (run_loop.prepare): --warmup_steps + --steps training then evaluation steps
under common.StepTimer (images/sec leave the warm-up out). The input pipeline: the
AmoebaNet input_fn alone (224 px) over tfrecords built from <data root>/flowers_kaggle_128
into a temporary folder (kept with the children's logs when one fails) unless --data_dir.

  python benchmarks/amoeba_net.py --output=amoeba_speed.json   # JSON: stdout's last line
  python benchmarks/amoeba_net.py --configs=small --steps=2 --warmup_steps=2 \
      --input_batches=3   # a quick check
  python benchmarks/amoeba_net.py --configs=full --input_batches=0 --previous=before.json \
      -- --inter_op_threads=1   # run-loop flags after --; ratios to an earlier run's JSON

Each configuration's "comparison" gives its figures as ratios to --previous, to the figures
of issue 16 on this stack (the reference implementation, this project before, the targets)
and per peak TFLOP/s of the dense matmul measured at the start of the same run
("matmul_peak_gflops", fp32 and bf16), the yardstick across machines and loads.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import logging  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from estimators import registry  # pylint: disable=g-import-not-at-top
from estimators import run_loop  # pylint: disable=g-import-not-at-top
from input_fns import data_root  # pylint: disable=g-import-not-at-top
from input_fns import throughput  # pylint: disable=g-import-not-at-top

MODEL_NAME = "amoeba_net"
MIXED_SUFFIX, MIXED_PRECISION_MODE = "_mixed", "allow_mix_precision"
# Model flags per configuration. At 64 px the N3 network leaves a 4x4 map for the aux
# head's 5x5 pool, so the small configuration runs without it (as scripts/quickstart.sh).
MODEL_CONFIGS = {
    "full": {"num_cells": 6, "reduction_size": 256, "image_size": 224,
             "num_label_classes": 1001, "use_aux_head": True},
    "small": {"num_cells": 3, "reduction_size": 32, "image_size": 64,
              "num_label_classes": 1001, "use_aux_head": False},
}
CONFIG_NAMES = ("small", "small" + MIXED_SUFFIX, "full", "full" + MIXED_SUFFIX)
# The Estimator saves a checkpoint when the session starts and when training ends; a step
# count the run never reaches keeps the periodic save out of the timed steps.
CHECKPOINT_ONLY_AT_ENDS = 10 ** 9
INPUT_CHILD = "input_pipeline"
INPUT_IMAGE_SIZE, INPUT_NUM_CLASSES = 224, 1001
FLOWERS_FOLDER = "flowers_kaggle_128"
# Figures of issue 16, on this project's 2-core machine (fp32 matmul peak about 200 GFLOP/s
# on TF 1.15, 211 on TF 2.15; bf16 377 on TF 2.15), at N6 F256 224 px batch 8, RMSProp:
# the tensorflow/tpu implementation on TF 1.15.5 ("reference"), this project before the
# issue ("before"), and the issue's targets. Ranges are (low, high) of repeated runs.
ISSUE_16_FIGURES = {
    "tf1": {"full": {
        "train_images_per_sec": {"reference": (2.09, 2.32), "before": (2.22, 2.22),
                                 "target": (2.8, 2.8)},
        "eval_images_per_sec": {"reference": (10.2, 12.7), "before": (13.7, 14.1),
                                "target": (15.0, 15.0)},
        "peak_rss_mb_after_train": {"reference": (3.4 * 1024, 3.4 * 1024),
                        "before": (3.5 * 1024, 3.6 * 1024)}}},
    "tf2": {"full": {"train_images_per_sec": {"before": (4.0, 4.0), "target": (4.5, 4.5)}},
            "full_mixed": {"train_images_per_sec": {"before": (6.4, 6.4),
                                                    "target": (8.0, 8.0)},
                           "eval_images_per_sec": {"before": (23.3, 23.3)}}},
}
COMPARED_FIGURES = ("train_images_per_sec", "eval_images_per_sec", "peak_rss_mb_after_train")
OPTIONS = (  # (name, default, help, valid)
    ("steps", 10, "timed training and evaluation steps per configuration", registry.POSITIVE),
    ("warmup_steps", 3, "untimed steps before them (at least 2: the first training step "
     "also writes summaries, so the second builds another executor)", registry.at_least(2)),
    ("batch_size_full", 8, None, registry.POSITIVE),
    ("batch_size_small", 32, None, registry.POSITIVE),
    ("input_batches", 30, "timed input-pipeline batches per split; 0 skips the pipeline",
     registry.NON_NEGATIVE),
    ("input_warmup_batches", 5, None, registry.NON_NEGATIVE),
    ("input_batch_size", 32, None, registry.POSITIVE))


def parse_args(argv):
  parser = common.options_parser(__doc__.split("\n")[0], OPTIONS,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  add = parser.add_argument
  add("--configs", default=",".join(CONFIG_NAMES), help="comma-separated model "
      "configurations from %s; empty for none" % ", ".join(CONFIG_NAMES))
  add("--device", default="auto", help="the run loop's --device")
  add("--data_dir", default=None, help="ImageNet-format tfrecords for the input-pipeline "
      "figures (default: built from <data root>/%s into a temporary folder)" % FLOWERS_FOLDER)
  add("--output", default=None, help="also write the JSON here")
  add("--previous", default=None, help="an earlier run's JSON: each figure also as a ratio "
      "to that run's")
  add("--child", default=None, help=argparse.SUPPRESS)
  add("run_loop_flags", nargs="*", help="after --: run-loop flags for every configuration "
      "(e.g. -- --inter_op_threads=2)")
  args = parser.parse_args(argv)
  args.configs = common.name_list(parser, "configs", args.configs, CONFIG_NAMES, True)
  common.check_options(parser, args, OPTIONS)
  if args.data_dir and not os.path.isdir(args.data_dir):
    parser.error("--data_dir=%s is not a directory" % args.data_dir)
  if args.previous and not os.path.isfile(args.previous):
    parser.error("--previous=%s is not a file" % args.previous)
  return args


def config_settings(name, args):
  """The model flags, batch size and precision mode of configuration `name`."""
  base = name[:-len(MIXED_SUFFIX)] if name.endswith(MIXED_SUFFIX) else name
  settings = dict(MODEL_CONFIGS[base])
  settings["batch_size"] = args.batch_size_full if base == "full" else args.batch_size_small
  settings["precision_mode"] = MIXED_PRECISION_MODE if name.endswith(MIXED_SUFFIX) else None
  return settings


def timed(call, batch_size, warmup_steps):
  """call(hooks) under the step timer (dtype probed at the last warm-up step): its summary,
  seconds and graph build (from the call to the hooks' begin)."""
  timer, start = common.StepTimer(warmup_steps, probe_step=warmup_steps - 1), time.time()
  call([timer])
  return dict(timer.summary(batch_size, start), call_seconds=round(time.time() - start, 3),
              graph_build_seconds=round(timer.begin_time - start, 3))


def repeated(input_fn):
  """The input_fn read over and over (evaluation input otherwise ends after one pass)."""

  def repeated_input_fn(params):
    return input_fn(params).repeat()

  repeated_input_fn.files = input_fn.files
  return repeated_input_fn


def training_argv(settings, device, model_dir, total_steps):
  """Run-loop argv training configuration `settings` on synthetic images for `total_steps`
  (evaluation as many batches), checkpoints only at the ends."""
  batch_size = settings["batch_size"]
  argv = ["--mode=train", "--model_dir=" + model_dir, "--use_synthetic_data",
          "--device=" + device, "--train_batch_size=%d" % batch_size,
          "--eval_batch_size=%d" % batch_size, "--train_steps=%d" % total_steps,
          "--eval_steps=%d" % total_steps,
          "--save_checkpoints_steps=%d" % CHECKPOINT_ONLY_AT_ENDS]
  argv += ["--%s=%s" % (key, str(settings[key]).lower()) for key in sorted(MODEL_CONFIGS["full"])]
  return argv + (["--precision_mode=" + settings["precision_mode"]]
                 if settings["precision_mode"] else [])


def measure_model(name, args, model_dir):
  """Trains and evaluates configuration `name` on synthetic images; returns its figures."""
  settings = config_settings(name, args)
  batch_size, total_steps = settings["batch_size"], args.warmup_steps + args.steps
  argv = training_argv(settings, args.device, model_dir, total_steps) + args.run_loop_flags
  runner = run_loop.prepare(MODEL_NAME, argv)
  config = runner.config
  train = timed(lambda hooks: runner.train(total_steps, hooks), batch_size, args.warmup_steps)
  peak_after_train = common.peak_rss_mb()
  # The synthetic evaluation input ends after 10 batches: repeated, it lasts the steps.
  evaluation = timed(lambda hooks: runner.estimator.evaluate(
      repeated(runner.model.input_fn(config, "eval")), steps=total_steps, hooks=hooks),
                     batch_size, args.warmup_steps)
  return dict(
      train_images_per_sec=train["images_per_sec"], train=train, eval=evaluation,
      eval_images_per_sec=evaluation["images_per_sec"], device=config.device,
      graph_build_seconds=train["graph_build_seconds"], peak_rss_mb_after_train=peak_after_train,
      trainable_parameters=train["trainable_parameters"],
      trainable_parameters_eval_graph=evaluation["trainable_parameters"],
      precision_mode=settings["precision_mode"], compute_dtype=config.compute_dtype,
      precision_fallback_to_fp32=(bool(settings["precision_mode"]) and
                                  config.compute_dtype == "float32"),
      observed_compute_dtype={"train": train.get("observed_compute_dtype"),
                              "eval": evaluation.get("observed_compute_dtype")},
      settings=dict(settings, steps=args.steps, warmup_steps=args.warmup_steps,
                    data="synthetic (one random batch, repeated)", model_flags=argv[1:]))


def measure_input_pipeline(args, model_dir):
  """Inception preprocessing throughput of the AmoebaNet input_fn on real tfrecords."""
  runner = run_loop.prepare(MODEL_NAME, [
      "--mode=train_and_eval", "--model_dir=" + model_dir, "--data_dir=" + args.data_dir,
      "--image_size=%d" % INPUT_IMAGE_SIZE, "--num_label_classes=%d" % INPUT_NUM_CLASSES])
  result = {"image_size": INPUT_IMAGE_SIZE, "batch_size": args.input_batch_size,
            "timed_batches": args.input_batches, "warmup_batches": args.input_warmup_batches,
            "preprocessing": "inception (use_fast_color_distort=%s)"
                             % runner.config.use_fast_color_distort}
  for key in ("train", "eval"):  # the mode keys' values
    input_fn = runner.model.input_fn(runner.config, key)
    rate = throughput.measure_throughput(input_fn if key == "train" else repeated(input_fn),
                                         args.input_batch_size, args.input_batches,
                                         args.input_warmup_batches)
    result.update({key + "_images_per_sec": round(rate, 2), key + "_shards": len(input_fn.files)})
  return result


def build_flowers_tfrecords(output_dir):
  """tools/build_image_tfrecords.py on the flower photos; returns a description."""
  source = os.path.join(data_root(), FLOWERS_FOLDER)
  if not os.path.isdir(source):
    raise SystemExit("error: %s not found (set DATA_ROOT, or pass --data_dir)" % source)
  command = [sys.executable, os.path.join(REPO, "tools", "build_image_tfrecords.py"),
             "--input_dir=" + source, "--output_dir=" + output_dir, "--progress_every=0"]
  start = time.time()
  completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True)
  if completed.returncode:
    raise SystemExit("error: building tfrecords failed:\n%s" % completed.stdout[-2000:])
  return {"source": os.path.normpath(source), "built_with": "tools/build_image_tfrecords.py",
          "build_seconds": round(time.time() - start, 1),
          "builder_summary": completed.stdout.strip().splitlines()[-1]}


def measure_all(args, argv, result, temp_dir):
  """The input pipeline, then each configuration (none once the pipeline failed), each in
  a child process, into `result`; returns True when a measurement failed."""

  def spawn(child, child_argv):  # --child first: argv may end in "-- <run-loop flags>"
    return common.spawn([os.path.abspath(__file__), "--child=" + child] + child_argv,
                        os.path.join(temp_dir, child + ".log"))

  result["configs"] = {}
  if args.input_batches:
    data_dir = args.data_dir or os.path.join(temp_dir, "flowers_tfrecords")
    result["input_data"] = ({"data_dir": os.path.abspath(data_dir), "built": False}
                            if args.data_dir else
                            dict(build_flowers_tfrecords(data_dir), built=True))
    result["input_pipeline"] = spawn(INPUT_CHILD, ["--data_dir=" + data_dir] + argv)
    if "error" in result["input_pipeline"]:
      sys.stderr.write("error: input pipeline: %s; model configurations skipped\n"
                       % result["input_pipeline"]["error"])
      return True
  for name in args.configs:
    result["configs"][name] = spawn(name, argv)
  return any("error" in figures for figures in result["configs"].values())


def add_comparisons(result, previous):
  """Per configuration: each figure's ratio to `previous` (an earlier run's JSON, or None)
  and to the issue-16 figures of this stack ([to the high, to the low] end of a range),
  and images/sec per peak TFLOP/s of the matmul measured in this run."""
  peaks = result["matmul_peak_gflops"]
  for name, figures in result["configs"].items():
    if "error" in figures:
      continue
    peak = peaks["bfloat16"] if name.endswith(MIXED_SUFFIX) and peaks["bfloat16"] else \
        peaks["float32"]
    comparison = {"images_per_sec_per_peak_tflops": {
        key: common.ratio(figures.get(key), peak / 1000.0) for key in COMPARED_FIGURES[:2]}}
    earlier = ((previous or {}).get("configs") or {}).get(name) or {}
    for key in COMPARED_FIGURES:
      value = figures.get(key)
      entry = {label: [common.ratio(value, high), common.ratio(value, low)]
               for label, (low, high) in
               ISSUE_16_FIGURES[result["stack"]].get(name, {}).get(key, {}).items()}
      if earlier.get(key):
        entry["previous_run"] = common.ratio(value, earlier[key])
      comparison[key] = entry
    figures["comparison"] = comparison


def main(argv):
  args = parse_args(argv)
  if args.child:
    logging.set_verbosity(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="bench_amoeba_%s_" % args.child) as model_dir:
      common.run_child(lambda: measure_input_pipeline(args, model_dir)
                       if args.child == INPUT_CHILD else
                       measure_model(args.child, args, model_dir))
    return 0
  start, result = time.time(), common.header("amoeba_net_speed")
  result["settings"] = {key: value for key, value in vars(args).items() if key != "child"}
  result["matmul_peak_gflops"] = common.matmul_peaks()
  temp_dir, failed = tempfile.mkdtemp(prefix="bench_amoeba_"), False
  try:
    failed = measure_all(args, argv, result, temp_dir)
  finally:
    if not failed:  # else the children's logs stay
      shutil.rmtree(temp_dir, ignore_errors=True)
  add_comparisons(result, common.load_json(args.previous) if args.previous else None)
  common.finish(result, args.output, start)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
