"""The shared run loop end to end, through the `tests.tiny_entry` script and in-process."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from estimators import registry
from estimators import run_loop
from migration import backend as backend_lib
from tests import conftest
from tests import tiny_model  # pylint: disable=unused-import  (registers "tiny")

PREFIX = run_loop.FINAL_METRICS_PREFIX


def run_entry(*args, env=None, timeout=240):
  """Runs the tiny model's entry script; returns (exit code, output)."""
  full_env = dict(os.environ, **(env or {}))
  proc = subprocess.run([sys.executable, "-m", "tests.tiny_entry"] + list(args),
                        cwd=conftest.REPO, env=full_env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=timeout)
  return proc.returncode, proc.stdout.decode("utf-8", "replace")


def final_metrics(output):
  lines = [l for l in output.splitlines() if l.startswith(PREFIX)]
  assert len(lines) == 1, output[-3000:]
  return json.loads(lines[0][len(PREFIX):])


def test_train_and_eval_then_eval_only_in_a_new_process(tmp_path):
  model_dir = str(tmp_path / "run")
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train_and_eval",
                        "--train_steps=40", "--steps_per_eval=20", "--log_step_count_steps=10",
                        "--save_checkpoints_steps=20", "--export_dir=" + str(tmp_path / "export"))
  assert code == 0, out
  metrics = final_metrics(out)
  assert metrics["mode"] == "train_and_eval" and metrics["global_step"] == 40
  assert metrics["accuracy"] > 0.9
  assert metrics["examples_evaluated"] == 256, "the whole eval split, counted"
  assert "examples/sec" in out and "steps/sec" in out
  assert metrics["examples_per_sec"] > 0 and "Training throughput: " in out
  assert (metrics["headline_metric"], metrics["headline_meaning"]) == (
      "accuracy", "accuracy on the blobs' evaluation split")
  assert "is deprecated" not in out, "TensorFlow's deprecation warnings are off"
  assert re.search(r"INFO:tensorflow:loss = [0-9.]+, step = \d+", out), "INFO lines are kept"
  assert os.listdir(str(tmp_path / "export")), "no SavedModel exported"
  assert glob_events(model_dir), "no TensorBoard summaries"

  code, out = run_entry("--model_dir=" + model_dir, "--mode=eval")
  assert code == 0, out
  assert final_metrics(out)["global_step"] == 40

  code, out = run_entry("--model_dir=" + model_dir, "--mode=eval",
                        "--checkpoint_path=" + os.path.join(model_dir, "model.ckpt-20"))
  assert code == 0, out
  assert final_metrics(out)["global_step"] == 20


def test_a_run_shorter_than_the_log_interval_reports_its_throughput(tmp_path):
  model_dir = str(tmp_path / "run")
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=3")
  assert code == 0, out
  assert final_metrics(out)["examples_per_sec"] > 0
  assert re.search(r"Training throughput: [0-9.]+ examples/sec \(2 steps of 32 examples in "
                   r"[0-9.]+ s, leaving out the first step of each training call\)", out), out
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=4")
  assert code == 0, out
  assert final_metrics(out)["examples_per_sec"] > 0
  assert "(1 steps of 32 examples in " in out and "the first step included" in out, out


def test_throughput_leaves_out_each_calls_first_step_unless_that_is_all():
  throughput = run_loop.Throughput()
  assert throughput.examples_per_sec(10) is None
  throughput.add(0, 0.0, 1, 2.0)  # one step, 2 s with the graph build: all there is
  assert throughput.examples_per_sec(10) == 5.0
  throughput.add(4, 1.0, 5, 3.0)  # 4 steps after the first took 1 s
  assert throughput.examples_per_sec(10) == 40.0
  assert throughput.measured() == (4, 1.0, True)


def train_steps_of(*argv):
  return run_loop.prepare("tiny", ["--model_dir=/tmp/unused"] + list(argv)).config.train_steps


def test_train_epochs_set_the_steps_and_train_steps_overrides_the_default():
  assert train_steps_of("--train_epochs=2.5") == 20  # 2.5 x 256 examples / batch 32
  assert train_steps_of("--train_epochs=0.1", "--tiny_examples=300",
                        "--train_batch_size=10") == 3, "0.1 * 300 / 10 is 3, not 3.0000000000000004"
  assert train_steps_of("--train_steps=7") == 7
  assert train_steps_of() == 20  # the model's default
  assert registry.Model.headline_metric == ("top_1_accuracy",
                                            "top-1 accuracy on the validation split")


