"""ViT and BiT benchmark: training/eval images/sec at 224 px, and from-scratch accuracy.

Part 1, throughput (`--parts=throughput`): ViT-B/16 and BiT-R50x1 at 224 px, a small
batch, a few training steps then a few evaluation steps on the checkpoint they wrote, each
with and without `--precision_mode=allow_mix_precision`. Images/sec is timed from the end
of the warm-up steps to the end of the last step, so graph build, session creation,
checkpointing and the first (optimising) steps are excluded. The dtype that actually ran
is read from the optimised partition graphs of the first step (the dtype of the MatMul /
Conv2D ops after TensorFlow's rewrites), next to the dtype the runtime announced.

Part 2, accuracy (`--parts=accuracy`): a small ViT (a custom tiny config, patch size
adapted to the low resolution) and BiT-R50x1, trained FROM SCRATCH on the real flower
photos for a fixed step budget at low resolution, evaluated on the 85/15 split
(`train[:85%]` / `train[85%:]` of the TFDS tf_flowers layout, built once into
--cache_dir from $DATA_ROOT/flowers_kaggle_128). Learning-rate schedules keep the recipes'
shapes scaled to the budget: ViT linear warm-up then cosine, BiT warm-up then lr / 10 at
40/60/80 % (BiT-HyperRule's 100 warm-up and 200/300/400 of 500 steps).

Every measurement runs in its own child process (this script with --job) through the
project's run loop (`run_loop.parse_flags`, `Runner`, `run`), so each reports its own
peak RSS. The result is one JSON object on stdout (last line), also written to --output;
`summary` condenses it.

Full benchmark (defaults; about 15 min on TF 1.15 and 9-10 min on TF 2.15 on 2 busy cores,
estimated from partial runs: TF 1.15's CPU build has no oneDNN, so its BiT steps are
~4x slower, and no bf16, so both precision rows run fp32 there):
  .venv-tf1/bin/python benchmarks/vit_bit.py --output=/tmp/vit_bit_tf1.json
  .venv-tf2/bin/python benchmarks/vit_bit.py --output=/tmp/vit_bit_tf2.json
Tiny check (~3 min):
  ... --vit_model=Ti/16 --throughput_image_size=32 --throughput_batch_size=2
      --throughput_warmup_steps=1 --throughput_steps=1 --accuracy_image_size=32
      --vit_train_steps=5 --vit_batch_size=8 --bit_train_steps=2 --bit_batch_size=4
"""
from __future__ import print_function

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from benchmarks import common  # pylint: disable=g-import-not-at-top

FLOWERS_FOLDER = "flowers_kaggle_128"
DEFAULT_PRECISION = "none"  # --precision_mode left unset: fp32
HEAVY_OP_MARKERS = ("MatMul", "Conv2D")
LOG_TAIL_CHARS = 3000


