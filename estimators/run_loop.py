"""The one run loop every model uses: flags -> backend -> RunConfig -> Estimator -> mode.

Entry scripts are two lines (`run_loop.main("amoeba_net")`). Modes:
  train            train to the step budget (resumes from the latest checkpoint)
  eval             evaluate the latest checkpoint, or --checkpoint_path
  continuous_eval  evaluate each new checkpoint until training ends or --eval_timeout passes
  train_and_eval   alternate training (--steps_per_eval) and evaluation
  predict          write predictions for the eval input to --predictions_file (JSON lines)
A SavedModel is exported to --export_dir after training when the model has a serving input.
Every run ends with one parseable line: `Final metrics: {json}`; training runs add their
throughput (`examples_per_sec`), runs that evaluate name the model's headline figure
(`headline_metric`, `headline_meaning`).
"""
import json
import os
import re
import sys
import time

import numpy as np
import tensorflow.compat.v1 as tf
from absl import app
from absl import flags
from absl import logging

from estimators import checkpoints
from estimators import registry
from estimators import run_control
from input_fns import record_checks
from migration import backend as backend_lib
from migration import distribute
from migration import estimator as estimator_lib
from migration import precision
from migration import run_config as run_config_lib
from migration import validation

FLAGS = flags.FLAGS
MODES = ("train", "eval", "continuous_eval", "train_and_eval", "predict")
FINAL_METRICS_PREFIX = "Final metrics: "

# The Ascend ModelZoo TF2 scripts' names (BiT seed ID2496) of run-loop flags.
TF2_SEED_ALIASES = {
    "batch_size": "train_batch_size",
    "epochs": "train_epochs",
    "log_steps": "log_step_count_steps",
    "over_dump": "enable_dump_debug",
    "over_dump_path": "dump_path",
    "data_dump_flag": "enable_dump",
    "data_dump_step": "dump_step",
    "data_dump_path": "dump_path",
    "profiling": "enable_profiling",
}
# Their switch + file pairs: (switch, file flag, its default in the seed, the NPU option the
# file goes to when the switch is on).
TF2_SEED_FILE_SWITCHES = (
    ("use_mixlist", "mixlist_file", "ops_info.json", "modify_mixlist"),
    ("fusion_off_flag", "fusion_off_file", "fusion_switch.cfg", "fusion_switch_file"),
)
# What the TF2 seed profiles (npu_bridge_api.md 11.4); its --profiling_dump_path is "output".
SEED_PROFILING_OPTIONS = {"training_trace": "on", "task_trace": "on", "aicpu": "on",
                          "fp_point": "", "bp_point": "", "aic_metrics": "PipeUtilization"}


