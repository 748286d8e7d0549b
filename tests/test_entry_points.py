"""Entry scripts end to end on small real data (sklearn digits); the ModelZoo launch scripts
are tested in test_launchers.py."""
import os
import shutil
import subprocess
import sys

from tests import conftest

TINY_AMOEBA = ["--num_cells=3", "--reduction_size=8", "--stem_reduction_size=8",
               "--image_size=32", "--num_label_classes=11", "--num_train_images=1438",
               "--num_eval_images=359", "--train_batch_size=16", "--eval_batch_size=40",
               "--use_aux_head=false", "--optimizer=momentum", "--lr=0.1"]


def run(cmd, env=None, timeout=600):
  proc = subprocess.run(cmd, cwd=conftest.REPO, env=dict(os.environ, **(env or {})),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
  return proc.returncode, proc.stdout.decode("utf-8", "replace")


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
