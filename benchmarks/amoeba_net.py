"""AmoebaNet-D speed: training and evaluation images/sec, graph build, peak RSS, parameters,
and the Inception input pipeline on real JPEGs.

Model configurations (synthetic images, so the model is measured, not the input), each in
fp32 and with --precision_mode=allow_mix_precision (suffix `_mixed`):
  full   num_cells=6, reduction_size=256, 224 px, 1001 classes, batch --batch_size_full
  small  num_cells=3, reduction_size=32, 64 px, 1001 classes, no aux head (64 px is too
         small for it), batch --batch_size_small
Each configuration runs in its own process (so its peak RSS is its own) through the real
run loop: `run_loop.parse_flags` + `run_loop.Runner` build the RunConfig (with the
precision rewrite) and the Estimator users get; `estimator.train(max_steps=...)` (a
StopAtStepHook) and `estimator.evaluate(steps=...)` run --warmup_steps + --steps steps,
and a hook times each step. Images/sec count only the steps after the warm-up, so graph
build, session creation, checkpoint saving/restoring and the first runs (grappler,
executor creation; the Estimator's summary step runs a second executor) are excluded.
`graph_build_seconds` is the model_fn call of the train graph; `setup_seconds` is
everything from the train call to the first step. `compute_dtype` is the run loop's
params["compute_dtype"]; `observed_compute_dtype` comes from the graphs the session
actually ran (bf16/fp16 node counts after grappler, at the last warm-up step).

Input pipeline: the AmoebaNet input_fn (Inception preprocessing, 224 px) over ImageNet-
format tfrecords of the real 128-px flower JPEGs ($DATA_ROOT/flowers_kaggle_128), built
with tools/build_image_tfrecords.py into a temporary folder unless --data_dir names
tfrecords built before. Measured with input_fns.throughput.measure_throughput (no model;
warm-up batches excluded). The validation split is repeated so that --input_batches
batches can be timed.

Usage (the JSON object is the last line of stdout; logs go to stderr):
  python benchmarks/amoeba_net.py --output=amoeba_speed.json
  python tools/build_image_tfrecords.py --input_dir=$DATA_ROOT/flowers_kaggle_128 \
      --output_dir=/tmp/flowers_tfrecords   # once; then reuse it:
  python benchmarks/amoeba_net.py --data_dir=/tmp/flowers_tfrecords --output=amoeba_speed.json
  python benchmarks/amoeba_net.py --configs=small --steps=2 --warmup_steps=2 \
      --input_batches=3   # a quick check
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # pylint: disable=g-import-not-at-top

MODEL_NAME = "amoeba_net"
MIXED_SUFFIX = "_mixed"
MIXED_PRECISION_MODE = "allow_mix_precision"
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
INPUT_IMAGE_SIZE = 224
INPUT_NUM_CLASSES = 1001
FLOWERS_FOLDER = "flowers_kaggle_128"


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--configs", default=",".join(CONFIG_NAMES),
                      help="comma-separated model configurations from %s; empty for none"
                      % ", ".join(CONFIG_NAMES))
  parser.add_argument("--steps", type=int, default=10,
                      help="timed training and evaluation steps per configuration")
  parser.add_argument("--warmup_steps", type=int, default=3,
                      help="untimed steps before them (at least 2: the first training "
                      "step also writes summaries, so the second builds another executor)")
  parser.add_argument("--batch_size_full", type=int, default=8)
  parser.add_argument("--batch_size_small", type=int, default=32)
  parser.add_argument("--device", default="auto", help="the run loop's --device")
  parser.add_argument("--data_dir", default=None,
                      help="ImageNet-format tfrecords for the input-pipeline figures "
                      "(default: built from $DATA_ROOT/%s into a temporary folder)"
                      % FLOWERS_FOLDER)
  parser.add_argument("--input_batches", type=int, default=30,
                      help="timed input-pipeline batches per split; 0 skips the pipeline")
  parser.add_argument("--input_warmup_batches", type=int, default=5)
  parser.add_argument("--input_batch_size", type=int, default=32)
  parser.add_argument("--output", default=None, help="also write the JSON here")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--child_output", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
  unknown = [c for c in args.config_list if c not in CONFIG_NAMES]
  if unknown:
    parser.error("--configs: unknown %s; expected names from %s"
                 % (", ".join(unknown), ", ".join(CONFIG_NAMES)))
  for name, minimum in (("steps", 1), ("warmup_steps", 2), ("batch_size_full", 1),
                        ("batch_size_small", 1), ("input_batches", 0),
                        ("input_warmup_batches", 0), ("input_batch_size", 1)):
    if getattr(args, name) < minimum:
      parser.error("--%s=%d must be >= %d" % (name, getattr(args, name), minimum))
  if args.data_dir and not os.path.isdir(args.data_dir):
    parser.error("--data_dir=%s is not a directory" % args.data_dir)
  return args


def config_settings(name, args):
  """The model flags, batch size and precision mode of configuration `name`."""
  base = name[:-len(MIXED_SUFFIX)] if name.endswith(MIXED_SUFFIX) else name
  settings = dict(MODEL_CONFIGS[base])
  settings["batch_size"] = args.batch_size_full if base == "full" else args.batch_size_small
  settings["precision_mode"] = MIXED_PRECISION_MODE if name.endswith(MIXED_SUFFIX) else None
  return settings


class TimedModel(object):
  """The registered model, with each model_fn call timed per mode."""

  def __init__(self, model):
    self._model = model
    self.model_fn_seconds = {}

  def __getattr__(self, name):
    return getattr(self._model, name)

  def model_fn(self, features, labels, mode, params):
    start = time.time()
    spec = self._model.model_fn(features, labels, mode, params)
    self.model_fn_seconds[mode] = round(time.time() - start, 3)
    return spec


def _parse_and_check(argv):
  """run_loop.parse_flags plus the run loop's own validation; returns (model, flags)."""
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  from migration import validation  # pylint: disable=g-import-not-at-top
  model, flag_values = run_loop.parse_flags(MODEL_NAME, argv)
  if flag_values.model_dir:
    run_loop.check_common_flags(flag_values)
  model.validate_flags(flag_values)
  validation.check_npu_options(run_loop.npu_options(flag_values))
  return model, flag_values


