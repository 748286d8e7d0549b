"""The converter's first real customers: unmodified tensorflow/tpu scripts (mnist, resnet,
densenet in ../shared/tpu_corpus) convert, then train and checkpoint on the CPU and on the
NPU adapter's double (NPURunConfig + NPUEstimator through npu_bridge on TF 1.15; the
plain Estimator in npu_device's TF1-compat mode on TF 2.x), with `--use_tpu` left at the
scripts' own default (True). Slow tier; CI runs it on TF 1.15 (all three) and TF 2.15
(densenet needs tf.contrib, which TF 2 does not have)."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import conftest

CORPUS = os.environ.get("TPU_CORPUS", os.path.join(os.path.dirname(conftest.REPO), "shared",
                                                   "tpu_corpus"))
# entry -> (main script, data kind, tiny-run flags from the corpus README)
ENTRIES = {
    "mnist": ("mnist_tpu.py", "mnist", "--batch_size=16 --train_steps=4 --eval_steps=2 "
              "--iterations=2 --num_shards=1 --enable_predict=True", 4),
    "resnet": ("official/resnet/resnet_main.py", "imagenet",
               "--mode=train_and_eval --steps_per_eval=3 --train_steps=3 --resnet_depth=18 "
               "--image_size=64 --train_batch_size=8 --eval_batch_size=8 "
               "--num_train_images=96 --num_eval_images=16 --iterations_per_loop=1 "
               "--num_cores=1 --num_parallel_calls=2", 3),
    "densenet": ("densenet_imagenet.py", "imagenet",
                 "--mode=train --network_depth=121 --train_batch_size=2 --eval_batch_size=2 "
                 "--train_steps=2 --steps_per_checkpoint=2 --iterations_per_loop=1 "
                 "--num_shards=1 --num_files_infeed=2 --shuffle_buffer_size=8", 2),
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  if not os.path.isdir(CORPUS):
    pytest.skip("TPU corpus not found at %s (set TPU_CORPUS)" % CORPUS)
  root = tmp_path_factory.mktemp("tpu_data")
  subprocess.run([sys.executable, os.path.join(CORPUS, "make_tiny_data.py"), str(root),
                  "mnist", "imagenet"], check=True, stdout=subprocess.PIPE)
  return root


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_corpus_converts_and_trains_on_cpu_and_npu_double(entry, tiny_data, tmp_path):
  if entry == "densenet" and not tf.__version__.startswith("1."):
    pytest.skip("densenet imports tf.contrib, which TF 2 does not have")
  main, data, flags, steps = ENTRIES[entry]
  out, rep = tmp_path / "out", tmp_path / "rep"
  args = "--data_dir=%s --model_dir={run}/model %s" % (tiny_data / data, flags)
  process = subprocess.run(
      [sys.executable, "-m", "migration.convert", "-i", os.path.join(CORPUS, entry),
       "-o", str(out), "-r", str(rep), "-m", main, "--verify=" + args],
      cwd=conftest.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      universal_newlines=True, timeout=1500)
  assert process.returncode == 0, process.stdout[-3000:]
  verdicts = [line for line in process.stdout.splitlines() if "trained to step" in line]
  assert len(verdicts) == 2, process.stdout[-3000:]
  assert ("verify (cpu): Estimator + RunConfig on cpu; trained to step %d " % steps
          in verdicts[0])
  npu = ("NPUEstimator + NPURunConfig on npu via npu_bridge" if tf.__version__.startswith("1.")
         else "Estimator + RunConfig on npu via npu_device")
  assert "verify (npu double): %s; trained to step %d " % (npu, steps) in verdicts[1]
  changes = json.loads((rep / "report.json").read_text())["changes"]
  success = (rep / "success_report.txt").read_text().splitlines()
  assert len(success) == len(changes) > 0, "the report names every change"
  assert (rep / "failed_report.txt").read_text() == ""
