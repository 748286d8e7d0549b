"""Entry scripts and ModelZoo launch scripts, end to end on small real data (sklearn digits)."""
import os
import shutil
import subprocess
import sys

import pytest

from tests import conftest

TINY_AMOEBA = ["--num_cells=3", "--reduction_size=8", "--stem_reduction_size=8",
               "--image_size=32", "--num_label_classes=11", "--num_train_images=1438",
               "--num_eval_images=359", "--train_batch_size=16", "--eval_batch_size=40",
               "--use_aux_head=false", "--optimizer=momentum", "--lr=0.1"]


def run(cmd, env=None, timeout=600):
  proc = subprocess.run(cmd, cwd=conftest.REPO, env=dict(os.environ, **(env or {})),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
  return proc.returncode, proc.stdout.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("digits"))
  code, log = run([sys.executable, "tools/make_digits_dataset.py", "--output_dir=" + out,
                   "--image_size=32"])
  assert code == 0, log
  return out


def test_amoeba_net_eval_only_prints_top1_top5_in_new_process(digits_dir, tmp_path):
  model_dir = str(tmp_path / "model")
  code, log = run([sys.executable, "amoeba_net.py", "--mode=train", "--train_steps=6",
                   "--data_dir=" + digits_dir, "--model_dir=" + model_dir] + TINY_AMOEBA)
  assert code == 0, log[-3000:]
  code, log = run([sys.executable, "amoeba_net.py", "--mode=eval", "--data_dir=" + digits_dir,
                   "--model_dir=" + model_dir] + TINY_AMOEBA)
  assert code == 0, log[-3000:]
  assert "AmoebaNet-D eval at global step 6: top-1 " in log and "top-5 " in log
  assert '"top_5_accuracy"' in log.splitlines()[-1]


def test_an_evaluation_over_no_examples_is_an_error(digits_dir, tmp_path):
  model_dir = str(tmp_path / "model")
  code, log = run([sys.executable, "amoeba_net.py", "--mode=train", "--train_steps=1",
                   "--data_dir=" + digits_dir, "--model_dir=" + model_dir] + TINY_AMOEBA)
  assert code == 0, log[-3000:]
  code, log = run([sys.executable, "amoeba_net.py", "--mode=eval", "--eval_steps=1",
                   "--data_dir=" + digits_dir, "--model_dir=" + model_dir] + TINY_AMOEBA +
                  ["--eval_batch_size=400"])
  assert code != 0
  assert "error: the evaluation saw no examples (--eval_batch_size=400, --eval_steps=1)" in log
  assert "Final metrics" not in log and "top-1 0.00%" not in log
  assert not os.path.exists(os.path.join(model_dir, "eval")), "no zeros in TensorBoard"


def test_amoeba_net_without_data_fails_before_any_graph(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  code, log = run([sys.executable, "amoeba_net.py", "--data_dir=%s" % empty,
                   "--model_dir=%s" % (tmp_path / "model")] + TINY_AMOEBA)
  assert code != 0
  assert "error: --data_dir=%s has no training tfrecord shards" % empty in log
  assert not (tmp_path / "model").exists()


def test_corrupt_shard_is_named_and_checkpoints_kept(digits_dir, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(digits_dir, str(data))
  model_dir = tmp_path / "model"
  code, log = run([sys.executable, "amoeba_net.py", "--mode=train", "--train_steps=2",
                   "--data_dir=%s" % data, "--model_dir=%s" % model_dir] + TINY_AMOEBA)
  assert code == 0, log[-3000:]
  before = sorted(os.listdir(str(model_dir)))
  shard = data / "train-00001-of-00002"
  raw = bytearray(shard.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  shard.write_bytes(bytes(raw))
  code, log = run([sys.executable, "amoeba_net.py", "--mode=train", "--train_steps=200",
                   "--data_dir=%s" % data, "--model_dir=%s" % model_dir] + TINY_AMOEBA)
  assert code != 0
  assert "error: corrupt tfrecord file %s" % shard in log, log[-3000:]
  after = set(os.listdir(str(model_dir)))
  assert set(f for f in before if f.startswith("model.ckpt-2")) <= after


@pytest.mark.parametrize("script", ["train_full_1p.sh", "train_performance_1p.sh"])
def test_launch_scripts_print_modelzoo_final_lines(script, digits_dir, tmp_path):
  code, log = run(["bash", "scripts/" + script, "--model=amoeba_net",
                   "--data_path=" + digits_dir, "--output_path=%s" % tmp_path,
                   "--precision_mode=allow_mix_precision", "--batch_size=16",
                   "--train_steps=6", "--over_dump=True", "--"] + TINY_AMOEBA +
                  ["--log_step_count_steps=2"],
                  env={"PYTHON": sys.executable, "ASCEND_DEVICE_ID": "3"})
  assert code == 0, log
  lines = log.splitlines()
  fps = [l for l in lines if l.startswith("Final Performance images/sec : ")]
  assert fps and float(fps[0].split(" : ")[1]) > 0, log
  accuracy = [l for l in lines if l.startswith("Final Train Accuracy : ")]
  assert accuracy and (script == "train_performance_1p.sh") == accuracy[0].endswith("None")
  assert any(l.startswith("E2E Training Duration sec : ") for l in lines)
  train_log = tmp_path / "3" / "train_3.log"
  assert train_log.exists() and "--enable_dump_debug" not in log
  assert "enable_dump_debug: validated; they take effect on the NPU only" in \
      train_log.read_text()


def test_launch_script_help_and_bad_model():
  code, log = run(["bash", "scripts/train_full_1p.sh", "-h"])
  assert code == 0 and "--precision_mode" in log and "--data_dump_step" in log
  code, log = run(["bash", "scripts/train_full_1p.sh", "--model=resnet", "--data_path=."])
  assert code == 2 and "no entry script" in log