RUN_FLAGS = (
    registry.Flag("mode", "enum", "train_and_eval", "What to run.", MODES),
    registry.Flag("data_dir", "string", None, "Folder of the input data."),
    registry.Flag("model_dir", "string", None, "Checkpoints, summaries and logs go here."),
    registry.Flag("train_batch_size", "integer", 64, "Global training batch size.",
                  registry.POSITIVE),
    registry.Flag("eval_batch_size", "integer", 64, "Evaluation batch size.",
                  registry.POSITIVE),
    registry.Flag("predict_batch_size", "integer", None, "Prediction batch size (default: "
                  "eval).", registry.POSITIVE),
    registry.Flag("train_steps", "integer", None, "Training steps in all (default: from "
                  "--train_epochs when set, else the model's recipe); not with "
                  "--train_epochs.", registry.POSITIVE),
    registry.Flag("train_epochs", "float", None, "Training epochs: ceil(epochs x the "
                  "training examples of this run's data / the training batch) steps; not "
                  "with --train_steps.", registry.POSITIVE),
    registry.Flag("steps_per_eval", "integer", None, "Training steps between evaluations "
                  "in train_and_eval (default: from the model, else once at the end).",
                  registry.POSITIVE),
    registry.Flag("eval_steps", "integer", None, "Batches per evaluation (default: whole "
                  "set).", registry.POSITIVE),
    registry.Flag("checkpoint_path", "string", None, "Checkpoint to evaluate/predict "
                  "(default: the latest in --model_dir)."),
    registry.Flag("eval_timeout", "integer", 86400, "continuous_eval: seconds to wait for "
                  "a new checkpoint before stopping.", registry.NON_NEGATIVE),
    registry.Flag("export_dir", "string", None, "Export a SavedModel here after training."),
    registry.Flag("predictions_file", "string", None, "predict: JSON-lines output "
                  "(default: <model_dir>/predictions.jsonl)."),
    registry.Flag("distribution", "enum", "none", "Training on several devices or machines "
                  "(tf.distribute): none, mirrored (the GPUs of this machine), "
                  "multi_worker_mirrored (synchronous, workers from TF_CONFIG), parameter_server "
                  "(asynchronous, TF_CONFIG with ps tasks). On the NPU keep none: ranks come "
                  "from RANK_SIZE (HCCL).", distribute.STRATEGIES),
    registry.Flag("device", "enum", "auto", "auto: npu if npu_bridge imports, else gpu if "
                  "TensorFlow sees one, else cpu.", backend_lib.DEVICES),
    registry.Flag("save_checkpoints_steps", "integer", None, "Checkpoint every N steps.",
                  registry.POSITIVE),
    registry.Flag("save_checkpoints_secs", "integer", None, "Checkpoint every N seconds "
                  "(default 600 when no steps are given).", registry.POSITIVE),
    registry.Flag("keep_checkpoint_max", "integer", 5, "Checkpoints kept.",
                  registry.POSITIVE),
    registry.Flag("save_summary_steps", "integer", 100, "TensorBoard summaries every N "
                  "steps.", registry.NON_NEGATIVE),
    registry.Flag("log_step_count_steps", "integer", 100, "Log steps/sec and examples/sec "
                  "every N.", registry.POSITIVE),
    registry.Flag("tf_random_seed", "integer", None, "Graph-level random seed."),
    registry.Flag("intra_op_threads", "integer", 0, "0: TensorFlow's default.",
                  registry.NON_NEGATIVE),
    registry.Flag("inter_op_threads", "integer", 0, "0: TensorFlow's default.",
                  registry.NON_NEGATIVE),
    # Ascend NPU and precision options (NPURunConfig; validated on every backend).
    registry.Flag("precision_mode", "string", None, "NPU precision mode, one of: %s. Off "
                  "the NPU the reduced modes turn on TF auto mixed precision (fp16 on GPU, "
                  "bf16 on CPU where available)." % ", ".join(validation.PRECISION_MODES)),
    registry.Flag("loss_scale", "string", "auto", "auto (follows the precision), none, "
                  "dynamic, or a fixed number."),
    registry.Flag("fusion_switch_file", "string", None, 'NPU fusion switch file, JSON: '
                  '{"Switch": {"GraphFusion": {"<PassName>" or "ALL": "on"|"off", ...}, '
                  '"UBFusion": {...}}} (only those two keys under "Switch").'),
    registry.Flag("modify_mixlist", "string", None, 'NPU mixed-precision list file, JSON: '
                  '{"black-list"|"white-list"|"gray-list": {"to-add": [OpType, ...], '
                  '"to-remove": [OpType, ...]}}; needs --precision_mode=%s.'
                  % "|".join(validation.MIXLIST_PRECISION_MODES)),
    registry.Flag("iterations_per_loop", "integer", 1, "Steps per Session.run on the NPU."),
    registry.Flag("enable_dump", "bool", False, "NPU data dump."),
    registry.Flag("dump_path", "string", None, "NPU dump output folder."),
    registry.Flag("dump_step", "string", "0", "Steps to dump, e.g. 0|5|10 or 0-3."),
    registry.Flag("dump_mode", "enum", "output", "Dump op inputs/outputs.",
                  validation.DUMP_MODES),
    registry.Flag("enable_dump_debug", "bool", False, "NPU overflow dump."),
    registry.Flag("dump_debug_mode", "enum", "all", "Overflow kind.",
                  validation.DUMP_DEBUG_MODES),
    registry.Flag("enable_profiling", "bool", False, "NPU profiling."),
    registry.Flag("profiling_options", "string", None, "NPU profiling options (with "
                  "--enable_profiling), a JSON object such as %s (checked to be a JSON "
                  "object)." % json.dumps(dict(output="/tmp/profiling",
                                               **SEED_PROFILING_OPTIONS))),
    registry.Flag("hcom_parallel", "bool", True, "NPU: overlap allreduce with backprop."),
    registry.Flag("enable_data_pre_proc", "bool", True, "NPU: offload the input pipeline."),
    registry.Flag("mix_compile_mode", "bool", False, "NPU mixed compile "
                  "(iterations_per_loop=1)."),
    registry.Flag("op_compiler_cache_mode", "string", None, "NPU operator compile cache: "
                  "%s." % "|".join(validation.OP_COMPILER_CACHE_MODES)),
    registry.Flag("op_compiler_cache_dir", "string", None, "NPU operator compile cache "
                  "folder."),
)


def define_tf2_seed_flags(flag_values=FLAGS):
  """Defines the ModelZoo TF2 scripts' flag names (for models with tf2_seed_flags);
  npu_options() maps the switch + file pairs."""
  for alias, original in TF2_SEED_ALIASES.items():
    if alias not in flag_values:
      flags.DEFINE_alias(alias, original, flag_values=flag_values)
  for switch, file_flag, file_default, option in TF2_SEED_FILE_SWITCHES:
    if switch not in flag_values:
      flags.DEFINE_boolean(switch, False, "Seed name: pass --%s to the NPU as --%s."
                           % (file_flag, option), flag_values=flag_values)
      flags.DEFINE_string(file_flag, file_default, "Seed name: the --%s file, used with "
                          "--%s." % (option, switch), flag_values=flag_values)
  if "profiling_dump_path" not in flag_values:
    flags.DEFINE_string("profiling_dump_path", None, "Seed name: profile into this folder "
                        "with the seed's --profiling_options (%s)."
                        % ", ".join(sorted(SEED_PROFILING_OPTIONS)), flag_values=flag_values)


