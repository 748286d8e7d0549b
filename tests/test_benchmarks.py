"""Benchmark scripts run end to end on a tiny budget and print the JSON they promise."""
import json
import os
import subprocess
import sys

import pytest

from input_fns import fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_protoattend_benchmark_prints_its_curve(shared_data, tmp_path):
  data_dir = os.path.join(shared_data, "fashion_mnist")
  if not fashion_mnist.has_idx_files(data_dir):
    pytest.skip("Fashion-MNIST IDX files not found in " + data_dir)
  output = tmp_path / "bench.json"
  command = [sys.executable, os.path.join(REPO, "benchmarks", "protoattend.py"),
             "--max_steps=6", "--eval_every_steps=3", "--output=%s" % output,
             "--data_dir=%s" % data_dir, "--tfrecord_dir=%s" % (tmp_path / "tfrecords"),
             "--resnet_depth=8", "--train_batch_size=16", "--eval_batch_size=100",
             "--eval_steps=1", "--eval_cand_size=32", "--input_batches=5"]
  completed = subprocess.run(command, cwd=str(tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  printed = json.loads(completed.stdout.strip().splitlines()[-1])
  assert json.loads(output.read_text()) == printed

  assert [point["global_step"] for point in printed["curve"]] == [3, 6]
  assert printed["stopped_by"] == "max_steps"
  for point in printed["curve"]:
    assert 0.0 <= point["accuracy_prototypes"] <= 1.0
    assert 0.0 <= point["ood_auroc"] <= 1.0
    assert point["train_wall_seconds"] <= point["total_wall_seconds"]
  assert printed["best_accuracy_prototypes"]["accuracy_prototypes"] == max(
      point["accuracy_prototypes"] for point in printed["curve"])
  params = printed["settings"]["model_params"]
  assert params["resnet_depth"] == 8
  assert params["in_batch_candidates"] is True
  assert params["decay_every"] == 1  # max_steps / 50, at least 1
  assert printed["data"]["eval_examples_per_evaluation"] == 100
  assert printed["timing"]["input_pipeline_examples_per_sec"] > 0