def test_the_config_is_frozen_printable_and_worked_out_once():
  config = run_loop.prepare("tiny", ["--model_dir=/tmp/unused", "--tiny_hidden=8"]).config
  assert config.hidden == 8 and config["hidden"] == 8
  assert config.steps_per_eval == config.train_steps == 20, "evaluated once at the end"
  with pytest.raises(AttributeError, match="frozen"):
    config.hidden = 9
  assert config.replace(hidden=9).hidden == 9 and config.hidden == 8
  assert "hidden=8" in repr(config) and "train_batch_size=32" in repr(config)
  names = repr(config.replace(class_names=["c%d" % i for i in range(1001)]))
  assert "class_names=['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7'] ... (1001 items)" in names
  assert "c8'" not in names, "the logged Config line stays short"


def test_flag_ranges_come_from_the_table(tmp_path):
  code, out = run_entry("--model_dir=" + str(tmp_path / "run"), "--tiny_hidden=0")
  assert code != 0 and "error: --tiny_hidden=0 must be >= 1" in out, out[-2000:]


def test_a_models_defaults_of_run_loop_flags_do_not_leak_into_the_next_model():
  assert run_loop.prepare("tiny", ["--model_dir=/tmp/unused"]).config.train_batch_size == 32
  run_loop.FLAGS.set_default("train_batch_size", 5)  # as another model of the process might
  assert run_loop.prepare("tiny", ["--model_dir=/tmp/unused"]).config.train_batch_size == 32


def test_models_that_share_a_flag_name_share_its_parser():
  # define_flags defines a name once per process, from whichever model comes first (the
  # tests, tools that load several models), and absl parses it with that definition: each
  # model then sets its own default and checks its own ranges, but a kind or an enum's
  # choices cannot differ.
  def parser(flag):
    return flag.kind, flag.valid if flag.kind == "enum" else None

  first = {}
  for model_name in sorted(registry.MODELS):
    for flag in registry.get(model_name).flags:
      owner, row = first.setdefault(flag.name, (model_name, flag))
      assert parser(flag) == parser(row), (
          "--%s: %s and %s parse it differently" % (flag.name, owner, model_name))


def test_help_lists_the_run_loop_and_model_flags_with_the_npu_file_formats():
  _, out = run_entry("--help")  # absl exits 1 after --help
  for flag in ("--train_epochs", "--train_steps", "--mode", "--tiny_hidden",
               "--profiling_options", "--fusion_switch_file", "--modify_mixlist"):
    assert flag + ":" in out, flag
  _, flag_values = run_loop.parse_flags("tiny", ["--model_dir=/tmp/unused"])
  for flag, keys in (("profiling_options", ('"output"', '"training_trace"')),
                     ("fusion_switch_file", ('"Switch"', '"GraphFusion"', '"UBFusion"')),
                     ("modify_mixlist", ('"black-list"', '"white-list"', '"gray-list"',
                                         '"to-add"', '"to-remove"'))):
    assert all(key in flag_values[flag].help for key in keys), flag_values[flag].help


def glob_events(model_dir):
  return [f for f in os.listdir(model_dir) if f.startswith("events.out.tfevents")]


@pytest.mark.parametrize("args,message", [
    (["--mode=eval"], "no checkpoint in --model_dir"),
    (["--precision_mode=fp16"], "--precision_mode=fp16 is not valid"),
    (["--precision_mode=force_fp16", "--modify_mixlist=ops.json"], "--modify_mixlist needs"),
    (["--mix_compile_mode", "--iterations_per_loop=5"], "--mix_compile_mode needs"),
    (["--enable_dump", "--dump_path=/tmp", "--dump_step=a|b"], "--dump_step='a|b'"),
    (["--fusion_switch_file=/no/such.cfg"], "/no/such.cfg does not exist"),
    (["--device=npu"], "npu_bridge" if backend_lib.TF1 else "npu_device"),
    (["--loss_scale=0.5"], "--loss_scale=0.5"),
    (["--op_compiler_cache_mode=always"], "--op_compiler_cache_mode=always is not one of"),
    (["--checkpoint_path=/no/ckpt", "--mode=eval"], "--checkpoint_path=/no/ckpt"),
    (["--train_steps=5", "--train_epochs=1"],
     "--train_steps=5 and --train_epochs=1 both set the training length; give one"),
    (["--train_epochs=0"], "--train_epochs=0.0 must be > 0"),
])
def test_bad_input_exits_before_any_graph(tmp_path, args, message):
  model_dir = tmp_path / "run"
  code, out = run_entry("--model_dir=" + str(model_dir), *args)
  assert code != 0
  error_lines = [l for l in out.splitlines() if l.startswith("error: ")]
  assert len(error_lines) == 1 and message in error_lines[0], out[-2000:]
  assert not model_dir.exists(), "work started anyway"