def measure_model(name, args):
  """Trains and evaluates configuration `name` on synthetic images; returns its figures."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  from input_fns import imagenet  # pylint: disable=g-import-not-at-top
  from migration import backend as backend_lib  # pylint: disable=g-import-not-at-top

  settings = config_settings(name, args)
  batch_size = settings["batch_size"]
  total_steps = args.warmup_steps + args.steps
  model_dir = tempfile.mkdtemp(prefix="bench_amoeba_%s_" % name)
  argv = ["--mode=train", "--model_dir=" + model_dir, "--use_synthetic_data",
          "--device=" + args.device, "--train_batch_size=%d" % batch_size,
          "--eval_batch_size=%d" % batch_size, "--train_steps=%d" % total_steps,
          "--eval_steps=%d" % total_steps,
          "--save_checkpoints_steps=%d" % CHECKPOINT_ONLY_AT_ENDS]
  argv += ["--%s=%s" % (key, str(settings[key]).lower())
           for key in sorted(MODEL_CONFIGS["full"])]
  if settings["precision_mode"]:
    argv.append("--precision_mode=" + settings["precision_mode"])
  try:
    model, flag_values = _parse_and_check(argv)
    backend = backend_lib.activate(backend_lib.select_backend(flag_values.device))
    timed_model = TimedModel(model)
    runner = run_loop.Runner(timed_model, flag_values, backend)
    params = runner.estimator.params

    train_timer = common.step_timer_hook(args.warmup_steps, trace_step=args.warmup_steps - 1)
    log_hook = run_loop.ExamplesPerSecondHook(batch_size, flag_values.log_step_count_steps,
                                              model_dir)
    train_start = time.time()
    runner.estimator.train(model.input_fn(flag_values, tf.estimator.ModeKeys.TRAIN),
                           max_steps=total_steps, hooks=[log_hook, train_timer])
    train = train_timer.summary(batch_size, train_start)
    train["call_seconds"] = round(time.time() - train_start, 3)
    train["graph_build_seconds"] = timed_model.model_fn_seconds.get(
        tf.estimator.ModeKeys.TRAIN)
    peak_after_train = common.peak_rss_mb()

    eval_input_fn = imagenet.build_input_fn(
        None, False, settings["image_size"], num_label_classes=settings["num_label_classes"],
        synthetic=True, synthetic_eval_batches=total_steps)
    eval_timer = common.step_timer_hook(args.warmup_steps, trace_step=args.warmup_steps - 1)
    eval_start = time.time()
    runner.estimator.evaluate(eval_input_fn, steps=total_steps, hooks=[eval_timer])
    evaluation = eval_timer.summary(batch_size, eval_start)
    evaluation["call_seconds"] = round(time.time() - eval_start, 3)
    evaluation["graph_build_seconds"] = timed_model.model_fn_seconds.get(
        tf.estimator.ModeKeys.EVAL)
  finally:
    shutil.rmtree(model_dir, ignore_errors=True)
  return {
      "train_images_per_sec": train["images_per_sec"],
      "eval_images_per_sec": evaluation["images_per_sec"],
      "graph_build_seconds": train["graph_build_seconds"],
      "peak_rss_mb": common.peak_rss_mb(),
      "peak_rss_mb_after_train": peak_after_train,
      "trainable_parameters": train_timer.trainable_parameters,
      "trainable_parameters_eval_graph": eval_timer.trainable_parameters,
      "precision_mode": settings["precision_mode"],
      "compute_dtype": params["compute_dtype"],
      "precision_fallback_to_fp32": bool(settings["precision_mode"]) and
                                    params["compute_dtype"] == "float32",
      "observed_compute_dtype": {"train": train.get("observed_compute_dtype"),
                                 "eval": evaluation.get("observed_compute_dtype")},
      "device": backend.device,
      "settings": dict(settings, steps=args.steps, warmup_steps=args.warmup_steps,
                       data="synthetic (one random batch, repeated)",
                       model_flags=argv[1:]),
      "train": train,
      "eval": evaluation,
  }


def measure_input_pipeline(args):
  """Inception preprocessing throughput of the AmoebaNet input_fn on real tfrecords."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from input_fns import throughput  # pylint: disable=g-import-not-at-top

  model, flag_values = _parse_and_check([
      "--mode=train_and_eval", "--data_dir=" + args.data_dir,
      "--image_size=%d" % INPUT_IMAGE_SIZE, "--num_label_classes=%d" % INPUT_NUM_CLASSES])
  result = {"image_size": INPUT_IMAGE_SIZE, "batch_size": args.input_batch_size,
            "timed_batches": args.input_batches, "warmup_batches": args.input_warmup_batches,
            "preprocessing": "inception (use_fast_color_distort=%s)"
                             % flag_values.use_fast_color_distort}
  for mode, key in ((tf.estimator.ModeKeys.TRAIN, "train"),
                    (tf.estimator.ModeKeys.EVAL, "eval")):
    input_fn = model.input_fn(flag_values, mode)
    if mode == tf.estimator.ModeKeys.EVAL:
      input_fn = _repeated(input_fn)
    rate = throughput.measure_throughput(input_fn, args.input_batch_size,
                                         args.input_batches, args.input_warmup_batches)
    result[key + "_images_per_sec"] = round(rate, 2)
    result[key + "_shards"] = len(input_fn.files)
  result["peak_rss_mb"] = common.peak_rss_mb()
  return result