def data_root():
  return os.environ.get("DATA_ROOT") or os.path.join(os.path.dirname(REPO), "shared", "data")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--output", help="Also write the JSON here.")
  p.add_argument("--parts", default="throughput,accuracy",
                 help="Comma list of: throughput, accuracy.")
  p.add_argument("--models", default="vit,bit", help="Comma list of: vit, bit.")
  p.add_argument("--flowers_dir", default=None,
                 help="Class folders of flower JPEGs (default $DATA_ROOT/%s)." % FLOWERS_FOLDER)
  p.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "vit_bit_bench"),
                 help="The TFDS tf_flowers layout is built here once and reused.")
  p.add_argument("--work_dir", default=None,
                 help="Model dirs and job logs (default: a temp dir, removed afterwards).")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--job_timeout", type=int, default=3600, help="Seconds per child job.")
  # Throughput.
  p.add_argument("--vit_model", default="B/16", help="ViT variant for throughput.")
  p.add_argument("--bit_model", default="R50x1", help="BiT variant for throughput.")
  p.add_argument("--precision_modes", default="%s,allow_mix_precision" % DEFAULT_PRECISION,
                 help="Comma list; '%s' leaves --precision_mode unset." % DEFAULT_PRECISION)
  p.add_argument("--throughput_image_size", type=int, default=224)
  p.add_argument("--throughput_batch_size", type=int, default=8,
                 help="Training and evaluation batch.")
  p.add_argument("--throughput_warmup_steps", type=int, default=2,
                 help="Untimed steps (>= 1) before the timed ones, in training and eval. "
                      "Use >= 2: the first training step also fetches summaries and logs, "
                      "so TensorFlow optimises the graph again on the second.")
  p.add_argument("--throughput_steps", type=int, default=3, help="Timed steps.")
  p.add_argument("--throughput_data", choices=("flowers", "synthetic"), default="flowers",
                 help="flowers: the models' own input_fns on the real photos (decode, "
                      "augment, resize); synthetic: one fixed random batch, repeated.")
  # Accuracy (from scratch).
  p.add_argument("--accuracy_image_size", type=int, default=64)
  p.add_argument("--accuracy_precision_mode", default=DEFAULT_PRECISION)
  p.add_argument("--accuracy_bit_model", default="R50x1", help="BiT variant for accuracy.")
  p.add_argument("--eval_batch_size", type=int, default=72,
                 help="Accuracy evaluation batch (648 eval photos = 9 x 72).")
  p.add_argument("--vit_train_steps", type=int, default=400)
  p.add_argument("--vit_batch_size", type=int, default=64)
  p.add_argument("--vit_learning_rate", type=float, default=0.1)
  p.add_argument("--vit_hidden_size", type=int, default=128)
  p.add_argument("--vit_mlp_dim", type=int, default=256)
  p.add_argument("--vit_num_heads", type=int, default=4)
  p.add_argument("--vit_num_layers", type=int, default=6)
  p.add_argument("--vit_patch_size", type=int, default=8)
  p.add_argument("--bit_train_steps", type=int, default=150)
  p.add_argument("--bit_batch_size", type=int, default=32)
  p.add_argument("--bit_learning_rate", type=float, default=0.03)
  p.add_argument("--bit_lr_boundary_fractions", default="0.4,0.6,0.8",
                 help="lr / 10 after these fractions of the BiT step budget (HyperRule: "
                      "200/300/400 of 500).")
  p.add_argument("--warmup_fraction", type=float, default=0.2,
                 help="Warm-up steps as a fraction of the step budget (both models).")
  p.add_argument("--job", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.job:
    return args
  args.parts = _checked_list(args.parts, ("throughput", "accuracy"), "--parts")
  args.models = _checked_list(args.models, ("vit", "bit"), "--models")
  args.precision_modes = [m.strip() for m in args.precision_modes.split(",") if m.strip()]
  for name in ("throughput_image_size", "throughput_batch_size", "throughput_warmup_steps",
               "throughput_steps", "accuracy_image_size", "eval_batch_size",
               "vit_train_steps", "vit_batch_size", "vit_hidden_size", "vit_mlp_dim",
               "vit_num_heads", "vit_num_layers", "vit_patch_size", "bit_train_steps",
               "bit_batch_size", "job_timeout"):
    if getattr(args, name) < 1:
      p.error("--%s=%d must be >= 1" % (name, getattr(args, name)))
  if args.vit_hidden_size % args.vit_num_heads:
    p.error("--vit_hidden_size=%d must be a multiple of --vit_num_heads=%d"
            % (args.vit_hidden_size, args.vit_num_heads))
  if args.vit_patch_size > args.accuracy_image_size:
    p.error("--vit_patch_size=%d exceeds --accuracy_image_size=%d"
            % (args.vit_patch_size, args.accuracy_image_size))
  if "vit" in args.models and args.accuracy_image_size < 16:
    p.error("--accuracy_image_size=%d: the ViT job validates against Ti/16, so >= 16"
            % args.accuracy_image_size)
  try:
    args.bit_lr_boundary_fractions = [float(f) for f in
                                      args.bit_lr_boundary_fractions.split(",") if f.strip()]
  except ValueError:
    p.error("--bit_lr_boundary_fractions=%s: expected comma-separated numbers"
            % args.bit_lr_boundary_fractions)
  if not all(0.0 < f < 1.0 for f in args.bit_lr_boundary_fractions):
    p.error("--bit_lr_boundary_fractions: each must lie in (0, 1)")
  if not 0.0 <= args.warmup_fraction < 1.0:
    p.error("--warmup_fraction=%r must lie in [0, 1)" % args.warmup_fraction)
  args.flowers_dir = args.flowers_dir or os.path.join(data_root(), FLOWERS_FOLDER)
  if not os.path.isdir(args.flowers_dir):
    p.error("flower photos not found at %s (set DATA_ROOT or --flowers_dir)"
            % args.flowers_dir)
  return args


def _checked_list(text, allowed, flag):
  values = [v.strip() for v in text.split(",") if v.strip()]
  bad = [v for v in values if v not in allowed]
  if bad or not values:
    raise SystemExit("error: %s=%s: expected a comma list of %s" % (flag, text,
                                                                     ", ".join(allowed)))
  return values


# ---------------------------------------------------------------------------------------
# Data: the TFDS tf_flowers layout, built once.

def count_photos(image_dir):
  from input_fns import tf_flowers  # pylint: disable=g-import-not-at-top
  return sum(1 for folder in os.listdir(image_dir)
             if os.path.isdir(os.path.join(image_dir, folder))
             for name in os.listdir(os.path.join(image_dir, folder))
             if name.lower().endswith(tf_flowers.IMAGE_EXTENSIONS))


def prepare_flowers(image_dir, cache_dir):
  """TFDS data dir holding tf_flowers/3.0.1 of `image_dir` (built unless cached)."""
  from input_fns import image_sources  # pylint: disable=g-import-not-at-top
  from input_fns import tf_flowers  # pylint: disable=g-import-not-at-top
  expected = count_photos(image_dir)
  data_dir = os.path.join(cache_dir, "tfds")
  built_seconds = None
  try:
    cached = tf_flowers.dataset(data_dir).num_examples("train") == expected
  except ValueError:
    cached = False
  if not cached:
    staging = tempfile.mkdtemp(prefix="staging-", dir=_makedirs(cache_dir))
    start = time.time()
    tf_flowers.build_from_image_folder(image_dir, staging)
    built_seconds = round(time.time() - start, 1)
    shutil.rmtree(os.path.join(data_dir, tf_flowers.NAME), ignore_errors=True)
    _makedirs(data_dir)
    os.rename(os.path.join(staging, tf_flowers.NAME), os.path.join(data_dir, tf_flowers.NAME))
    shutil.rmtree(staging, ignore_errors=True)
  source = image_sources.TfdsSource(tf_flowers.dataset(data_dir))
  return data_dir, {
      "photos": image_dir,
      "tfds_data_dir": data_dir,
      "layout": "TFDS %s %s (built by input_fns/tf_flowers.py)" % (tf_flowers.NAME,
                                                                    tf_flowers.VERSION),
      "examples": source.num_examples("train"),
      "train_split": tf_flowers.TRAIN_SPLIT,
      "train_examples": source.num_examples(tf_flowers.TRAIN_SPLIT),
      "eval_split": tf_flowers.EVAL_SPLIT,
      "eval_examples": source.num_examples(tf_flowers.EVAL_SPLIT),
      "classes": source.class_names,
      "build_seconds": built_seconds,
      "from_cache": cached,
  }


def _makedirs(path):
  if not os.path.isdir(path):
    os.makedirs(path)
  return path


# ---------------------------------------------------------------------------------------
# Child jobs (one process each).

def heavy_op_dtypes(partition_graphs):
  """{dtype: count} of the MatMul / Conv2D ops (incl. oneDNN and fused forms) that ran."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  counts = {}
  for graph in partition_graphs:
    for node in graph.node:
      if any(marker in node.op for marker in HEAVY_OP_MARKERS) and "T" in node.attr:
        name = tf.as_dtype(node.attr["T"].type).name
        counts[name] = counts.get(name, 0) + 1
  return counts


def dominant_dtype(counts):
  return max(sorted(counts), key=lambda name: counts[name]) if counts else None


def make_step_timer():
  """A SessionRunHook recording the wall time after every step and, on the first step,
  the dtypes of the heavy ops in the optimised partition graphs."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top

  class StepTimer(tf.train.SessionRunHook):

    def __init__(self):
      self.step_ends = []
      self.dtypes = None

    def before_run(self, run_context):
      # The same fetch every step, so the probed step runs the executor later steps use.
      options = None if self.step_ends else tf.RunOptions(output_partition_graphs=True)
      return tf.train.SessionRunArgs(tf.train.get_global_step(), options=options)

    def after_run(self, run_context, run_values):
      if self.dtypes is None and run_values.run_metadata is not None:
        self.dtypes = heavy_op_dtypes(run_values.run_metadata.partition_graphs)
      self.step_ends.append(time.time())

  return StepTimer()


def timed_rate(timer, warmup_steps, batch_size):
  ends = timer.step_ends
  timed = len(ends) - warmup_steps
  if timed < 1:
    raise RuntimeError("only %d steps ran; %d warm-up steps requested" % (len(ends),
                                                                         warmup_steps))
  seconds = ends[-1] - ends[warmup_steps - 1]
  steps = [round(b - a, 3) for a, b in zip(ends[warmup_steps - 1:], ends[warmup_steps:])]
  return {"images_per_sec": round(batch_size * timed / seconds, 3), "timed_steps": timed,
          "timed_seconds": round(seconds, 3), "step_seconds": steps,
          "warmup_steps": warmup_steps, "heavy_op_dtypes": timer.dtypes,
          "ran_dtype": dominant_dtype(timer.dtypes)}


def synthetic_input_fn(image_size, num_classes, seed):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top

  def input_fn(params):
    batch = params["batch_size"]
    rng = np.random.RandomState(seed)
    images = rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32)
    labels = rng.randint(0, num_classes, batch).astype(np.int32)
    return tf.data.Dataset.from_tensors(({"image": images}, labels)).repeat()

  return input_fn