def test_bad_rank_table_is_rejected(tmp_path):
  table = tmp_path / "rank_table.json"
  table.write_text('{"server_count": "1"')
  code, out = run_entry("--model_dir=" + str(tmp_path / "run"),
                        env={"RANK_TABLE_FILE": str(table), "RANK_SIZE": "2"})
  assert code != 0 and "RANK_TABLE_FILE: %s is not valid JSON" % table in out


def test_npu_run_builds_npu_run_config_and_estimator(tmp_path, npu_double, monkeypatch):
  """With the npu_bridge double, the run loop builds NPURunConfig + NPUEstimator."""
  fusion = tmp_path / "fusion.cfg"
  fusion.write_text('{"Switch": {"GraphFusion": {"ALL": "off"}}}')
  runner = run_loop.prepare("tiny", [
      "--model_dir=" + str(tmp_path / "run"), "--mode=train", "--train_steps=5",
      "--precision_mode=allow_fp32_to_fp16", "--fusion_switch_file=" + str(fusion),
      "--iterations_per_loop=5", "--device=npu"])
  import importlib  # pylint: disable=g-import-not-at-top
  npu_config = importlib.import_module("npu_bridge.estimator.npu.npu_config")
  npu_estimator = importlib.import_module("npu_bridge.estimator.npu.npu_estimator")
  assert isinstance(runner.estimator, npu_estimator.NPUEstimator)
  config = runner.estimator.config
  assert isinstance(config, npu_config.NPURunConfig)
  assert config._precision_mode == "allow_fp32_to_fp16"
  assert config._fusion_switch_file == str(fusion)
  assert config.iterations_per_loop == 5 and config._dump_config is None
  assert runner.config.loss_scale == "dynamic"
  metrics = runner.run()
  assert metrics["global_step"] == 5


def test_predict_writes_json_lines(tmp_path):
  model_dir = str(tmp_path / "run")
  assert run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=5")[0] == 0
  code, out = run_entry("--model_dir=" + model_dir, "--mode=predict")
  assert code == 0, out
  metrics = final_metrics(out)
  with open(metrics["predictions_file"]) as f:
    rows = [json.loads(l) for l in f]
  assert len(rows) == metrics["predictions"] == 256
  assert set(rows[0]) == {"classes", "probabilities"}


def test_continuous_eval_stops_after_timeout(tmp_path):
  model_dir = str(tmp_path / "run")
  assert run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=5")[0] == 0
  start = time.time()
  code, out = run_entry("--model_dir=" + model_dir, "--mode=continuous_eval",
                        "--train_steps=100", "--eval_timeout=2")
  assert code == 0, out
  assert final_metrics(out)["global_step"] == 5
  assert time.time() - start < 120


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
  model_dir = str(tmp_path / "run")
  args = [sys.executable, "-m", "tests.tiny_entry", "--model_dir=" + model_dir,
          "--mode=train", "--train_steps=1000000", "--save_checkpoints_steps=50",
          "--tiny_learning_rate=0.01"]
  proc = subprocess.Popen(args, cwd=conftest.REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 180
    while time.time() < deadline and not _checkpoint_step(model_dir):
      time.sleep(0.5)
    time.sleep(1.0)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed_at = _checkpoint_step(model_dir)
  assert killed_at >= 50, "no checkpoint before the kill"
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train",
                        "--train_steps=%d" % (killed_at + 10))
  assert code == 0, out
  assert "Restoring parameters from" in out
  assert final_metrics(out)["global_step"] == killed_at + 10


def _checkpoint_step(model_dir):
  latest = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
  return int(latest.rsplit("-", 1)[1]) if latest else 0


# --- stops, concurrent runs ---

def _start(tmp_path, name, *args):
  """Starts the tiny model's entry script in the background; returns (process, log path)."""
  log = tmp_path / (name + ".log")
  process = subprocess.Popen(
      [sys.executable, "-m", "tests.tiny_entry", "--tiny_examples=4096",
       "--log_step_count_steps=10"] + list(args),
      cwd=conftest.REPO, stdout=open(str(log), "w"), stderr=subprocess.STDOUT)
  return process, log