def _repeated(input_fn):
  """The evaluation input_fn read over and over (it otherwise ends after one pass)."""

  def repeated_input_fn(params):
    return input_fn(params).repeat()

  repeated_input_fn.files = input_fn.files
  return repeated_input_fn


def run_child(args):
  """Child process: measures one configuration and writes its JSON to --child_output."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  try:
    if args.child == INPUT_CHILD:
      result = measure_input_pipeline(args)
    else:
      result = measure_model(args.child, args)
  except Exception as error:  # pylint: disable=broad-except
    logging.exception("%s failed", args.child)
    result = {"error": "%s: %s" % (type(error).__name__, error)}
  with open(args.child_output, "w") as f:
    json.dump(result, f)


def spawn(child, argv, temp_dir):
  """Runs this script for `child` in a new process; returns its figures (or an error)."""
  output = os.path.join(temp_dir, child + ".json")
  command = [sys.executable, os.path.abspath(__file__)] + list(argv) + [
      "--child=" + child, "--child_output=" + output]
  start = time.time()
  sys.stderr.write("== %s: %s\n" % (child, " ".join(command)))
  sys.stderr.flush()
  code = subprocess.call(command, stdout=sys.stderr)
  if os.path.exists(output):
    with open(output) as f:
      result = json.load(f)
  else:
    result = {"error": "child process exited with code %d%s" % (
        code, " (killed; out of memory?)" if code == -9 else "")}
  result["process_seconds"] = round(time.time() - start, 1)
  return result


def build_flowers_tfrecords(output_dir):
  """tools/build_image_tfrecords.py on the flower photos; returns a description."""
  source = os.path.join(common.data_root(), FLOWERS_FOLDER)
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


def main(argv):
  args = parse_args(argv)
  if args.child:
    run_child(args)
    return 0
  start = time.time()
  result = {"benchmark": "amoeba_net_speed", "started": common.timestamp()}
  result.update(common.environment_info())
  result.update(common.cpu_info())
  result["settings"] = {key: value for key, value in vars(args).items()
                        if key not in ("child", "child_output", "config_list")}
  result["settings"]["configs"] = args.config_list
  temp_dir = tempfile.mkdtemp(prefix="bench_amoeba_")
  failed = False
  try:
    if args.input_batches:
      data_dir = args.data_dir
      if data_dir:
        result["input_data"] = {"data_dir": os.path.abspath(data_dir), "built": False}
      else:
        data_dir = os.path.join(temp_dir, "flowers_tfrecords")
        result["input_data"] = dict(build_flowers_tfrecords(data_dir), built=True)
      pipeline = spawn(INPUT_CHILD, argv + ["--data_dir=" + data_dir], temp_dir)
      result["input_pipeline"] = pipeline
      failed = "error" in pipeline
    result["configs"] = {}
    if failed:
      sys.stderr.write("error: input pipeline: %s; model configurations skipped\n"
                       % result["input_pipeline"]["error"])
    for name in ([] if failed else args.config_list):
      figures = spawn(name, argv, temp_dir)
      result["configs"][name] = figures
      failed = failed or "error" in figures
  finally:
    shutil.rmtree(temp_dir, ignore_errors=True)
  result.update(common.load_average("load_average_at_end"))
  result["total_seconds"] = round(time.time() - start, 1)
  common.emit_json(result, args.output)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