def _seed_option(values, option, value, seed_flags):
  if values[option] not in (None, value):
    raise validation.ConfigError("%s and --%s=%s disagree; give one" % (
        seed_flags, option, values[option]))
  values[option] = value


def npu_options(flag_values):
  """The NPU options of the run: the run-loop flags, with the TF2 seed names' switch + file
  pairs (where the model defines them) worked out here, once."""
  values = {name: getattr(flag_values, name) for name in run_config_lib.NpuOptions._fields}
  for switch, file_flag, _, option in TF2_SEED_FILE_SWITCHES:
    if getattr(flag_values, switch, False):
      path = getattr(flag_values, file_flag)
      _seed_option(values, option, path, "--%s with --%s=%s" % (switch, file_flag, path))
  seed_profile = getattr(flag_values, "profiling_dump_path", None)
  if seed_profile:
    _seed_option(values, "profiling_options",
                 json.dumps(dict(output=seed_profile, **SEED_PROFILING_OPTIONS)),
                 "--profiling_dump_path=%s" % seed_profile)
  return run_config_lib.NpuOptions(**values)


def run_options(flag_values):
  secs = flag_values.save_checkpoints_secs
  if flag_values.save_checkpoints_steps is None and secs is None:
    secs = 600
  return run_config_lib.RunOptions(
      model_dir=flag_values.model_dir,
      save_checkpoints_steps=flag_values.save_checkpoints_steps,
      save_checkpoints_secs=secs,
      keep_checkpoint_max=flag_values.keep_checkpoint_max,
      save_summary_steps=flag_values.save_summary_steps,
      log_step_count_steps=flag_values.log_step_count_steps,
      tf_random_seed=flag_values.tf_random_seed,
      intra_op_threads=flag_values.intra_op_threads,
      inter_op_threads=flag_values.inter_op_threads)


def _check_writable(flag_name, folder):
  """Creates `folder` and writes a probe file in it: the one test that holds for every
  file system and user (root ignores permission bits; read-only mounts do not)."""
  probe = os.path.join(folder, ".write_probe.%d" % os.getpid())
  try:
    tf.gfile.MakeDirs(folder)
    with tf.gfile.GFile(probe, "w") as out:
      out.write("")
    tf.gfile.Remove(probe)
  except (tf.errors.OpError, OSError) as error:
    reason = getattr(error, "message", None) or str(error)
    raise validation.ConfigError("--%s: cannot write in %s (%s)" % (flag_name, folder,
                                                                   reason.splitlines()[0]))


def check_common_flags(flag_values):
  """Raises ConfigError (one line) on bad run-loop flags, before any graph is built."""
  if not flag_values.model_dir:
    raise validation.ConfigError("--model_dir is required")
  if os.path.exists(flag_values.model_dir) and not os.path.isdir(flag_values.model_dir):
    raise validation.ConfigError("--model_dir=%s exists and is not a folder"
                                 % flag_values.model_dir)
  try:
    registry.check_ranges(RUN_FLAGS, flag_values)
  except ValueError as e:
    raise validation.ConfigError(str(e))
  if (registry.flag_given(flag_values, "train_steps") and
      registry.flag_given(flag_values, "train_epochs")):
    raise validation.ConfigError("--train_steps=%d and --train_epochs=%g both set the "
                                 "training length; give one" % (flag_values.train_steps,
                                                                flag_values.train_epochs))
  if flag_values.checkpoint_path and not tf.gfile.Exists(
      flag_values.checkpoint_path + ".index"):
    raise validation.ConfigError("--checkpoint_path=%s: no such checkpoint"
                                 % flag_values.checkpoint_path)
  if flag_values.mode in ("eval", "predict") and not (
      flag_values.checkpoint_path or tf.train.latest_checkpoint(flag_values.model_dir or ".")):
    raise validation.ConfigError("--mode=%s: no checkpoint in --model_dir=%s; train first "
                                 "or pass --checkpoint_path" % (flag_values.mode,
                                                                flag_values.model_dir))


def prepare_output_folders(config):
  """Creates --model_dir (and the predictions file's folder) after every check has
  passed, so that a refused run leaves no empty folder; one line if they are not writable."""
  _check_writable("model_dir", config.model_dir)
  if config.mode == "predict":
    _check_writable("predictions_file", os.path.dirname(os.path.abspath(
        config.predictions_file)))


def predictions_path(flag_values):
  return flag_values.predictions_file or os.path.join(flag_values.model_dir,
                                                      "predictions.jsonl")


def checkpoint_to_read(config):
  """The checkpoint eval/predict read: --checkpoint_path, which must be intact, else the
  newest intact one in --model_dir (a corrupt newer one is named and skipped)."""
  if config.checkpoint_path:
    try:
      checkpoints.verify(config.checkpoint_path)
    except checkpoints.CheckpointError as error:
      raise validation.ConfigError("--checkpoint_path: %s" % error)
    return config.checkpoint_path
  intact, corrupt = checkpoints.newest_intact(config.model_dir)
  if intact is None:
    raise validation.ConfigError("--model_dir=%s holds no intact checkpoint (corrupt: %s)"
                                 % (config.model_dir, ", ".join(corrupt)))
  if corrupt:
    logging.warning("reading %s, the newest intact checkpoint", intact)
  return intact


