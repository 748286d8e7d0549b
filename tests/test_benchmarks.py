"""Benchmark scripts run end to end on a tiny budget and print the JSON they promise."""
import argparse
import collections
import json
import math
import os
import subprocess
import sys

import pytest

from input_fns import fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tiny_protoattend_benchmark(shared_data, tmp_path, *flags):
  """benchmarks/protoattend.py on real Fashion-MNIST with a tiny network and budget (6
  steps, 2 of warm-up, an evaluation every 3); skips the test when the data is missing."""
  data_dir = os.path.join(shared_data, "fashion_mnist")
  if not fashion_mnist.has_idx_files(data_dir):
    pytest.skip("Fashion-MNIST IDX files not found in " + data_dir)
  command = [sys.executable, os.path.join(REPO, "benchmarks", "protoattend.py"),
             "--max_steps=6", "--eval_every_steps=3", "--warmup_steps=2",
             "--data_dir=%s" % data_dir, "--tfrecord_dir=%s" % (tmp_path / "tfrecords"),
             "--resnet_depth=8", "--train_batch_size=16", "--eval_batch_size=100",
             "--eval_steps=1", "--eval_cand_size=32"] + list(flags)
  return subprocess.run(command, cwd=str(tmp_path), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, universal_newlines=True, timeout=600)


@pytest.mark.slow
def test_protoattend_benchmark_prints_its_curve(shared_data, tmp_path):
  output = tmp_path / "bench.json"
  completed = run_tiny_protoattend_benchmark(shared_data, tmp_path, "--output=%s" % output,
                                             "--input_batches=5")
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
  assert (params["lr_schedule"], params["warmup_steps"]) == ("cosine", 2)
  assert (params["decoupled_weight_decay"], params["weight_decay"]) == (True, 0.05)
  assert printed["curve"][0]["learning_rate"] == pytest.approx(
      1e-3 * (1 + math.cos(math.pi * 3 / 6)) / 2)
  assert printed["settings"]["final_learning_rate"] == 0.0
  assert printed["data"]["eval_examples_per_evaluation"] == 100
  assert printed["timing"]["input_pipeline_examples_per_sec"] > 0
  assert printed["matmul_peak_gflops"]["float32"] > 0
  best = printed["best_accuracy_prototypes"]["accuracy_prototypes"]
  assert printed["comparison"]["best_accuracy_prototypes"] == {
      "issue_16_before": round(best / 0.9306, 3) if best else None,
      "target": round(best / 0.9381, 3) if best else None}


@pytest.mark.slow
def test_protoattend_benchmark_resumes_a_stopped_run(shared_data, tmp_path):
  model_dir = tmp_path / "model"

  def bench(*extra):
    return run_tiny_protoattend_benchmark(shared_data, tmp_path, "--model_dir=%s" % model_dir,
                                          "--input_batches=0", *extra)

  stopped = bench("--max_minutes=0.00001")  # the time budget ends after the first step
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  first = json.loads(stopped.stdout.strip().splitlines()[-1])
  assert first["stopped_by"] == "max_minutes" and first["final"]["global_step"] == 1

  refused = bench()
  assert refused.returncode != 0 and "--resume" in refused.stderr
  other_schedule = bench("--resume", "--max_steps=9")
  assert other_schedule.returncode != 0 and "this run asks for" in other_schedule.stderr

  resumed = bench("--resume")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  printed = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert printed["resumed_at_step"] == 1
  assert [point["global_step"] for point in printed["curve"]] == [1, 4, 6]
  assert printed["stopped_by"] == "max_steps"
  assert printed["timing"]["chunks"] == 3


