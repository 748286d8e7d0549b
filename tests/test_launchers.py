"""ModelZoo launchers (scripts/train_*_{1p,8p}.sh through modelzoo/<model>/test/) and their
report.

The fast tier stands a tiny script in for the model's training run (PYTHON is a wrapper
that fakes `<repo>/<model>.py` and runs everything else for real), so the launcher's own
logic is tested in seconds; the slow tier trains every model for real through its folder.
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from estimators import registry
from migration import validation
from tests import conftest
from tests.test_entry_points import TINY_AMOEBA
from tests.test_npu_ranks import devices_of
from tests.test_npu_ranks import rank_table
from tests.test_npu_ranks import write_table
from tools import modelzoo_report

MODELZOO = os.path.join(conftest.REPO, "modelzoo")
# What the launchers know (a fresh process); the test model of tests/tiny_model.py registers
# itself in this one.
SHIPPED_MODELS = sorted(registry.MODELS)
SCRIPTS = ("train_full_1p.sh", "train_performance_1p.sh", "train_full_8p.sh",
           "train_performance_8p.sh")
FINAL_LINE = ('Final metrics: {"examples_per_sec": 812.5, "global_step": 6, '
              '"headline_meaning": "top-1 accuracy on the validation split", '
              '"headline_metric": "top_1_accuracy", "mode": "train_and_eval", '
              '"top_1_accuracy": 0.75}')

# Stands in for the training run (python -m estimators MODEL ...): logs where and how it
# ran, with its rank environment and its process ids. The rank $FAKE_FAILING_RANK fails as
# soon as the other ranks' logs (under ./output) show their process ids; the others sleep
# $FAKE_SLEEP seconds (in a child process), print $FAKE_OUTPUT and exit with $FAKE_EXIT.
# Anything else runs for real.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2" = "-m estimators" ]; then
  echo "ran $3 in $PWD"
  echo "rank ${RANK_ID-} of ${RANK_SIZE-} on device ${ASCEND_DEVICE_ID-}," \\
    "table ${RANK_TABLE_FILE-}, job ${JOB_ID-}"
  if [ "${RANK_ID-}" = "${FAKE_FAILING_RANK-}" ]; then
    for _ in $(seq 300); do
      [ "$(cat output/*/train_*_*.log | grep -c '^pids ')" -lt $((RANK_SIZE - 1)) ] || break
      sleep 0.1
    done
    echo "error: rank broke"; exit 3
  fi
  sleep "${FAKE_SLEEP:-0}" &
  echo "pids $$ $!"
  wait
  echo "$FAKE_OUTPUT"; exit "${FAKE_EXIT:-0}"
fi
exec %(python)s "$@"
"""