def _wait_for(log, text, process, timeout=180):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if text in log.read_text():
      return
    assert process.poll() is None, log.read_text()[-3000:]
    time.sleep(0.2)
  raise AssertionError("%r not logged in %d s" % (text, timeout))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_saves_its_step_and_resumes_from_it(tmp_path, signum):
  model_dir = str(tmp_path / "run")
  process, log = _start(tmp_path, "first", "--model_dir=" + model_dir, "--mode=train",
                        "--train_steps=1000000", "--save_checkpoints_steps=1000000")
  _wait_for(log, "step = 11", process)
  process.send_signal(signum)
  assert process.wait(timeout=120) == 128 + signum
  metrics = final_metrics(log.read_text())
  assert metrics["interrupted"] == signal.Signals(signum).name
  stopped_at = metrics["global_step"]
  assert stopped_at > 10
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-%d" % stopped_at)
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train",
                        "--train_steps=%d" % (stopped_at + 5))
  assert code == 0, out
  assert "Restoring parameters from %s/model.ckpt-%d" % (model_dir, stopped_at) in out
  assert final_metrics(out)["global_step"] == stopped_at + 5


def test_a_second_trainer_in_the_same_model_dir_is_refused(tmp_path):
  model_dir = str(tmp_path / "run")
  first, log = _start(tmp_path, "first", "--model_dir=" + model_dir, "--mode=train",
                      "--train_steps=1000000", "--save_checkpoints_steps=1000000")
  try:
    _wait_for(log, "Saving checkpoints for 0", first)
    code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=50")
    assert code != 0
    errors = [l for l in out.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and re.match(
        r"error: --model_dir=%s is being trained by process %d on \S+ \(since [0-9T:-]+\); "
        r"use another --model_dir, or stop that run first \(evaluation may run alongside\)$"
        % (re.escape(model_dir), first.pid), errors[0]), out[-3000:]
    code, out = run_entry("--model_dir=" + model_dir, "--mode=eval")
    assert code == 0, out[-3000:]
  finally:
    first.kill()  # SIGKILL: its lock file stays behind, the kernel frees the lock
    first.wait(timeout=120)
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=1")
  assert code == 0, out
  assert "taking over the training lock of process %d" % first.pid in out


def test_signals_stop_a_waiting_continuous_eval_as_usual(tmp_path):
  model_dir = str(tmp_path / "run")
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=5")
  assert code == 0, out
  process, log = _start(tmp_path, "eval", "--model_dir=" + model_dir,
                        "--mode=continuous_eval", "--train_steps=100")
  _wait_for(log, "Saving dict for global step 5", process)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=60) == -signal.SIGTERM, "only training stops gracefully"


# --- Checkpoints under fault: corrupt, of another configuration, NaN; disk and folders --

def only_error_line(out):
  errors = [l for l in out.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
  return errors[0]


def truncate(path, keep_fraction=0.5):
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * keep_fraction))


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
  """A model_dir with checkpoints 0, 20 and 40 (copied per test)."""
  model_dir = str(tmp_path_factory.mktemp("trained") / "run")
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=40",
                        "--save_checkpoints_steps=20")
  assert code == 0, out
  return model_dir


def corrupted_copy(three_checkpoints, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / "run")
  shutil.copytree(three_checkpoints, model_dir)
  with open(os.path.join(model_dir, "checkpoint")) as f:  # paths are absolute: retarget
    state = f.read().replace(three_checkpoints, model_dir)
  with open(os.path.join(model_dir, "checkpoint"), "w") as f:
    f.write(state)
  truncate(os.path.join(model_dir, "model.ckpt-40.data-00000-of-00001"))
  return model_dir


def test_eval_falls_back_from_a_corrupt_newest_checkpoint(three_checkpoints, tmp_path):
  model_dir = corrupted_copy(three_checkpoints, tmp_path)
  code, out = run_entry("--model_dir=" + model_dir, "--mode=eval")
  assert code == 0, out[-3000:]
  assert "checkpoint %s/model.ckpt-40 is corrupt" % model_dir in out
  assert final_metrics(out)["global_step"] == 20

  code, out = run_entry("--model_dir=" + model_dir, "--mode=eval",
                        "--checkpoint_path=%s/model.ckpt-40" % model_dir)
  assert code != 0
  assert only_error_line(out).startswith(
      "error: --checkpoint_path: checkpoint %s/model.ckpt-40 is corrupt: " % model_dir)


def test_continuous_eval_falls_back_from_a_corrupt_newest_checkpoint(three_checkpoints,
                                                                     tmp_path):
  model_dir = corrupted_copy(three_checkpoints, tmp_path)
  code, out = run_entry("--model_dir=" + model_dir, "--mode=continuous_eval",
                        "--train_steps=40", "--eval_timeout=2")
  assert code == 0, out[-3000:]
  assert ("checkpoint %s/model.ckpt-40 is corrupt" % model_dir in out and
          "evaluating the newest intact checkpoint instead" in out)
  assert final_metrics(out)["global_step"] == 20