def test_protoattend_benchmark_fits_the_run_into_its_minutes():
  from benchmarks import protoattend  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(max_minutes=10.0, eval_every_steps=1000, eval_every_minutes=0.0)
  totals = collections.Counter(train_wall=60.0, steps=500, chunks=1, graph_build=4.0,
                               session_setup_and_restore=3.0, first_step=2.0,
                               final_checkpoint_save=1.0)
  # 499 steps in the 50 s besides the chunk's 10 s fixed cost: 9.98 steps/s. Of the 540 s
  # left, 97 % (523.8 s) hold 4.75 more chunks of 1000 / 9.98 + 10 s: 5 fixed costs.
  assert protoattend.fit_max_steps(args, totals, 500) == 500 + int(9.98 * (523.8 - 50.0))
  # Fast steps, costly chunks (a tiny network): 10 steps/s; the 571.33 s left hold 28.6
  # chunks of 100 steps (10 s) + 10 s fixed cost. Counting the chunks as if steps filled
  # the time (58 chunks, 580 s of fixed costs) left no step at all.
  fast = dict(totals, train_wall=11.0, steps=11)
  fast_args = argparse.Namespace(max_minutes=10.0, eval_every_steps=100, eval_every_minutes=0.0)
  assert protoattend.fit_max_steps(fast_args, fast, 11) == 11 + int(10.0 * (571.33 - 290.0))
  args.eval_every_minutes = 0.5  # 18 chunks of half a minute
  assert protoattend.fit_max_steps(args, totals, 500) == 500 + int(9.98 * (523.8 - 180.0))
  args.max_minutes = 1.1  # 5.8 s left: less than the fixed cost of another chunk
  assert protoattend.fit_max_steps(args, totals, 500) == 500
  with pytest.raises(SystemExit, match="too short to time"):
    protoattend.fit_max_steps(args, dict(totals, steps=1), 1)


@pytest.mark.slow
def test_protoattend_benchmark_fits_its_length_after_the_warmup(shared_data, tmp_path):
  refused = run_tiny_protoattend_benchmark(shared_data, tmp_path, "--max_steps=0",
                                           "--warmup_steps=0")
  assert refused.returncode != 0 and "give --warmup_steps > 0" in refused.stderr
  # Out of time in the warm-up: reported as such, not refitted to the step reached.
  cut = run_tiny_protoattend_benchmark(shared_data, tmp_path, "--max_steps=0",
                                       "--max_minutes=0.00001", "--input_batches=0")
  assert cut.returncode == 0, cut.stderr[-3000:]
  assert json.loads(cut.stdout.strip().splitlines()[-1])["stopped_by"] == "max_minutes"
  fitted_run = ("--max_steps=0", "--warmup_steps=20", "--max_minutes=0.5",
                "--eval_every_steps=150", "--input_batches=0",
                "--model_dir=%s" % (tmp_path / "model"))
  completed = run_tiny_protoattend_benchmark(shared_data, tmp_path, *fitted_run)
  assert completed.returncode == 0, completed.stderr[-3000:]
  printed = json.loads(completed.stdout.strip().splitlines()[-1])
  settings = printed["settings"]
  assert settings["max_steps_source"] == "fitted to max_minutes"
  assert settings["model_params"]["train_steps"] == settings["max_steps"] > 20
  assert printed["curve"][0]["global_step"] == 20  # the warm-up chunk
  assert printed["curve"][0]["learning_rate"] == pytest.approx(1e-3)
  # The length is fitted again after every chunk that leaves training to do.
  curve = printed["curve"]
  assert len(curve) >= 3, curve
  assert all("fitted_max_steps" in point for point in curve[:-1])
  assert settings["max_steps"] == (curve[-1].get("fitted_max_steps")
                                   or curve[-2]["fitted_max_steps"])
  assert curve[-1]["global_step"] <= settings["max_steps"]

  # Resumed, the run keeps the length last fitted (nothing is left to train).
  resumed = run_tiny_protoattend_benchmark(shared_data, tmp_path, "--resume", *fitted_run)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  again = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert again["settings"]["max_steps"] == settings["max_steps"]
  assert again["curve"] == printed["curve"]


def _node(name, label, micros):
  from tensorflow.core.framework import step_stats_pb2  # pylint: disable=g-import-not-at-top
  return step_stats_pb2.NodeExecStats(node_name=name, timeline_label=label,
                                      all_end_rel_micros=micros)