def launch(model, script, args, cwd, env=None, timeout=900):
  """Runs modelzoo/<model>/test/<script> from `cwd`; returns (exit code, output)."""
  proc = subprocess.run(["bash", os.path.join(MODELZOO, model, "test", script)] + list(args),
                        cwd=str(cwd), env=dict(os.environ, **(env or {})),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
  return proc.returncode, proc.stdout.decode("utf-8", "replace")


@pytest.fixture
def fake_python(tmp_path):
  """Environment for `launch` with the training run faked (see FAKE_PYTHON)."""
  path = tmp_path / "fake_python"
  path.write_text(FAKE_PYTHON % {"python": sys.executable})
  path.chmod(0o755)
  return {"PYTHON": str(path), "FAKE_OUTPUT": FINAL_LINE, "ASCEND_DEVICE_ID": "3"}


def summaries(out_dir):
  """{run kind: summary dict} of the runs in out_dir."""
  found = {}
  for path in sorted(glob.glob(os.path.join(str(out_dir), "train_*_*_*.json"))):
    with open(path) as f:
      summary = json.load(f)
    found[summary["run_kind"]] = summary
  return found


def value_of(log, prefix):
  lines = [l for l in log.splitlines() if l.startswith(prefix + " : ")]
  assert len(lines) == 1, log
  return lines[0].split(" : ", 1)[1]


def test_every_registered_model_has_the_modelzoo_folder():
  for model in SHIPPED_MODELS:
    single_device = registry.get(model).single_device_only
    for script in SCRIPTS:
      link = os.path.join(MODELZOO, model, "test", script)
      if single_device and "_8p" in script:  # MASF: no multi-device scripts
        assert not os.path.lexists(link), link
        continue
      assert os.readlink(link) == "../../../scripts/" + script, link
    configs = os.path.join(MODELZOO, model, "configs")
    validation.check_fusion_switch_file(os.path.join(configs, "fusion_switch.cfg"))
    validation.check_mixlist_file(os.path.join(configs, "ops_info.json"))
    with open(os.path.join(MODELZOO, model, "modelzoo_level.txt")) as f:
      fields = dict(l.split(":", 1) for l in f.read().splitlines() if not l.startswith("#"))
    assert fields == {"FuncStatus": "OK", "PrecisionStatus": "NOK", "PerfStatus": "NOK"}


def test_perf_then_full_from_another_folder_keeps_both_runs(fake_python, tmp_path):
  (tmp_path / "data").mkdir()
  scratch = tmp_path / "output" / "3" / "ckpt_performance"
  scratch.mkdir(parents=True)
  (scratch / "model.ckpt-100.index").write_text("from an earlier run")
  code, log = launch("amoeba_net", "train_performance_1p.sh",
                     ["--data_path", "data", "--train_steps", "6"], tmp_path, fake_python)
  assert code == 0, log
  assert not scratch.exists(), "a performance run starts from scratch"
  assert value_of(log, "Final Performance images/sec") == "812.50"
  assert value_of(log, "Final Train Accuracy") == "not evaluated in a performance run"
  assert int(value_of(log, "E2E Training Duration sec")) >= 0

  out = tmp_path / "output" / "3"
  (out / "ckpt").mkdir()
  (out / "ckpt" / "model.ckpt-6.index").write_text("the full run resumes from here")
  code, log = launch("amoeba_net", "train_full_1p.sh", ["--data_path=data"], tmp_path,
                     fake_python)
  assert code == 0, log
  assert (out / "ckpt" / "model.ckpt-6.index").exists()
  assert value_of(log, "Final Train Accuracy") == "0.7500"
  assert value_of(log, "Accuracy meaning") == "top-1 accuracy on the validation split"

  runs = summaries(out)
  assert set(runs) == {"performance", "full"}
  perf, full = runs["performance"], runs["full"]
  assert perf["python_args"] == ["--data_dir=%s" % (tmp_path / "data"),
                                 "--model_dir=%s" % scratch, "--mode=train",
                                 "--train_steps=6"]
  assert full["python_args"] == ["--data_dir=%s" % (tmp_path / "data"),
                                 "--model_dir=%s" % (out / "ckpt")]
  assert (perf["accuracy"], perf["accuracy_meaning"]) == (None, None)
  assert full["accuracy"] == 0.75 and full["accuracy_metric"] and full["accuracy_meaning"]
  for summary in (perf, full):
    assert summary["model"] == "amoeba_net" and summary["exit_code"] == 0
    assert summary["examples_per_sec"] == 812.5 and summary["global_step"] == 6
    assert summary["duration_sec"] >= 0
    with open(summary["log"]) as f:
      assert "ran amoeba_net in %s" % tmp_path in f.read()
  assert os.readlink(str(out / "train_3.log")) == os.path.basename(full["log"])
  assert os.path.basename(perf["log"]).startswith("train_3_performance_")


def test_a_plain_log_of_an_older_launcher_is_kept(fake_python, tmp_path):
  out = tmp_path / "output" / "3"
  out.mkdir(parents=True)
  (out / "train_3.log").write_text("old run")
  code, log = launch("vit", "train_performance_1p.sh", ["--data_path=."], tmp_path,
                     fake_python)
  assert code == 0, log
  kept = glob.glob(str(out / "train_3_earlier_*.log"))
  assert len(kept) == 1 and open(kept[0]).read() == "old run"
  assert os.path.islink(str(out / "train_3.log"))


@pytest.mark.parametrize("dump_flags, dump_args", [
    (["--data_dump_flag=True", "--data_dump_step=0|5"],
     ["--enable_dump", "--dump_path=OUT/data_dump", "--dump_step=0|5"]),
    (["--over_dump", "True"], ["--enable_dump_debug", "--dump_path=OUT/overflow_dump"]),
    (["--over_dump=True", "--data_dump_flag=true"],
     ["--enable_dump", "--enable_dump_debug", "--dump_path=OUT/dump", "--dump_step=10"]),
])
def test_dump_options_give_one_dump_path(dump_flags, dump_args, fake_python, tmp_path):
  code, log = launch("bit", "train_performance_1p.sh", ["--data_path=."] + dump_flags,
                     tmp_path, fake_python)
  assert code == 0, log
  out = str(tmp_path / "output" / "3")
  args = summaries(out)["performance"]["python_args"]
  assert args[4:] == [a.replace("OUT", out) for a in dump_args]


def test_config_files_and_options_pass_through_as_absolute_paths(fake_python, tmp_path):
  configs = os.path.join(MODELZOO, "vit", "configs")
  relative = os.path.relpath(configs, str(tmp_path))
  code, log = launch("vit", "train_full_1p.sh",
                     ["--data_path=.", "--output_path", "runs",
                      "--fusion_switch_file", relative + "/fusion_switch.cfg",
                      "--mixlist_file=%s/ops_info.json" % relative,
                      "--precision_mode", "allow_mix_precision", "--batch_size=8",
                      "--train_epochs", "2", "--", "--vit_model=Ti/16"],
                     tmp_path, fake_python)
  assert code == 0, log
  out = str(tmp_path / "runs" / "3")
  args = summaries(out)["full"]["python_args"]
  assert args == ["--data_dir=%s" % tmp_path,
                  "--model_dir=%s/ckpt" % out, "--precision_mode=allow_mix_precision",
                  "--fusion_switch_file=%s/fusion_switch.cfg" % configs,
                  "--modify_mixlist=%s/ops_info.json" % configs, "--train_batch_size=8",
                  "--train_epochs=2", "--vit_model=Ti/16"]


def test_a_failed_run_keeps_its_exit_code_and_summary(fake_python, tmp_path):
  code, log = launch("masf", "train_performance_1p.sh", ["--data_path=."], tmp_path,
                     dict(fake_python, FAKE_OUTPUT="error: something broke", FAKE_EXIT="3"))
  assert code == 3
  assert "error: something broke" in log and "training failed (exit 3); full log: " in log
  assert "Final Performance" not in log
  summary = summaries(tmp_path / "output" / "3")["performance"]
  assert summary["exit_code"] == 3 and summary["examples_per_sec"] is None


def test_bad_arguments_are_one_line_naming_the_option(fake_python, tmp_path):
  cases = [
      (["--data_path=."], "scripts", "--model=NAME is required when run from scripts/; "
       "one of: " + " ".join(SHIPPED_MODELS)),
      (["--model=resnet", "--data_path=."], "scripts",
       "--model=resnet is not a registered model; expected one of: "),
      (["--model=bit", "--data_path=."], "vit",
       "--model=bit contradicts the folder modelzoo/vit/ (omit --model there)"),
      (["--data_path", "--train_steps=2"], "vit", "--data_path needs a value"),
      (["--data_path=nowhere"], "vit", "--data_path=%s/nowhere does not exist" % tmp_path),
      (["--data_path=.", "--over_dump=yes"], "vit",
       "--over_dump=yes is not a boolean; expected True or False"),
      (["--data_path=.", "--mixlist_file=x.json"], "vit",
       "--mixlist_file=%s/x.json is not a file" % tmp_path),
      (["--data_path=.", "--epochs=3"], "vit", "unknown option --epochs (see -h)"),
  ]
  for args, where, message in cases:
    script = (os.path.join(conftest.REPO, "scripts", "train_full_1p.sh") if where == "scripts"
              else os.path.join(MODELZOO, where, "test", "train_full_1p.sh"))
    proc = subprocess.run(["bash", script] + args, cwd=str(tmp_path),
                          env=dict(os.environ, **fake_python), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    out = proc.stdout.decode()
    assert proc.returncode == 2 and len(out.splitlines()) == 1, (args, out)
    assert out.startswith("train_full_1p.sh: " + message), (args, out)
  assert not (tmp_path / "output").exists()


def test_help_lists_every_option_and_the_folders(fake_python, tmp_path):
  code, log = launch("vit", "train_full_1p.sh", ["-h"], tmp_path, fake_python)
  assert code == 0
  for option in ("--model=NAME", "--data_path=DIR", "--output_path=DIR",
                 "--precision_mode=MODE", "--fusion_switch_file=FILE", "--mixlist_file=FILE",
                 "--over_dump=True|False", "--data_dump_flag=True|False",
                 "--data_dump_step=STEPS", "--profiling=True|False", "--batch_size=N",
                 "--train_steps=N", "--train_epochs=N", "--name VALUE"):
    assert option in log, option
  for folder in ("OUT/data_dump", "OUT/overflow_dump", "both -> OUT/dump",
                 "OUT/ckpt_performance", "it empties first", " ".join(SHIPPED_MODELS)):
    assert folder in log, folder


def test_report_without_throughput_says_so(tmp_path):
  log = tmp_path / "run.log"
  log.write_text('Final metrics: {"global_step": 4, "mode": "train", "train_seconds": 2.0}\n')
  summary = modelzoo_report.build_summary("vit", "performance", str(log), ["--mode=train"],
                                          100, 107, 0)
  lines = modelzoo_report.report_lines(summary)
  assert "Final Performance images/sec : None" in lines
  assert any(l.startswith("Note: the run's final metrics carry no examples_per_sec") for l in lines)
  assert lines[-1] == "E2E Training Duration sec : 7"


def test_report_prefix_is_the_run_loops():
  from estimators import run_loop  # pylint: disable=g-import-not-at-top
  assert modelzoo_report.FINAL_METRICS_PREFIX == run_loop.FINAL_METRICS_PREFIX


# --- multi-device scripts (train_*_8p.sh) ------------------------------------------------


def fake_run(out, device):
  """(rank line, process ids) of the fake run logged in out/<device>/train_<device>.log, as
  far as it got."""
  with open(os.path.join(str(out), device, "train_%s.log" % device)) as f:
    lines = f.read().splitlines()
  rank_line = [l for l in lines if l.startswith("rank ")]
  pids = [l.split()[1:] for l in lines if l.startswith("pids ")]
  return (rank_line[0] if rank_line else None), [int(pid) for pid in pids[0]] if pids else []


def gone(pid, timeout=10):
  """Whether process `pid` ends (or is a zombie) within `timeout` seconds."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      with open("/proc/%d/stat" % pid) as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
          return True
    except OSError:
      return True
    time.sleep(0.1)
  return False


def test_8p_starts_one_process_per_rank_on_its_table_device(fake_python, tmp_path):
  # Devices numbered apart from the ranks, rank 1 listed first; ASCEND_DEVICE_ID=3 is unused.
  table = write_table(tmp_path, rank_table([("7", "1"), ("6", "0")]), "2p.json")
  (tmp_path / "data").mkdir()
  code, log = launch("vit", "train_performance_8p.sh",
                     ["--data_path=data", "--rank_size", "2", "--rank_table=2p.json",
                      "--batch_size=8", "--train_steps=6"], tmp_path, fake_python)
  assert code == 0, log
  out = tmp_path / "output"
  assert sorted(os.listdir(str(out))) == ["6", "7"]
  for rank, device in ((0, "6"), (1, "7")):
    rank_line, _ = fake_run(out, device)
    assert rank_line == "rank %d of 2 on device %s, table %s, job 10087" % (rank, device, table)
    run = summaries(out / device)["performance"]
    assert run["exit_code"] == 0
    assert run["python_args"] == [  # --train_batch_size is the global batch (4 a device)
        "--data_dir=%s" % (tmp_path / "data"),
        "--model_dir=%s" % (out / device / "ckpt_performance"), "--mode=train",
        "--train_batch_size=8", "--train_steps=6"]
    assert os.readlink(str(out / device / ("train_%s.log" % device))) == (
        os.path.basename(run["log"]))
  assert value_of(log, "Final Performance images/sec") == "812.50"  # rank 0's lines only


def test_8p_runs_eight_ranks_of_rank_table_file(fake_python, tmp_path):
  table = write_table(tmp_path, rank_table(devices_of(8)), "8p.json")
  code, log = launch("amoeba_net", "train_full_8p.sh", ["--data_path=."], tmp_path,
                     dict(fake_python, RANK_TABLE_FILE="8p.json"))
  assert code == 0, log
  out = tmp_path / "output"
  for rank in range(8):
    device = str(rank)
    assert fake_run(out, device)[0] == (
        "rank %d of 8 on device %d, table %s, job 10087" % (rank, rank, table))
    assert summaries(out / device)["full"]["python_args"][1] == (
        "--model_dir=%s" % (out / device / "ckpt"))
  assert value_of(log, "Final Train Accuracy") == "0.7500"


def test_a_failing_rank_stops_the_others_and_is_named(fake_python, tmp_path):
  write_table(tmp_path, rank_table([("4", "0"), ("5", "1"), ("6", "2"), ("7", "3")]),
              "4p.json")
  started = time.time()
  code, log = launch("protoattend", "train_full_8p.sh",
                     ["--data_path=.", "--rank_size=4", "--rank_table=4p.json"], tmp_path,
                     dict(fake_python, FAKE_FAILING_RANK="1", FAKE_SLEEP="120"))
  assert code == 3 and time.time() - started < 60, log
  out = tmp_path / "output"
  failed = summaries(out / "5")["full"]
  assert failed["exit_code"] == 3
  assert log.splitlines()[-2:] == [
      "error: rank broke",  # the tail of its log
      "train_full_8p.sh: rank 1 (device 5) failed (exit 3); log: " + failed["log"]]
  assert "Final Train Accuracy" not in log
  for device in ("4", "6", "7"):
    assert summaries(out / device)["full"]["exit_code"] == 128 + signal.SIGTERM
    _, pids = fake_run(out, device)
    assert len(pids) == 2 and all(gone(pid) for pid in pids), device  # the run and its child


def test_interrupting_8p_stops_every_rank(fake_python, tmp_path):
  write_table(tmp_path, rank_table(devices_of(2)), "2p.json")
  proc = subprocess.Popen(
      ["bash", os.path.join(MODELZOO, "bit", "test", "train_full_8p.sh"), "--data_path=.",
       "--rank_size=2", "--rank_table=2p.json"], cwd=str(tmp_path),
      env=dict(os.environ, FAKE_SLEEP="120", **fake_python), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT)
  out = tmp_path / "output"
  deadline = time.time() + 60
  while time.time() < deadline and not all(
      os.path.exists(str(out / d / ("train_%s.log" % d))) and fake_run(out, d)[1]
      for d in "01"):
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  log = proc.communicate(timeout=60)[0].decode()
  assert proc.returncode == 130, log
  assert log.splitlines()[-1] == "train_full_8p.sh: interrupted; training stopped"
  for device in "01":
    assert all(gone(pid) for pid in fake_run(out, device)[1]), device


def test_8p_refuses_a_bad_setup_before_starting_anything(fake_python, tmp_path):
  write_table(tmp_path, rank_table(devices_of(2)), "2p.json")
  write_table(tmp_path, rank_table([("0", "0"), ("0", "1")]), "same_device.json")
  write_table(tmp_path, rank_table([("0", "0")], [("0", "1")]), "two_servers.json")
  write_table(tmp_path, "{not json", "broken.json")
  cases = [
      ([], "--rank_table=FILE (or RANK_TABLE_FILE) is required: the rank table of the 8 "
       "devices"),
      (["--rank_table=nowhere.json"], "--rank_table=%s/nowhere.json is not a file" % tmp_path),
      (["--rank_table=broken.json"], "RANK_TABLE_FILE: %s/broken.json is not valid JSON"
       % tmp_path),
      (["--rank_table=same_device.json", "--rank_size=2"], "RANK_TABLE_FILE %s/same_device."
       'json: server_list[0].device[1].device_id "0" is listed twice on server 10.0.0.1'
       % tmp_path),
      (["--rank_table=2p.json"], "RANK_SIZE=8 but %s/2p.json lists 2 devices" % tmp_path),
      (["--rank_table=two_servers.json", "--rank_size=2"], "RANK_TABLE_FILE %s/two_servers."
       "json lists 2 servers; this launcher starts the ranks of one server" % tmp_path),
      (["--rank_table=2p.json", "--rank_size=2", "--batch_size=9"], "--batch_size=9 is the "
       "global batch and does not divide over 2 devices; expected a multiple of 2"),
      (["--rank_table=2p.json", "--rank_size=0"], "--rank_size=0 is not a positive integer"),
  ]
  for args, message in cases:
    code, log = launch("vit", "train_full_8p.sh", ["--data_path=."] + args, tmp_path,
                       dict(fake_python, RANK_TABLE_FILE=""))
    assert code == 2 and len(log.splitlines()) == 1, (args, log)
    assert log.startswith("train_full_8p.sh: " + message), (args, log)
  assert not (tmp_path / "output").exists()


def test_1p_takes_one_rank_and_no_rank_table(fake_python, tmp_path):
  table = write_table(tmp_path, rank_table(devices_of(8)), "8p.json")
  code, log = launch("vit", "train_full_1p.sh", ["--data_path=.", "--rank_size=2"], tmp_path,
                     fake_python)
  assert code == 2 and log == ("train_full_1p.sh: --rank_size=2: train_full_1p.sh trains on "
                               "one device; use train_full_8p.sh for more\n")
  code, log = launch("vit", "train_full_1p.sh", ["--data_path=.", "--rank_table", table],
                     tmp_path, dict(fake_python, RANK_TABLE_FILE=table))
  assert code == 0, log
  assert fake_run(tmp_path / "output", "3")[0] == "rank 0 of 1 on device 3, table , job 10087"


def test_8p_help_tells_the_rank_options(fake_python, tmp_path):
  code, log = launch("vit", "train_performance_8p.sh", ["-h"], tmp_path, fake_python)
  assert code == 0
  for text in ("--rank_table=FILE", "default $RANK_TABLE_FILE", "--rank_size=N",
               "default 8 for the _8p scripts", "the global batch",
               "one process per rank 0..N-1", "the others are stopped"):
    assert text in log, text


# --- slow tier: real training of every model through its modelzoo folder ----------------


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("digits"))
  proc = subprocess.run([sys.executable, "tools/make_digits_dataset.py", "--output_dir=" + out,
                         "--image_size=32"], cwd=conftest.REPO, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)
  assert proc.returncode == 0, proc.stdout.decode()
  return out


def tiny_run(model, digits, shared, tmp_path):
  """(--data_path, extra model flags) of a small run of `model` on real data."""
  if model == "amoeba_net":
    return digits, TINY_AMOEBA
  if model in ("vit", "bit"):
    tiny = (["--vit_model=Ti/16"] if model == "vit" else
            ["--hyperrule=false", "--resize_size=36"])
    return digits, ["--dataset=image_folder", "--image_size=32", "--warmup_steps=0",
                    "--train_batch_size=4", "--eval_batch_size=4"] + tiny
  if model == "protoattend":
    return os.path.join(shared, "fashion_mnist"), [
        "--tfrecord_dir=%s" % (tmp_path / "tfrecords"), "--resnet_depth=8",
        "--final_units=32", "--val_dim=16", "--example_cand_size=64", "--eval_cand_size=64",
        "--train_batch_size=32", "--eval_batch_size=32", "--ood_eval=false"]
  return os.path.join(shared, "pacs"), ["--image_size=64", "--fc_units=32",
                                        "--meta_batch_size=6", "--eval_batch_size=20",
                                        "--cache_decoded_images=false"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["amoeba_net", "protoattend", "masf", "vit", "bit"])
def test_every_model_trains_through_its_modelzoo_folder(model, digits_dir, shared_data,
                                                        tmp_path):
  data_path, extra = tiny_run(model, digits_dir, shared_data, tmp_path)
  env = {"PYTHON": sys.executable, "ASCEND_DEVICE_ID": "0"}
  common = ["--data_path=" + os.path.relpath(data_path, str(tmp_path)), "--train_steps=4",
            "--", "--log_step_count_steps=1", "--eval_steps=1"] + extra
  # The sample fusion switch file and both dumps (one dump path) pass the run's checks.
  npu_options = ["--over_dump=True", "--data_dump_flag=True", "--fusion_switch_file=" +
                 os.path.join(MODELZOO, model, "configs", "fusion_switch.cfg")]
  code, log = launch(model, "train_performance_1p.sh", npu_options + common, tmp_path, env)
  assert code == 0, log[-3000:]
  assert float(value_of(log, "Final Performance images/sec")) > 0, log
  with open(summaries(tmp_path / "output" / "0")["performance"]["log"]) as f:
    assert "fusion_switch_file, enable_dump, enable_dump_debug: validated" in f.read()
  code, log = launch(model, "train_full_1p.sh", common, tmp_path, env)
  assert code == 0, log[-3000:]
  assert float(value_of(log, "Final Performance images/sec")) > 0, log
  assert 0.0 <= float(value_of(log, "Final Train Accuracy")) <= 1.0, log
  metric, meaning = registry.get(model).headline_metric
  assert value_of(log, "Accuracy meaning") == meaning
  assert int(value_of(log, "E2E Training Duration sec")) > 0

  runs = summaries(tmp_path / "output" / "0")
  assert runs["full"]["global_step"] == 4, "the full run did not continue the performance run"
  assert runs["full"]["accuracy_metric"] == metric
  assert runs["performance"]["global_step"] == 4