class DataError(ValueError):
  """Input data found broken while running (the message names the file)."""


class DiskFullError(OSError):
  """The disk filled up while writing (one line; partial checkpoint files removed)."""


_NO_SPACE = "No space left on device"
_LABEL_OUT_OF_RANGE = re.compile(r"Received a label value of (-?\d+) which is outside the "
                                 r"valid range of \[0, (\d+)\)")


def _data_source(input_fn, config):
  files = getattr(input_fn, "files", None)
  return ", ".join(files[:3]) + (" ..." if len(files) > 3 else "") if files else (
      "--data_dir=%s" % config.data_dir)


def _remove_partial_checkpoints(model_dir):
  """Removes what an interrupted write leaves: the Saver's `<prefix>_temp*` folders and
  the `<file>.tmp<hex>` of TF's atomic writes (.meta, the `checkpoint` state file)."""
  for partial in (tf.gfile.Glob(os.path.join(model_dir, "*_temp*")) +
                  tf.gfile.Glob(os.path.join(model_dir, "*.tmp*"))):
    if tf.gfile.IsDirectory(partial):
      tf.gfile.DeleteRecursively(partial)
    else:
      tf.gfile.Remove(partial)


def run_reading(input_fn, work, config):
  """Runs `work()`, turning what the data or the disk can do to a run into one line:
  a corrupt TFRecord (DataLossError) names the shard (input_fns that read TFRecords expose
  `input_fn.files`); a label outside the model's classes names the data; a full disk
  says so, after removing the partial checkpoint files it left."""
  try:
    return work()
  except (tf.errors.OpError, OSError) as error:
    message = getattr(error, "message", None) or str(error)
    if _NO_SPACE in message:
      _remove_partial_checkpoints(config.model_dir)
      raise DiskFullError("no space left on the device of --model_dir=%s; partial "
                          "checkpoint files removed, the newest complete checkpoint is %s"
                          % (config.model_dir,
                             tf.train.latest_checkpoint(config.model_dir)))
    label = _LABEL_OUT_OF_RANGE.search(message)
    if isinstance(error, tf.errors.InvalidArgumentError) and label:
      raise DataError("%s holds label %s, outside the model's %s classes [0, %s)" % (
          _data_source(input_fn, config), label.group(1), label.group(2),
          label.group(2)))
    if not isinstance(error, tf.errors.DataLossError):
      raise
    files = getattr(input_fn, "files", None)
    if files:
      try:
        for path in files:
          record_checks.read_records(path)
      except ValueError as named:
        raise DataError(str(named))
    raise DataError("corrupt input data in %s: %s" % (_data_source(input_fn, config),
                                                      message.splitlines()[0]))


class Throughput(object):
  """A run's training throughput from its own step timing. Each train call contributes
  the steps after its first one (graph build and warm-up) and their time; only when no
  call trained more than one step does the whole time count."""

  def __init__(self):
    self.steady = [0, 0.0]  # steps, seconds after each call's first step
    self.whole = [0, 0.0]  # steps, seconds including the first steps

  def add(self, steady_steps, steady_seconds, whole_steps, whole_seconds):
    self.steady[0] += steady_steps
    self.steady[1] += steady_seconds
    self.whole[0] += whole_steps
    self.whole[1] += whole_seconds

  def measured(self):
    """(steps, seconds, whether the first steps were left out)."""
    if self.steady[0]:
      return self.steady[0], self.steady[1], True
    return self.whole[0], self.whole[1], False

  def examples_per_sec(self, batch_size):
    steps, seconds, _ = self.measured()
    return steps * batch_size / seconds if steps and seconds > 0 else None


class ExamplesPerSecondHook(tf.train.SessionRunHook):
  """Logs steps/sec and examples/sec every N steps and writes them as summaries (when
  `output_dir` is given: the chief's); adds the train call's step timing to a Throughput
  (whatever N is)."""

  def __init__(self, batch_size, every_n_steps, output_dir, throughput):
    self._batch_size = batch_size
    self._timer = tf.train.SecondOrStepTimer(every_steps=every_n_steps)
    self._output_dir = output_dir
    self._throughput = throughput

  def begin(self):
    self._global_step = tf.train.get_global_step()
    self._writer = self._output_dir and tf.summary.FileWriterCache.get(self._output_dir)
    self._start_step = self._start_time = self._last_time = None
    self._after_first = None  # (global step, time) once the first run is done

  def after_create_session(self, session, coord):
    self._start_step = session.run(self._global_step)

  def before_run(self, run_context):
    if self._start_time is None:
      self._start_time = time.time()
    return tf.train.SessionRunArgs(self._global_step)

  def after_run(self, run_context, run_values):
    self._last_time = time.time()
    if self._after_first is None:  # read after the run: one run may be many NPU steps
      self._after_first = (run_context.session.run(self._global_step), self._last_time)
    step = run_values.results
    if self._timer.should_trigger_for_step(step):
      elapsed, steps = self._timer.update_last_triggered_step(step)
      if elapsed and steps:
        steps_per_sec = steps / elapsed
        examples_per_sec = steps_per_sec * self._batch_size
        logging.info("step %d: %.3f steps/sec, %.1f examples/sec", step, steps_per_sec,
                     examples_per_sec)
        if self._writer:
          self._writer.add_summary(tf.Summary(value=[
              tf.Summary.Value(tag="examples/sec", simple_value=examples_per_sec)]), step)

  def end(self, session):
    if self._after_first is None:
      return
    last_step = session.run(self._global_step)
    first_step, first_time = self._after_first
    self._throughput.add(last_step - first_step, self._last_time - first_time,
                         last_step - self._start_step, self._last_time - self._start_time)


