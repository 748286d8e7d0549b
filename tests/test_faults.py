"""Faults users meet, end to end on every model (slow tier: real data, real processes).

For each of the five models, on small real data: training is SIGKILLed at a random moment,
leaving an intact newest checkpoint;
then SIGTERM stops it with a checkpoint at the step under way; the run then resumes to
its end. For one model: a corrupt newest checkpoint, a second trainer, a full disk.
The random moments come from a seeded generator; a failure prints the seed and moment.
"""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import tensorflow.compat.v1 as tf

from estimators import checkpoints
from estimators import run_loop
from tests import conftest

pytestmark = pytest.mark.slow

TRAIN_STEPS = 400  # more than any model reaches between the interruptions below
KILLS_PER_MODEL = 1  # per model, per CI run; the seeded moments differ per model
SEED = 20261201


@pytest.fixture(scope="module")
def model_args(tmp_path_factory, digits_dir):
  """{model: entry script and flags of a small run on real data}."""
  data = conftest.data_root()
  if not os.path.isdir(data):
    pytest.skip("real data not found at %s (set DATA_ROOT)" % data)
  tfrecords = str(tmp_path_factory.mktemp("fashion_mnist_tfrecords"))
  return {
      "amoeba_net": ["amoeba_net.py", "--data_dir=" + digits_dir, "--num_cells=3",
                     "--reduction_size=8", "--stem_reduction_size=8", "--image_size=32",
                     "--num_label_classes=11", "--num_train_images=1438",
                     "--num_eval_images=359", "--train_batch_size=16",
                     "--use_aux_head=false", "--optimizer=momentum", "--lr=0.1"],
      "protoattend": ["protoattend.py", "--data_dir=" + os.path.join(data, "fashion_mnist"),
                      "--tfrecord_dir=" + tfrecords, "--resnet_depth=8", "--final_units=32",
                      "--val_dim=16", "--example_cand_size=64", "--eval_cand_size=64",
                      "--train_batch_size=32", "--ood_eval=false"],
      "masf": ["masf.py", "--dataroot=" + os.path.join(data, "pacs"), "--image_size=64",
               "--fc_units=32", "--meta_batch_size=6", "--cache_decoded_images=false"],
      "vit": ["vit.py", "--dataset=image_folder", "--data_dir=" + digits_dir,
              "--vit_model=Ti/16", "--image_size=32", "--warmup_steps=0",
              "--train_batch_size=4"],
      "bit": ["bit.py", "--dataset=image_folder", "--data_dir=" + digits_dir,
              "--hyperrule=false", "--image_size=32", "--resize_size=36",
              "--warmup_steps=0", "--train_batch_size=4"],
  }


def _start(args, model_dir, log_path, *extra):
  log = open(str(log_path), "wb")
  return subprocess.Popen(
      [sys.executable] + args + ["--model_dir=" + model_dir, "--mode=train",
                                 "--train_steps=%d" % TRAIN_STEPS, "--log_step_count_steps=1",
                                 "--save_checkpoints_steps=2", "--keep_checkpoint_max=3"] +
      list(extra), cwd=conftest.REPO, stdout=log, stderr=subprocess.STDOUT)


def _wait_for(process, log_path, text, timeout=600):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if text in log_path.read_text(errors="replace"):
      return
    assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
    time.sleep(0.1)
  raise AssertionError("%r not logged within %d s" % (text, timeout))


