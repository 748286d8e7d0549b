"""ViT and BiT benchmark: training/eval images/sec at 224 px, and from-scratch accuracy.

Throughput: ViT-B/16 and BiT-R50x1, a small batch, a few training then evaluation steps,
with and without --precision_mode=allow_mix_precision; common.StepTimer gives images/sec
after the warm-up and the dtype that ran (`heavy_op_dtypes`, `ran_dtype`). Accuracy: a small
custom ViT and BiT-R50x1 trained from scratch on the flower photos at low resolution (TFDS
tf_flowers layout built once into --cache_dir), the recipes' schedules scaled to the budget.
Each measurement is a child process (common.spawn) on the Runner `vit.py` / `bit.py` build.
JSON on stdout (last line; also --output); `summary` condenses it. Tiny (~3 min):
  ... --vit_model=Ti/16 --throughput_image_size=32 --throughput_batch_size=2
      --throughput_warmup_steps=1 --throughput_steps=1 --accuracy_image_size=32
      --vit_train_steps=5 --vit_batch_size=8 --bit_train_steps=2 --bit_batch_size=4
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top
from estimators import registry  # pylint: disable=g-import-not-at-top
from input_fns import data_root  # pylint: disable=g-import-not-at-top

FLOWERS_FOLDER = "flowers_kaggle_128"
DEFAULT_PRECISION = "none"  # --precision_mode left unset: fp32
CHOICES = {"parts": ("throughput", "accuracy"), "models": ("vit", "bit")}  # comma lists
P = registry.POSITIVE
OPTIONS = (  # (name, default, help[, valid]): numbers take the default's type
    ("output", None, "Also write the JSON here."), ("seed", 0, None),
    ("parts", "throughput,accuracy", "Comma list of: throughput, accuracy."),
    ("models", "vit,bit", "Comma list of: vit, bit."),
    ("flowers_dir", None, "Class folders of flower JPEGs (default <data root>/%s)."
     % FLOWERS_FOLDER),
    ("cache_dir", os.path.join(tempfile.gettempdir(), "vit_bit_bench"),
     "The TFDS tf_flowers layout is built here once and reused."),
    ("work_dir", None, "Model dirs and job logs (default: a temp dir, removed afterwards)."),
    ("job_timeout", 3600, "Seconds per child job.", P),
    # Throughput.
    ("vit_model", "B/16", "ViT variant for throughput."),
    ("bit_model", "R50x1", "BiT variant for throughput."),
    ("precision_modes", DEFAULT_PRECISION + ",allow_mix_precision",
     "Comma list; '%s' leaves --precision_mode unset." % DEFAULT_PRECISION),
    ("throughput_image_size", 224, None, P),
    ("throughput_batch_size", 8, "Train and eval batch.", P),
    ("throughput_warmup_steps", 2, "Untimed steps before the timed ones (train and eval); "
     "use >= 2: the first also fetches summaries, so the second is optimised again.", P),
    ("throughput_steps", 3, "Timed steps.", P),
    # Accuracy (from scratch).
    ("accuracy_image_size", 64, None, P), ("accuracy_precision_mode", DEFAULT_PRECISION, None),
    ("accuracy_bit_model", "R50x1", "BiT variant for accuracy."),
    ("eval_batch_size", 72, "Accuracy evaluation batch (648 eval photos = 9 x 72).", P),
    ("vit_train_steps", 400, None, P), ("vit_batch_size", 64, None, P),
    ("vit_learning_rate", 0.1, None), ("vit_hidden_size", 128, None, P),
    ("vit_mlp_dim", 256, None, P), ("vit_num_heads", 4, None, P),
    ("vit_num_layers", 6, None, P), ("vit_patch_size", 8, None, P),
    ("bit_train_steps", 150, None, P), ("bit_batch_size", 32, None, P),
    ("bit_learning_rate", 0.03, None), ("bit_lr_boundary_fractions", "0.4,0.6,0.8",
                                        "lr / 10 after these fractions of the BiT step budget "
                                        "(HyperRule: 200/300/400 of 500)."),
    ("warmup_fraction", 0.2, "Warm-up steps as a fraction of the step budget (both models).",
     registry.within(0, 1, "[)")),
)


def parse_args(argv):
  """The options; the parent refuses up front what a job would find only after the ones
  before it (this script's own numbers; the jobs' sizes and steps)."""
  p = common.options_parser(__doc__.split("\n")[0], OPTIONS)
  p.add_argument("--throughput_data", choices=("flowers", "synthetic"), default="flowers",
                 help="flowers: the models' own input_fns on the real photos (decode, "
                      "augment, resize); synthetic: one fixed random batch, repeated.")
  p.add_argument("--job", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.job:
    return args
  common.check_options(p, args, OPTIONS)
  for name in ("parts", "models"):
    setattr(args, name, common.name_list(p, name, getattr(args, name), CHOICES[name]))
  args.precision_modes = [v.strip() for v in args.precision_modes.split(",") if v.strip()]
  try:
    args.bit_lr_boundary_fractions = [
        float(f) for f in args.bit_lr_boundary_fractions.split(",") if f.strip()]
  except ValueError:
    p.error("--bit_lr_boundary_fractions: expected comma-separated numbers")
  if not all(0.0 < f < 1.0 for f in args.bit_lr_boundary_fractions):
    p.error("--bit_lr_boundary_fractions: each must lie in (0, 1)")
  if args.vit_hidden_size % args.vit_num_heads:
    p.error("--vit_hidden_size=%d must be a multiple of --vit_num_heads=%d"
            % (args.vit_hidden_size, args.vit_num_heads))
  if args.vit_patch_size > args.accuracy_image_size:
    p.error("--vit_patch_size=%d exceeds --accuracy_image_size=%d"
            % (args.vit_patch_size, args.accuracy_image_size))
  args.flowers_dir = args.flowers_dir or os.path.join(data_root(), FLOWERS_FOLDER)
  if not os.path.isdir(args.flowers_dir):
    p.error("flower photos not found at %s (set DATA_ROOT or --flowers_dir)"
            % args.flowers_dir)
  return args


def prepare_flowers(image_dir, cache_dir):
  """TFDS data dir holding tf_flowers/3.0.1 of `image_dir` (built unless cached)."""
  from input_fns import image_sources  # pylint: disable=g-import-not-at-top
  from input_fns import tf_flowers  # pylint: disable=g-import-not-at-top
  photos = sum(1 for folder in os.listdir(image_dir)
               if os.path.isdir(os.path.join(image_dir, folder))
               for name in os.listdir(os.path.join(image_dir, folder))
               if name.lower().endswith(tf_flowers.IMAGE_EXTENSIONS))
  data_dir, built_seconds = os.path.join(cache_dir, "tfds"), None
  try:  # the layout's info file, written after the shards, must count every photo
    cached = tf_flowers.dataset(data_dir).num_examples("train") == photos
  except ValueError:
    cached = False
  if not cached:
    shutil.rmtree(os.path.join(data_dir, tf_flowers.NAME), ignore_errors=True)
    start = time.time()
    tf_flowers.build_from_image_folder(image_dir, data_dir)
    built_seconds = round(time.time() - start, 1)
  source, train, evaluation = (image_sources.TfdsSource(tf_flowers.dataset(data_dir)),
                               tf_flowers.TRAIN_SPLIT, tf_flowers.EVAL_SPLIT)
  return data_dir, {
      "photos": image_dir, "tfds_data_dir": data_dir, "layout": "TFDS %s %s (built by "
      "input_fns/tf_flowers.py)" % (tf_flowers.NAME, tf_flowers.VERSION),
      "examples": source.num_examples("train"), "train_split": train, "eval_split": evaluation,
      "train_examples": source.num_examples(train), "classes": source.class_names,
      "eval_examples": source.num_examples(evaluation), "build_seconds": built_seconds,
      "from_cache": cached}


# Child jobs (one process each).

def prepare(job, argv, model_name=None):
  """The job's Runner: `run_loop.prepare` on the shared flags and `argv`."""
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  size = job["image_size"]
  argv = ["--data_dir=%s" % job["data_dir"], "--dataset=tf_flowers",
          "--model_dir=%s" % job["model_dir"], "--tf_random_seed=%d" % job["seed"],
          "--device=auto", "--save_summary_steps=1000000", "--log_step_count_steps=10",
          "--%s_model=%s" % (job["model"], job["variant"]), "--image_size=%d" % size] + argv
  if job["model"] == "bit":
    argv.append("--resize_size=%d" % (size * 8 // 7))
  if job["precision_mode"] != DEFAULT_PRECISION:
    argv.append("--precision_mode=%s" % job["precision_mode"])
  return run_loop.prepare(model_name or job["model"], argv)


def timed(call, batch_size, warmup_steps):
  """call(hooks) under the step timer (dtype probed on the first step): images/sec, the
  timed steps' seconds and the dtype that ran."""
  timer, start = common.StepTimer(warmup_steps, probe_step=0), time.time()
  call([timer])
  timing = timer.summary(batch_size, start)
  timed_steps, rate = timing["timed_steps"], timing["images_per_sec"]
  if not timed_steps:
    raise RuntimeError("only %d steps ran; %d warm-up steps requested"
                       % (timing["steps_run"], warmup_steps))
  return {"images_per_sec": rate, "timed_steps": timed_steps, "warmup_steps": warmup_steps,
          "timed_seconds": round(timed_steps * batch_size / rate, 3),
          "step_seconds": timing["step_seconds"][warmup_steps:],
          "heavy_op_dtypes": timing.get("partition_graph_dtype_counts"),
          "ran_dtype": timing.get("observed_compute_dtype"),
          "wall_seconds": round(time.time() - start, 1)}


def synthetic_input_fn(image_size, num_classes, seed):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top

  def input_fn(params):
    rng, batch = np.random.RandomState(seed), params["batch_size"]
    images = rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32)
    labels = rng.randint(0, num_classes, batch).astype(np.int32)
    return tf.data.Dataset.from_tensors(({"image": images}, labels)).repeat()
  return input_fn


def throughput_job(job):
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  batch, warmup = job["batch_size"], job["warmup_steps"]
  steps = warmup + job["timed_steps"]
  runner = prepare(job, [
      "--mode=train", "--train_batch_size=%d" % batch, "--eval_batch_size=%d" % batch,
      "--train_steps=%d" % steps, "--warmup_steps=0", "--save_checkpoints_steps=%d" % steps])
  config, modes = runner.config, tf.estimator.ModeKeys
  train_input, eval_input = (
      [synthetic_input_fn(job["image_size"], config.num_classes, job["seed"])] * 2
      if job["data"] == "synthetic" else
      [runner.model.input_fn(config, mode) for mode in (modes.TRAIN, modes.EVAL)])
  return dict(
      model=job["model"], variant=job["variant"], precision_mode=job["precision_mode"],
      device=config.device, compute_dtype_announced=config.compute_dtype,
      loss_scale=config.loss_scale, image_size=job["image_size"], batch_size=batch,
      data=job["data"], train=timed(lambda hooks: runner.estimator.train(
          train_input, max_steps=steps, hooks=hooks), batch, warmup),
      eval=timed(lambda hooks: runner.estimator.evaluate(
          eval_input, steps=steps, hooks=hooks), batch, warmup))


def custom_vit(network_config):
  """Registers "vit_custom": ViT with `network_config` in place of its variant's network
  (the variant only passes the recipe's checks); returns that name."""
  from estimators import vit  # pylint: disable=g-import-not-at-top

  @registry.register
  class CustomViT(vit.VisionTransformer):
    name = "vit_custom"

    def recipe(self, flag_values, config):
      return super().recipe(flag_values, config).replace(network_config=network_config)
  return CustomViT.name


def accuracy_job(job):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from estimators.vit import network as vit_network  # pylint: disable=g-import-not-at-top
  steps = job["train_steps"]
  warmup = int(job["warmup_fraction"] * steps)
  argv = ["--mode=train_and_eval", "--train_batch_size=%d" % job["batch_size"],
          "--eval_batch_size=%d" % job["eval_batch_size"], "--train_steps=%d" % steps,
          "--learning_rate=%r" % job["learning_rate"], "--warmup_steps=%d" % warmup,
          "--save_checkpoints_steps=%d" % steps]
  if job["model"] == "vit":  # Ti/16 resized (no dropout, no pre-logits layer)
    network = vit_network.get_config(job["variant"])._replace(**{name: job[name] for name in (
        "hidden_size", "mlp_dim", "num_heads", "num_layers", "patch_size")})
    runner = prepare(job, argv, custom_vit(network))
  else:
    boundaries = sorted(set(max(1, int(f * steps)) for f in job["lr_boundary_fractions"]))
    runner = prepare(job, argv + ["--lr_boundaries=" + ",".join(map(str, boundaries))])
  with common.Stopwatch() as watch:
    metrics = runner.run()
  config = runner.config
  result = dict(
      model=job["model"], from_scratch=True, image_size=job["image_size"],
      precision_mode=job["precision_mode"], device=config.device,
      batch_size=job["batch_size"], learning_rate=job["learning_rate"],
      warmup_steps=warmup, steps=int(metrics["global_step"]),
      accuracy=round(float(metrics["accuracy"]), 4), eval_loss=round(float(metrics["loss"]), 4),
      train_seconds=round(float(metrics["train_seconds"]), 1),
      wall_seconds=round(watch.seconds, 1),
      # Trainable parameters: the checkpoint's variables, less the optimizer's and the step.
      parameters=int(sum(np.prod(shape) for name, shape in tf.train.list_variables(
          job["model_dir"]) if not name.endswith("/Momentum") and name != "global_step")))
  if job["model"] == "bit":
    return dict(result, variant=job["variant"], resize_size=config.resize_size,
                schedule="linear warm-up, lr / 10 after steps %s; SGD momentum %.1f" % (
                    config.lr_boundaries, config.momentum))
  return dict(result, variant="custom ViT (patch %d)" % network.patch_size,
              network=dict(network._asdict(), tokens=vit_network.num_tokens(
                  network, job["image_size"])),
              schedule="linear warm-up, cosine decay; SGD momentum %.1f, clip %.1f" % (
                  config.momentum, config.grad_clip_norm))


def run_job(job_text):
  """Child process: runs one job; common.run_child prints its JSON as the last line."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  tf.logging.set_verbosity(tf.logging.INFO)
  tf.get_logger().propagate = False  # TF's own handler prints it; absl would print it again
  job, start = json.loads(job_text), time.time()
  work = throughput_job if job["kind"] == "throughput" else accuracy_job
  common.run_child(lambda: dict(work(job), job_seconds=round(time.time() - start, 1)))


# Parent.

def jobs(args, part):
  """(name, job) of each measurement of `part`."""
  for model in args.models:
    if part == "throughput":
      for mode in args.precision_modes:
        yield "throughput-%s-%s" % (model, mode), dict(
            model=model, variant=getattr(args, model + "_model"), precision_mode=mode,
            image_size=args.throughput_image_size, batch_size=args.throughput_batch_size,
            warmup_steps=args.throughput_warmup_steps, timed_steps=args.throughput_steps,
            data=args.throughput_data)
    else:  # --vit_batch_size -> batch_size, ...; the custom ViT only names Ti/16
      yield "accuracy-" + model, dict(
          {k[4:]: v for k, v in vars(args).items() if k.startswith(model + "_")},
          model=model, variant="Ti/16" if model == "vit" else args.accuracy_bit_model,
          precision_mode=args.accuracy_precision_mode, image_size=args.accuracy_image_size,
          eval_batch_size=args.eval_batch_size, warmup_fraction=args.warmup_fraction)


def spawn_job(name, job, work_dir, timeout):
  """Runs `job` in a child process; its result, or an error row naming the job and its
  log. The model dir is removed either way (ViT-B checkpoints: ~1 GB)."""
  job = dict(job, model_dir=os.path.join(work_dir, name))
  log_path = os.path.join(work_dir, name + ".log")
  outcome = common.spawn([os.path.abspath(__file__), "--job", json.dumps(job)], log_path,
                         timeout)
  shutil.rmtree(job["model_dir"], ignore_errors=True)
  return outcome if "error" not in outcome else dict(
      outcome, model=job["model"], precision_mode=job["precision_mode"],
      job_seconds=outcome["process_seconds"])


def summarize(result):
  """One line per measurement: {name: figures} (errors named)."""
  lines = {}
  for row in result.get("throughput", []):
    name = "throughput %s %s %s" % (row["model"], row.get("variant", ""), row["precision_mode"])
    lines[name] = "error: see log_tail" if "error" in row else (
        "train %.2f img/s, eval %.2f img/s, ran %s/%s (announced %s), batch %d, %d px" % (
            row["train"]["images_per_sec"], row["eval"]["images_per_sec"],
            row["train"]["ran_dtype"], row["eval"]["ran_dtype"],
            row["compute_dtype_announced"], row["batch_size"], row["image_size"]))
  for row in result.get("accuracy", []):
    name = "accuracy %s from scratch" % row["model"]
    lines[name] = "error: see log_tail" if "error" in row else (
        "top-1 %(accuracy).4f after %(steps)d steps (batch %(batch_size)d, %(image_size)d "
        "px), %(train_seconds).0f s train, %(wall_seconds).0f s wall" % row)
  return lines


def main(argv):
  args = parse_args(argv)
  if args.job:
    return run_job(args.job)
  start = time.time()
  result = {"benchmark": "vit_bit", "environment": common.environment_info(),
            "settings": {k: v for k, v in sorted(vars(args).items()) if k != "job"},
            "command": [sys.executable] + sys.argv}
  data_dir, result["data"] = prepare_flowers(args.flowers_dir, args.cache_dir)
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="vit_bit_bench-")
  os.makedirs(work_dir, exist_ok=True)
  try:
    for part in ("throughput", "accuracy"):
      if part in args.parts:
        result[part] = [spawn_job(name, dict(job, kind=part, data_dir=data_dir,
                                             seed=args.seed), work_dir, args.job_timeout)
                        for name, job in jobs(args, part)]
  finally:
    failures = sum("error" in row for part in args.parts for row in result.get(part, []))
    if not args.work_dir and not failures:
      shutil.rmtree(work_dir, ignore_errors=True)
  result.update(summary=summarize(result), failed_jobs=failures)
  common.finish(result, args.output, start)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