def _jsonable(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  return value


def print_final_metrics(metrics):
  """The one parseable closing line of every run."""
  line = FINAL_METRICS_PREFIX + json.dumps({k: _jsonable(v) for k, v in metrics.items()},
                                           sort_keys=True)
  print(line, flush=True)
  return line


def run_values(flag_values, backend, distribution=distribute.SINGLE):
  """The run loop's values, worked out once: where every model's configure() starts."""
  return registry.Config(
      mode=flag_values.mode,
      model_dir=flag_values.model_dir,
      data_dir=flag_values.data_dir,
      train_batch_size=flag_values.train_batch_size,
      distribution=distribution,
      eval_batch_size=flag_values.eval_batch_size,
      predict_batch_size=flag_values.predict_batch_size or flag_values.eval_batch_size,
      steps_per_eval=flag_values.steps_per_eval,
      eval_steps=flag_values.eval_steps,
      tf_random_seed=flag_values.tf_random_seed,
      checkpoint_path=flag_values.checkpoint_path,
      export_dir=flag_values.export_dir,
      predictions_file=predictions_path(flag_values),
      eval_timeout=flag_values.eval_timeout,
      log_step_count_steps=flag_values.log_step_count_steps,
      device=backend.device,
      # The NPU compiles one graph per input shape: its batches keep one size.
      fixed_batch_shapes=backend.is_npu,
      compute_dtype=precision.compute_dtype(backend, flag_values.precision_mode),
      loss_scale=precision.resolve_loss_scale(flag_values.loss_scale, backend,
                                              flag_values.precision_mode))


def configure(model, flag_values, backend, distribution=distribute.SINGLE):
  """The run's Config: the run loop's values, then the model's (ranges from its flag
  table, what the distribution allows, then its configure()); every data check last. One
  ConfigError line on failure."""
  try:
    registry.check_ranges(model.flags, flag_values)
    registry.require(distribution.num_workers == 1 or
                     flag_values.mode in ("train", "train_and_eval"),
                     "--mode=%s runs in one process; %s is for training (unset TF_CONFIG/"
                     "RANK_SIZE, or use --mode=train or train_and_eval)"
                     % (flag_values.mode, distribution.describe()))
    if model.single_device_only and (distribution.strategy != "none" or
                                     distribution.num_workers > 1):
      raise ValueError("%s trains on one device only (%s); it cannot run as %s" % (
          model.name, model.single_device_only, distribution.describe()))
    run = run_values(flag_values, backend, distribution)
    # The loss scaler decides per replica, from gradients not yet all-reduced, whether a
    # step applies: replicas could disagree.
    registry.require(run.loss_scale == "none" or distribution.strategy == "none",
                     "--loss_scale=%s (--precision_mode=%s) cannot run under "
                     "--distribution=%s: loss scaling is not supported with tf.distribute "
                     "yet; pass --loss_scale=none (bf16 needs none) or --distribution=none"
                     % (run.loss_scale, flag_values.precision_mode, distribution.strategy))
    config = model.configure(flag_values, run)
    # After configure(), which may set the batch: each replica's share of it, and what one
    # global step trains on (one worker's share where parameter servers apply each
    # worker's update as a step of its own).
    replica_batch = distribute.per_replica_batch("train_batch_size", config.train_batch_size,
                                                 distribution)
    config = config.replace(replica_batch_size=replica_batch, examples_per_step=(
        config.train_batch_size if distribution.synchronous else replica_batch))
    config = config.replace(steps_per_eval=config.steps_per_eval or config.train_steps)
    model.check_inputs(config)  # the last check: it may build a data cache
  except ValueError as e:
    raise validation.ConfigError(str(e))
  return config


class Runner(object):
  """One run: its model, Config and estimator; each mode is a method."""

  def __init__(self, model, config, backend, npu_opts, run_opts, model_flags):
    self.model = model
    self.config = config
    self.model_flags = model_flags  # the model's own flags, recorded in flags.json
    self.stop = run_control.GracefulStop()  # unless entered, signals act as usual
    self.throughput = Throughput()
    distribution = config.distribution
    logging.info("model=%s device=%s runs as %s, loss scale %s; %r", model.name,
                 backend.device, config.compute_dtype, config.loss_scale, config)
    if distribution.num_workers > 1 or distribution.strategy != "none":
      logging.info("%s; global batch %d, %d per replica", distribution.describe(),
                   config.train_batch_size, config.replica_batch_size)
    # In a TF_CONFIG cluster the chief writes and the others follow it (see run_worker). On
    # the NPU, NPURunConfig always saves (no steps nor secs means every 100 steps): each rank
    # keeps its own --model_dir (scripts/train_full_8p.sh: output/<device id>/ckpt), and the
    # broadcast from rank 0 makes the others' checkpoints irrelevant on resume.
    if distribution.in_cluster and not distribution.is_chief:
      # (log_step_count_steps: TensorFlow's step counter would write summaries; our
      # ExamplesPerSecondHook logs this worker's throughput.)
      run_opts = run_opts._replace(save_checkpoints_steps=None, save_checkpoints_secs=None,
                                   save_summary_steps=0, log_step_count_steps=None)
    self.estimator = estimator_lib.create_estimator(
        self._model_fn, run_config_lib.build_run_config(
            backend, run_opts, npu_opts, distribute.make_strategy(distribution)),
        train_batch_size=config.replica_batch_size, eval_batch_size=config.eval_batch_size,
        predict_batch_size=config.predict_batch_size, backend=backend)

  def _model_fn(self, features, labels, mode, params):
    """The model's model_fn with the Config and this mode's batch size."""
    return self.model.model_fn(features, labels, mode,
                               self.config.replace(batch_size=params["batch_size"]))

  def global_step(self):
    latest = tf.train.latest_checkpoint(self.config.model_dir)
    if not latest:
      return 0
    return int(tf.train.load_variable(latest, tf.GraphKeys.GLOBAL_STEP))

  def compatibility_hook(self, checkpoint_path=None):
    return checkpoints.CompatibilityHook(checkpoint_path, self.config.model_dir,
                                         self.model_flags)

  def train(self, max_steps, extra_hooks=()):
    """Trains to `max_steps`; returns the seconds. `extra_hooks`: e.g. a benchmark's timer."""
    divergence = checkpoints.DivergenceHook()
    chief = self.config.distribution.is_chief
    hooks = [ExamplesPerSecondHook(self.config.examples_per_step,
                                   self.config.log_step_count_steps,
                                   self.config.model_dir if chief else None, self.throughput),
             self.stop.hook(), divergence, self.compatibility_hook()] + list(extra_hooks)
    start = time.time()
    input_fn = self.model.input_fn(self.config, tf.estimator.ModeKeys.TRAIN)
    if self.config.distribution.in_cluster:
      # TensorFlow runs TF_CONFIG's tasks only through train_and_evaluate (its distribute
      # coordinator starts this task's server; a ps task serves until stopped). The cluster
      # has no evaluator task, so the EvalSpec is never used: the chief evaluates after.
      # The coordinator passes no saving listeners: NaN weights stop training through the
      # loss (DivergenceHook) before any checkpoint.
      work = lambda: tf.estimator.train_and_evaluate(
          self.estimator, tf.estimator.TrainSpec(input_fn, max_steps=max_steps, hooks=hooks),
          tf.estimator.EvalSpec(input_fn))
    else:
      work = lambda: self.estimator.train(
          input_fn, max_steps=max_steps, hooks=hooks,
          saving_listeners=[checkpoints.FiniteWeightsListener()])
    try:
      run_reading(input_fn, work, self.config)
    except tf.train.NanLossDuringTrainingError:
      raise divergence.error(self.config.model_dir)
    self.stop.check()
    return time.time() - start

  def evaluate(self, checkpoint_path=None, extra_hooks=()):
    input_fn = self.model.input_fn(self.config, tf.estimator.ModeKeys.EVAL)
    hooks = [self.stop.hook(), self.compatibility_hook(checkpoint_path)] + list(extra_hooks)
    try:
      results = run_reading(input_fn, lambda: self.estimator.evaluate(
          input_fn, steps=self.config.eval_steps, checkpoint_path=checkpoint_path,
          hooks=hooks), self.config)
    except estimator_lib.EmptyEvaluationError:
      self.stop.check()  # a stopped evaluation counted nothing: that is no data error
      raise DataError("the evaluation saw no examples (--eval_batch_size=%d, --eval_steps=%s): "
                      "the evaluation data is smaller than one batch or empty; no result "
                      "reported" % (self.config.eval_batch_size, self.config.eval_steps))
    self.stop.check()
    logging.info("Evaluation results: %s", results)
    summary = self.model.summarize(results, self.config)
    if summary:
      print(summary, flush=True)
    return results

  def throughput_metrics(self):
    """{"examples_per_sec": ...} of the training so far (logged), or {} if none ran."""
    batch_size = self.config.examples_per_step
    examples_per_sec = self.throughput.examples_per_sec(batch_size)
    if examples_per_sec is None:
      return {}
    steps, seconds, steady = self.throughput.measured()
    logging.info("Training throughput: %.1f examples/sec (%d steps of %d examples in %.3f s, "
                 "%s)", examples_per_sec, steps, batch_size, seconds,
                 "leaving out the first step of each training call" if steady else
                 "the first step included: no training call ran more than one")
    return {"examples_per_sec": examples_per_sec}

  def run_train(self):
    seconds = self.train(self.config.train_steps)
    self.export()
    return dict(self.throughput_metrics(), mode="train", global_step=self.global_step(),
                train_seconds=seconds)

  def run_train_and_eval(self):
    """Alternates training and evaluation. Processes other than the chief train the same
    segments and leave the evaluations to it; a TF_CONFIG cluster trains in one segment
    (its servers live as long as the process), then the chief evaluates."""
    total, interval = self.config.train_steps, self.config.steps_per_eval
    distribution = self.config.distribution
    if distribution.in_cluster and interval < total:
      logging.info("--distribution=%s: training runs to step %d before the chief evaluates "
                   "(evaluations in between: --mode=continuous_eval in another process)",
                   distribution.strategy, total)
      interval = total
    step = self.global_step()
    results, seconds, evaluated = {}, 0.0, False
    while step < total or not evaluated:
      target = min(step + interval, total)
      seconds += self.train(target)
      evaluated = True
      if distribution.is_chief:
        results = self.evaluate()
        step = self.global_step()
      else:
        step = target
    if not distribution.is_chief:
      return {}
    self.export()
    return dict(results, mode="train_and_eval", train_seconds=seconds,
                **self.throughput_metrics())

  def run_eval(self):
    return dict(self.evaluate(checkpoint_to_read(self.config)), mode="eval")

  def run_continuous_eval(self):
    results, evaluated = {}, None
    model_dir = self.config.model_dir
    for path in tf.train.checkpoints_iterator(model_dir, timeout=self.config.eval_timeout):
      try:
        checkpoints.verify(path)
      except checkpoints.CheckpointError as error:
        logging.warning("%s; evaluating the newest intact checkpoint instead", error)
        path, _ = checkpoints.newest_intact(model_dir)
        if path is None or path == evaluated:
          continue
      results, evaluated = self.evaluate(path), path
      if results.get("global_step", 0) >= self.config.train_steps:
        break
    if not results:
      logging.warning("continuous_eval: no new checkpoint within %ds", self.config.eval_timeout)
    return dict(results, mode="continuous_eval")

  def run_predict(self):
    path = self.config.predictions_file
    checkpoint_path = checkpoint_to_read(self.config)
    input_fn = self.model.input_fn(self.config, tf.estimator.ModeKeys.PREDICT)

    def write_predictions():
      count = 0
      with tf.gfile.GFile(path + ".tmp", "w") as out:
        for prediction in self.estimator.predict(
            input_fn, checkpoint_path=checkpoint_path,
            hooks=[self.compatibility_hook(checkpoint_path)]):
          out.write(json.dumps({k: _jsonable(v) for k, v in prediction.items()}) + "\n")
          count += 1
      tf.gfile.Rename(path + ".tmp", path, overwrite=True)
      return count

    count = run_reading(input_fn, write_predictions, self.config)
    logging.info("Wrote %d predictions to %s", count, path)
    return {"mode": "predict", "predictions": count, "predictions_file": path}

  def export(self):
    serving_fn = self.model.serving_input_receiver_fn(self.config)
    if not self.config.export_dir or serving_fn is None:
      return None
    path = self.estimator.export_saved_model(self.config.export_dir, serving_fn)
    path = path.decode() if isinstance(path, bytes) else path
    logging.info("Exported SavedModel to %s", path)
    return path

  def run_worker(self):
    """A process other than the chief: trains its share without writing (a parameter
    server serves until stopped); the chief writes and reports the run."""
    distribution = self.config.distribution
    if distribution.task_type == "ps":  # signals act as usual: a server has no step to save
      self.train(self.config.train_steps)
      return {}
    if distribution.strategy == "multi_worker_mirrored":
      chief_checkpoint, _ = checkpoints.newest_intact(self.config.model_dir)
      folder = distribute.follow_chief(self.config.model_dir, distribution, chief_checkpoint)
      logging.info("%s starts from %s", distribution.describe(),
                   "the chief's %s (copied to %s)" % (chief_checkpoint, folder)
                   if chief_checkpoint else "scratch, as the chief")
    with self.stop:
      if self.config.mode == "train":
        self.train(self.config.train_steps)
      else:
        self.run_train_and_eval()
    logging.info("%s finished; the chief writes the checkpoints and reports the run",
                 distribution.describe())
    return {}

  def run(self):
    """Runs the mode (training ones under the signal handler and the model_dir lock),
    prints the final metrics line and returns the metrics."""
    if not self.config.distribution.is_chief:
      return self.run_worker()
    prepare_output_folders(self.config)
    mode = self.config.mode
    if mode not in ("train", "train_and_eval"):  # signals act as usual
      metrics = getattr(self, "run_" + mode)()
    else:
      with self.stop, run_control.TrainingLock(self.config.model_dir):
        if not checkpoints.set_aside_corrupt(self.config.model_dir):
          checkpoints.write_flags(self.config.model_dir, self.model_flags)
        try:
          metrics = getattr(self, "run_" + mode)()
        except run_control.Interrupted as interrupted:
          print_final_metrics({"mode": mode, "global_step": self.global_step(),
                               "interrupted": interrupted.signal_name})
          raise
    key, meaning = self.model.headline_metric
    if key in metrics:
      metrics = dict(metrics, headline_metric=key, headline_meaning=meaning)
    print_final_metrics(metrics)
    return metrics


def build_runner(model, flag_values):
  """Validates every flag and input, then builds the run's Runner (nothing is written)."""
  check_common_flags(flag_values)
  npu_opts = npu_options(flag_values)
  validation.check_npu_options(npu_opts)
  backend = backend_lib.select_backend(flag_values.device)
  distribution = distribute.resolve(flag_values.distribution, backend)
  config = configure(model, flag_values, backend, distribution)
  backend_lib.activate(backend)
  model_flags = registry.values_of(model.flags, flag_values)
  return Runner(model, config, backend, npu_opts, run_options(flag_values), model_flags)


_BASE_DEFAULTS = {}  # run-loop flag -> its default before any model changed it


def define_flags(model_name):
  """Defines the run loop's flags and those of `model_name` (each once per process) and
  sets the model's defaults of run-loop flags; returns the model."""
  model = registry.get(model_name)
  if "mode" not in FLAGS:
    registry.define_flags(RUN_FLAGS)
    _BASE_DEFAULTS.update((flag.name, flag.default) for flag in RUN_FLAGS)
  registry.define_flags(model.flags)
  for alias, original in model.run_flag_aliases.items():
    if alias not in FLAGS:
      flags.DEFINE_alias(alias, original)
  if model.tf2_seed_flags:
    define_tf2_seed_flags()
  # Another model of this process may have changed a default, or defined a flag of the
  # same name (image_size, num_classes) with its own: start from this model's.
  own_defaults = {flag.name: flag.default for flag in model.flags}
  for name, default in dict(_BASE_DEFAULTS, **dict(own_defaults,
                                                   **model.run_flag_defaults)).items():
    if FLAGS[name].default != default:
      FLAGS.set_default(name, default)
  return model


def parse_flags(model_name, argv):
  """Defines and parses the flags of `model_name`; returns (model, FLAGS)."""
  model = define_flags(model_name)
  FLAGS.unparse_flags()
  # An absl alias keeps the default its flag had when the alias was defined (by this model
  # or another), and unparsing the alias writes that into the flag: reset the flags after.
  for name in list(_BASE_DEFAULTS) + [flag.name for flag in model.flags]:
    FLAGS[name].unparse()
  FLAGS([model_name] + list(argv))
  return model, FLAGS


def prepare(model_name, argv):
  """The in-process entry point (tests, benchmarks): flags parsed from `argv`, everything
  validated, the Runner built; `runner.run()` runs the mode as `<model>.py` would."""
  model, flag_values = parse_flags(model_name, argv)
  return build_runner(model, flag_values)


def declare_key_flags(model):
  """Makes the run loop's and the model's flags key flags of the main module: absl's
  --help lists only those (the rest, TensorFlow's and absl's own, is in --helpfull)."""
  names = [flag.name for flag in FLAGS.get_flags_for_module(__name__)]  # seed names
  for name in names + [flag.name for flag in RUN_FLAGS + tuple(model.flags)]:
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def silence_deprecation_warnings():
  """TensorFlow's "... is deprecated" warnings (one line in six of a TF 2.15 run) name
  TensorFlow internals nobody running a model can act on. There is no public switch; these
  module settings (deprecated functions; deprecated tf.* names, TF 1.15) leave every other
  log line, ours at INFO included, as it is."""
  # pylint: disable=g-import-not-at-top,protected-access
  from tensorflow.python.util import deprecation
  from tensorflow.python.util import module_wrapper
  deprecation._PRINT_DEPRECATION_WARNINGS = False
  module_wrapper._PER_MODULE_WARNING_LIMIT = 0


def main(model_name):
  """Entry point of `<model>.py` scripts: defines flags, parses argv, runs."""
  model = define_flags(model_name)
  declare_key_flags(model)

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    silence_deprecation_warnings()
    logging.set_verbosity(logging.INFO)
    tf.logging.set_verbosity(tf.logging.INFO)
    tf.get_logger().propagate = False  # TF's own handler prints it; absl would print it again
    try:
      build_runner(model, FLAGS).run()
    except (validation.ConfigError, backend_lib.BackendError, DataError, DiskFullError,
            run_control.LockedError, checkpoints.CheckpointError,
            checkpoints.DivergedError) as e:
      raise SystemExit("error: %s" % e)
    except run_control.Interrupted as interrupted:
      raise SystemExit(interrupted.exit_code)

  app.run(_main)