def test_training_resumes_from_the_newest_intact_checkpoint(three_checkpoints, tmp_path):
  model_dir = corrupted_copy(three_checkpoints, tmp_path)
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=50")
  assert code == 0, out[-3000:]
  assert "Restoring parameters from %s/model.ckpt-20" % model_dir in out
  assert final_metrics(out)["global_step"] == 50
  assert sorted(os.listdir(os.path.join(model_dir, "corrupt"))) == [
      "model.ckpt-40.data-00000-of-00001", "model.ckpt-40.index", "model.ckpt-40.meta"]


def test_a_checkpoint_of_another_configuration_names_the_flag(three_checkpoints, tmp_path):
  model_dir = three_checkpoints
  for mode in ("train", "eval"):
    code, out = run_entry("--model_dir=" + model_dir, "--mode=" + mode, "--train_steps=60",
                          "--tiny_hidden=8")
    assert code != 0
    assert only_error_line(out) == (
        "error: checkpoint %s/model.ckpt-40 was written by another configuration: variable "
        "hidden/kernel is [8, 16] there and [8, 8] here; flags that differ from the run that "
        "wrote it: --tiny_hidden=16 (now 8)" % model_dir)
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-40")


@pytest.mark.parametrize("save_every", [1, 1000])
def test_divergence_stops_with_the_step_and_never_saves_nan(tmp_path, save_every):
  """lr=NaN: the first update makes every weight NaN; the step-1 save (save_every=1) or
  the step-2 loss (no save in between) stops the run; model.ckpt-0 stays the newest."""
  model_dir = str(tmp_path / "run")
  code, out = run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=10",
                        "--tiny_learning_rate=nan",
                        "--save_checkpoints_steps=%d" % save_every)
  assert code != 0
  line = only_error_line(out)
  assert line.startswith("error: training diverged: "), line
  assert re.search(r"at step \d", line), line
  newest = tf.train.latest_checkpoint(model_dir)
  assert newest.endswith("model.ckpt-0")
  reader = tf.train.NewCheckpointReader(newest)
  assert all(np.all(np.isfinite(reader.get_tensor(name)))
             for name in reader.get_variable_to_shape_map())


def test_labels_outside_the_classes_name_the_data(tmp_path):
  code, out = run_entry("--model_dir=" + str(tmp_path / "run"), "--mode=train",
                        "--train_steps=5", "--tiny_label_shift=3")
  assert code != 0
  assert re.match(r"error: --data_dir=None holds label [4-6], outside the model's 4 classes "
                  r"\[0, 4\)$", only_error_line(out))


@pytest.mark.parametrize("flag", ["model_dir", "predictions_file"])
def test_unwritable_folders_are_refused_before_any_work(tmp_path, flag):
  model_dir = str(tmp_path / "run")
  if flag == "predictions_file":
    assert run_entry("--model_dir=" + model_dir, "--mode=train", "--train_steps=1")[0] == 0
  args = {"model_dir": ["--model_dir=/proc/no_such/run"],
          "predictions_file": ["--model_dir=" + model_dir, "--mode=predict",
                               "--predictions_file=/proc/no_such/p.jsonl"]}[flag]
  code, out = run_entry(*args)
  assert code != 0
  assert only_error_line(out).startswith("error: --%s: cannot write in /proc/no_such" % flag)


def test_a_full_disk_is_named_and_leaves_no_partial_checkpoint(tmp_path):
  model_dir = tmp_path / "run"
  partial = model_dir / "model.ckpt-7_temp_0123abcd"
  partial.mkdir(parents=True)
  (partial / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 10)
  partial_meta = model_dir / "model.ckpt-7.meta.tmp9306a7b582f44243b1a5b572806147f4"
  partial_meta.write_bytes(b"x" * 10)
  flag_values = argparse.Namespace(model_dir=str(model_dir), data_dir=None)

  def fill_disk():
    raise tf.errors.ResourceExhaustedError(None, None, "%s/model.ckpt-7_temp_0123abcd; No "
                                           "space left on device" % model_dir)

  with pytest.raises(run_loop.DiskFullError, match="no space left on the device of "
                     "--model_dir=%s; partial checkpoint files removed" % model_dir):
    run_loop.run_reading(None, fill_disk, flag_values)
  assert not partial.exists() and not partial_meta.exists()