def test_profile_attributes_traced_time_to_op_types_and_parts_of_the_step():
  from benchmarks import profile_amoeba_net  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import step_stats_pb2  # pylint: disable=g-import-not-at-top
  nodes = [
      ("cell_0/conv/Conv2D", "cell_0/conv/Conv2D = _FusedConv2D(x, w)", 4000),
      ("gradients/cell_0/conv/Conv2D_grad/Conv2DBackpropFilter",
       "gradients/cell_0/conv/Conv2D_grad/Conv2DBackpropFilter = Conv2DBackpropFilter(a)",
       3000),
      ("RMSProp/update_w/ApplyRMSProp", "RMSProp/update_w/ApplyRMSProp = ApplyRMSProp(w)", 1000),
      ("moving_average/AssignSub", "moving_average/AssignSub = AssignSub(s, d)", 1000),
      ("IteratorGetNext", "IteratorGetNext = IteratorGetNext(it)", 500),
      ("losses/total_loss_1", "losses/total_loss_1 = ScalarSummary(t, v)", 300),
      ("global_step/add", "global_step/add = AddV2(s, one)", 100),
      ("_SOURCE", "", 100)]
  step = step_stats_pb2.StepStats()
  step.dev_stats.add(device="/job:localhost/replica:0/task:0/device:CPU:0").node_stats.extend(
      [_node(*row) for row in nodes])
  step.dev_stats.add(device="/host:CPU").node_stats.extend(  # the host tracer's copy
      [_node("cell_0/conv/Conv2D:_FusedConv2D", "id=2,device=CPU:0,async=false", 4000)])
  result = profile_amoeba_net.aggregate([step, step])  # two identical steps: per-step = one
  assert result["op_seconds_per_step"] == 0.01
  parts = {row["name"]: row["op_seconds_per_step"] for row in result["parts"]}
  assert parts == {"forward": 0.004, "backward": 0.003, "optimizer": 0.001, "ema": 0.001,
                   "input": 0.0005, "summaries": 0.0003, "step_counter": 0.0001,
                   "runtime": 0.0001}
  types = {row["name"]: row for row in result["op_types"]}
  assert types["_FusedConv2D"]["share"] == 0.4 and types["_FusedConv2D"]["nodes_per_step"] == 1
  assert types["(runtime)"]["op_seconds_per_step"] == 0.0001
  assert result["op_types"][0]["name"] == "_FusedConv2D"  # largest first
  assert result["nodes"][1] == {"name": nodes[1][0], "op_seconds_per_step": 0.003,
                                "share": 0.3}


def test_amoeba_benchmark_reports_ratios_to_the_previous_run_the_issue_and_the_peak():
  from benchmarks import amoeba_net  # pylint: disable=g-import-not-at-top
  result = {"stack": "tf1", "matmul_peak_gflops": {"float32": 200.0, "bfloat16": None},
            "configs": {"full": {"train_images_per_sec": 2.8, "eval_images_per_sec": 15.0,
                                 "peak_rss_mb_after_train": 3481.6},
                        "small": {"error": "exit 1"}}}
  previous = {"configs": {"full": {"train_images_per_sec": 2.0}}}
  amoeba_net.add_comparisons(result, previous)
  comparison = result["configs"]["full"]["comparison"]
  assert comparison["train_images_per_sec"]["previous_run"] == 1.4
  assert comparison["train_images_per_sec"]["reference"] == [round(2.8 / 2.32, 3),
                                                             round(2.8 / 2.09, 3)]
  assert comparison["train_images_per_sec"]["target"] == [1.0, 1.0]
  assert comparison["peak_rss_mb_after_train"]["reference"] == [1.0, 1.0]
  assert "previous_run" not in comparison["eval_images_per_sec"]
  assert comparison["images_per_sec_per_peak_tflops"]["train_images_per_sec"] == 14.0
  assert "comparison" not in result["configs"]["small"]


def test_amoeba_benchmark_passes_run_loop_flags_after_the_separator():
  from benchmarks import amoeba_net  # pylint: disable=g-import-not-at-top
  args = amoeba_net.parse_args(["--child=full", "--configs=full", "--input_batches=0", "--",
                                "--inter_op_threads=1", "--intra_op_threads=2"])
  assert args.child == "full" and args.configs == ["full"]
  assert args.run_loop_flags == ["--inter_op_threads=1", "--intra_op_threads=2"]
  with pytest.raises(SystemExit):
    amoeba_net.parse_args(["--previous=/nonexistent/run.json"])