def _final_metrics(log_path):
  lines = [l for l in log_path.read_text(errors="replace").splitlines()
           if l.startswith(run_loop.FINAL_METRICS_PREFIX)]
  assert len(lines) == 1, log_path.read_text(errors="replace")[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  return json.loads(lines[0][len(run_loop.FINAL_METRICS_PREFIX):])


def _newest_is_intact(model_dir):
  newest = tf.train.latest_checkpoint(model_dir)
  assert newest, "no checkpoint in %s" % model_dir
  checkpoints.verify(newest)
  return int(newest.rsplit("-", 1)[1])


@pytest.mark.parametrize("model", ["amoeba_net", "protoattend", "masf", "vit", "bit"])
def test_killed_and_stopped_training_resumes_without_loss(model, model_args, tmp_path):
  rng = random.Random("%s-%s" % (SEED, model))
  model_dir = str(tmp_path / "run")
  reached = 0
  for kill in range(KILLS_PER_MODEL):
    log = tmp_path / ("kill%d.log" % kill)
    process = _start(model_args[model], model_dir, log)
    _wait_for(process, log, "Saving checkpoints for %d " % (reached + 2))
    moment = rng.uniform(0.0, 3.0)
    time.sleep(moment)
    process.kill()
    process.wait(timeout=60)
    step = _newest_is_intact(model_dir)
    assert step >= reached + 2, "kill %d at +%.2fs (seed %s)" % (kill, moment, SEED)
    reached = step

  log = tmp_path / "sigterm.log"
  process = _start(model_args[model], model_dir, log)
  _wait_for(process, log, "Restoring parameters from %s/model.ckpt-%d" % (model_dir, reached))
  _wait_for(process, log, "Saving checkpoints for %d " % (reached + 2))
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=300) == 128 + signal.SIGTERM, log.read_text()[-3000:]
  stopped = _final_metrics(log)
  assert stopped["interrupted"] == "SIGTERM"
  assert _newest_is_intact(model_dir) == stopped["global_step"] >= reached + 2

  log = tmp_path / "resume.log"
  process = _start(model_args[model], model_dir, log,
                   "--train_steps=%d" % (stopped["global_step"] + 3))
  assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
  assert "Restoring parameters from %s/model.ckpt-%d" % (
      model_dir, stopped["global_step"]) in log.read_text()
  assert _final_metrics(log)["global_step"] == stopped["global_step"] + 3


def test_corrupt_newest_checkpoint_and_a_second_trainer(model_args, tmp_path):
  args, model_dir = model_args["protoattend"], str(tmp_path / "run")
  log = tmp_path / "first.log"
  first = _start(args, model_dir, log)
  try:
    _wait_for(first, log, "Saving checkpoints for 6 ")
    second_log = tmp_path / "second.log"
    second = _start(args, model_dir, second_log)
    assert second.wait(timeout=300) != 0
    assert "is being trained by process %d" % first.pid in second_log.read_text()
  finally:
    first.kill()
    first.wait(timeout=60)
  newest = tf.train.latest_checkpoint(model_dir)
  data_file = newest + ".data-00000-of-00001"
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  log = tmp_path / "resume.log"
  process = _start(args, model_dir, log, "--train_steps=%d" % (int(newest.split("-")[-1]) + 2))
  assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
  text = log.read_text()
  assert "checkpoint %s is corrupt" % newest in text
  assert "resuming from %s" % model_dir in text
  assert os.path.exists(os.path.join(model_dir, "corrupt", os.path.basename(data_file)))


def test_a_full_disk_is_one_line_and_leaves_the_newest_checkpoint_intact(tmp_path):
  mount_point = tmp_path / "small_disk"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                            str(mount_point)], stderr=subprocess.PIPE)
  if mounted.returncode != 0:
    pytest.skip("cannot mount a small tmpfs here (%s)"
                % mounted.stderr.decode(errors="replace").strip())
  try:
    model_dir = str(mount_point / "run")
    process = subprocess.run(
        [sys.executable, "-m", "tests.tiny_entry", "--model_dir=" + model_dir,
         "--mode=train", "--train_steps=100000", "--save_checkpoints_steps=1",
         "--keep_checkpoint_max=100000"], cwd=conftest.REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=600)
    out = process.stdout.decode("utf-8", "replace")
    assert process.returncode != 0
    errors = [l for l in out.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: no space left on the device of --model_dir=%s; partial checkpoint files "
        "removed" % model_dir), out[-3000:]
    assert not [name for name in os.listdir(model_dir) if "_temp" in name or ".tmp" in name]
    _newest_is_intact(model_dir)
  finally:
    subprocess.run(["umount", str(mount_point)])