def run_loop_flags(job):
  """Run-loop argv shared by both job kinds."""
  argv = ["--data_dir=%s" % job["data_dir"], "--dataset=tf_flowers",
          "--model_dir=%s" % job["model_dir"], "--tf_random_seed=%d" % job["seed"],
          "--device=auto",
          "--save_summary_steps=1000000", "--log_step_count_steps=10"]
  if job["precision_mode"] != DEFAULT_PRECISION:
    argv.append("--precision_mode=%s" % job["precision_mode"])
  size = job["image_size"]
  if job["model"] == "vit":
    argv += ["--vit_model=%s" % job["variant"], "--image_size=%d" % size]
  else:
    argv += ["--bit_model=%s" % job["variant"], "--image_size=%d" % size,
             "--resize_size=%d" % (size * 8 // 7)]
  return argv


def prepare_runner(job, argv, model_override=None):
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  from migration import backend as backend_lib  # pylint: disable=g-import-not-at-top
  from migration import validation  # pylint: disable=g-import-not-at-top
  model, flag_values = run_loop.parse_flags(job["model"], run_loop_flags(job) + argv)
  model = model_override(model) if model_override else model
  run_loop.check_common_flags(flag_values)
  model.validate_flags(flag_values)
  validation.check_npu_options(run_loop.npu_options(flag_values))
  backend = backend_lib.activate(backend_lib.select_backend(flag_values.device))
  return model, flag_values, backend


def throughput_job(job):
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  batch, warmup = job["batch_size"], job["warmup_steps"]
  steps = warmup + job["timed_steps"]
  argv = ["--mode=train", "--train_batch_size=%d" % batch, "--eval_batch_size=%d" % batch,
          "--train_steps=%d" % steps, "--warmup_steps=0", "--save_checkpoints_steps=%d" % steps]
  model, flag_values, backend = prepare_runner(job, argv)
  runner = run_loop.Runner(model, flag_values, backend)
  params = runner.estimator.params
  result = {"model": job["model"], "variant": job["variant"],
            "precision_mode": job["precision_mode"], "device": backend.device,
            "compute_dtype_announced": params["compute_dtype"],
            "loss_scale": params["loss_scale"], "image_size": job["image_size"],
            "batch_size": batch, "data": job["data"]}
  if job["data"] == "synthetic":
    train_input = eval_input = synthetic_input_fn(job["image_size"], params["num_classes"],
                                                  job["seed"])
  else:
    train_input = model.input_fn(flag_values, tf.estimator.ModeKeys.TRAIN)
    eval_input = model.input_fn(flag_values, tf.estimator.ModeKeys.EVAL)
  timer = make_step_timer()
  with common.Stopwatch() as watch:
    runner.estimator.train(train_input, max_steps=steps, hooks=[timer])
  result["train"] = dict(timed_rate(timer, warmup, batch), wall_seconds=round(watch.seconds, 1))
  timer = make_step_timer()
  with common.Stopwatch() as watch:
    runner.estimator.evaluate(eval_input, steps=steps, hooks=[timer])
  result["eval"] = dict(timed_rate(timer, warmup, batch), wall_seconds=round(watch.seconds, 1))
  return result


def custom_vit(config):
  def override(model):
    class CustomViT(type(model)):

      def params(self, flag_values):
        return dict(super(CustomViT, self).params(flag_values), network_config=config)

    return CustomViT()
  return override


def trainable_parameters(model_dir):
  """Parameters in the checkpoint, without optimizer slots and the global step."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(shape) for name, shape in tf.train.list_variables(model_dir)
                 if not name.endswith("/Momentum") and name != "global_step"))


def accuracy_job(job):
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  steps = job["train_steps"]
  warmup = int(job["warmup_fraction"] * steps)
  argv = ["--mode=train_and_eval", "--train_batch_size=%d" % job["batch_size"],
          "--eval_batch_size=%d" % job["eval_batch_size"], "--train_steps=%d" % steps,
          "--learning_rate=%r" % job["learning_rate"], "--warmup_steps=%d" % warmup,
          "--save_checkpoints_steps=%d" % steps]
  override, config = None, None
  if job["model"] == "vit":
    from estimators.vit import network  # pylint: disable=g-import-not-at-top
    config = network.ViTConfig(
        hidden_size=job["hidden_size"], mlp_dim=job["mlp_dim"], num_heads=job["num_heads"],
        num_layers=job["num_layers"], patch_size=job["patch_size"], dropout_rate=0.0,
        attention_dropout_rate=0.0, representation_size=None)
    override = custom_vit(config)
  else:
    boundaries = sorted(set(max(1, int(f * steps)) for f in job["boundary_fractions"]))
    argv.append("--lr_boundaries=%s" % ",".join(str(b) for b in boundaries))
  model, flag_values, backend = prepare_runner(job, argv, override)
  with common.Stopwatch() as watch:
    metrics = run_loop.run(model, flag_values)
  params = model.params(flag_values)
  result = {"model": job["model"], "from_scratch": True, "image_size": job["image_size"],
            "precision_mode": job["precision_mode"], "device": backend.device,
            "batch_size": job["batch_size"], "learning_rate": job["learning_rate"],
            "warmup_steps": warmup, "steps": int(metrics["global_step"]),
            "accuracy": round(float(metrics["accuracy"]), 4),
            "eval_loss": round(float(metrics["loss"]), 4),
            "train_seconds": round(float(metrics["train_seconds"]), 1),
            "wall_seconds": round(watch.seconds, 1),
            "parameters": trainable_parameters(job["model_dir"])}
  if config is not None:
    result["network"] = dict(config._asdict(), tokens=(job["image_size"] //
                                                       config.patch_size) ** 2 + 1)
    result["schedule"] = "linear warm-up, cosine decay; SGD momentum %.1f, clip %.1f" % (
        params["momentum"], params["grad_clip_norm"])
    result["variant"] = "custom ViT (patch %d)" % config.patch_size
  else:
    result["variant"] = job["variant"]
    result["schedule"] = "linear warm-up, lr / 10 after steps %s; SGD momentum %.1f" % (
        params["lr_boundaries"], params["momentum"])
    result["resize_size"] = params["resize_size"]
  return result


def run_job(job_text):
  """Child process: runs one job, prints its JSON (with peak RSS) as the last line."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  tf.logging.set_verbosity(tf.logging.INFO)
  tf.get_logger().propagate = False  # TF's own handler prints it; absl would print it again
  job = json.loads(job_text)
  with common.Stopwatch() as watch:
    result = (throughput_job if job["kind"] == "throughput" else accuracy_job)(job)
  result.update(peak_rss_mb=common.peak_rss_mb(), job_seconds=round(watch.seconds, 1))
  common.emit_json(result)


def spawn(job, log_path, timeout):
  """Runs `job` in a child process; returns its result dict (or one with `error`)."""
  start = time.time()
  with open(log_path, "w") as log:
    try:
      completed = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--job", json.dumps(job)],
          stdout=subprocess.PIPE, stderr=log, universal_newlines=True, timeout=timeout,
          cwd=REPO)
      output, code = completed.stdout, completed.returncode
    except subprocess.TimeoutExpired as e:
      output, code = e.stdout or "", "timeout after %ds" % timeout
  lines = [line for line in output.splitlines() if line.strip()]
  if code == 0 and lines:
    try:
      return json.loads(lines[-1])
    except ValueError:
      pass
  with open(log_path) as log:
    tail = log.read()[-LOG_TAIL_CHARS:]
  return {"model": job["model"], "precision_mode": job["precision_mode"],
          "error": "exit %s" % code, "log": log_path, "log_tail": tail,
          "job_seconds": round(time.time() - start, 1)}


# ---------------------------------------------------------------------------------------
# Parent.

def summarize(result):
  """One line per measurement: {name: figures} (errors named)."""
  lines = {}
  for row in result.get("throughput", []):
    name = "throughput %s %s %s" % (row["model"], row.get("variant", ""), row["precision_mode"])
    if "error" in row:
      lines[name] = "error: see log_tail"
      continue
    lines[name] = "train %.2f img/s, eval %.2f img/s, ran %s/%s (announced %s), batch %d, %d px" % (
        row["train"]["images_per_sec"], row["eval"]["images_per_sec"],
        row["train"]["ran_dtype"], row["eval"]["ran_dtype"], row["compute_dtype_announced"],
        row["batch_size"], row["image_size"])
  for row in result.get("accuracy", []):
    name = "accuracy %s from scratch" % row["model"]
    if "error" in row:
      lines[name] = "error: see log_tail"
      continue
    lines[name] = "top-1 %.4f after %d steps (batch %d, %d px), %.0f s train, %.0f s wall" % (
        row["accuracy"], row["steps"], row["batch_size"], row["image_size"],
        row["train_seconds"], row["wall_seconds"])
  return lines


def main(argv):
  args = parse_args(argv)
  if args.job:
    run_job(args.job)
    return 0
  start = time.time()
  result = {"benchmark": "vit_bit", "environment": common.environment_info(),
            "settings": {k: v for k, v in sorted(vars(args).items()) if k != "job"},
            "command": [sys.executable] + sys.argv}
  data_dir, result["data"] = prepare_flowers(args.flowers_dir, args.cache_dir)
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="vit_bit_bench-")
  _makedirs(work_dir)
  variants = {"vit": args.vit_model, "bit": args.bit_model}
  # The custom ViT replaces the named variant's network; the name only passes validation.
  accuracy_variants = {"vit": "Ti/16", "bit": args.accuracy_bit_model}
  base = {"data_dir": data_dir, "seed": args.seed}
  failures = 0
  try:
    if "throughput" in args.parts:
      result["throughput"] = []
      for model in args.models:
        for mode in args.precision_modes:
          name = "throughput-%s-%s" % (model, mode)
          job = dict(base, kind="throughput", model=model, variant=variants[model],
                     precision_mode=mode, image_size=args.throughput_image_size,
                     batch_size=args.throughput_batch_size,
                     warmup_steps=args.throughput_warmup_steps,
                     timed_steps=args.throughput_steps, data=args.throughput_data,
                     model_dir=os.path.join(work_dir, name))
          outcome = spawn(job, os.path.join(work_dir, name + ".log"), args.job_timeout)
          failures += "error" in outcome
          result["throughput"].append(outcome)
          shutil.rmtree(job["model_dir"], ignore_errors=True)  # ViT-B checkpoints: ~1 GB
    if "accuracy" in args.parts:
      result["accuracy"] = []
      for model in args.models:
        name = "accuracy-%s" % model
        job = dict(base, kind="accuracy", model=model, variant=accuracy_variants[model],
                   precision_mode=args.accuracy_precision_mode,
                   image_size=args.accuracy_image_size, eval_batch_size=args.eval_batch_size,
                   warmup_fraction=args.warmup_fraction,
                   model_dir=os.path.join(work_dir, name))
        if model == "vit":
          job.update(train_steps=args.vit_train_steps, batch_size=args.vit_batch_size,
                     learning_rate=args.vit_learning_rate, hidden_size=args.vit_hidden_size,
                     mlp_dim=args.vit_mlp_dim, num_heads=args.vit_num_heads,
                     num_layers=args.vit_num_layers, patch_size=args.vit_patch_size)
        else:
          job.update(train_steps=args.bit_train_steps, batch_size=args.bit_batch_size,
                     learning_rate=args.bit_learning_rate,
                     boundary_fractions=args.bit_lr_boundary_fractions)
        outcome = spawn(job, os.path.join(work_dir, name + ".log"), args.job_timeout)
        failures += "error" in outcome
        result["accuracy"].append(outcome)
        shutil.rmtree(job["model_dir"], ignore_errors=True)
  finally:
    if not args.work_dir and not failures:
      shutil.rmtree(work_dir, ignore_errors=True)
  result["summary"] = summarize(result)
  result["failed_jobs"] = failures
  result["load_average_at_end"] = list(os.getloadavg())
  result["total_seconds"] = round(time.time() - start, 1)
  common.emit_json(result, args.output)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
