"""ModelZoo launchers (scripts/train_*_1p.sh through modelzoo/<model>/test/) and their report.

The fast tier stands a tiny script in for the model's training run (PYTHON is a wrapper
that fakes `<repo>/<model>.py` and runs everything else for real), so the launcher's own
logic is tested in seconds; the slow tier trains every model for real through its folder.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

from estimators import registry
from migration import validation
from tests import conftest
from tests.test_entry_points import TINY_AMOEBA
from tools import modelzoo_report

MODELZOO = os.path.join(conftest.REPO, "modelzoo")
# What the launchers know (a fresh process); the test model of tests/tiny_model.py registers
# itself in this one.
SHIPPED_MODELS = sorted(registry.MODELS)
SCRIPTS = ("train_full_1p.sh", "train_performance_1p.sh")
FINAL_LINE = ('Final metrics: {"examples_per_sec": 812.5, "global_step": 6, '
              '"headline_meaning": "top-1 accuracy on the validation split", '
              '"headline_metric": "top_1_accuracy", "mode": "train_and_eval", '
              '"top_1_accuracy": 0.75}')

# Stands in for the training run (an entry script at the repository root): logs where and
# how it ran, prints $FAKE_OUTPUT and exits with $FAKE_EXIT; anything else runs for real.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2" = "-m estimators" ]; then
  echo "ran $3 in $PWD"; echo "$FAKE_OUTPUT"; exit "${FAKE_EXIT:-0}"
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
    for script in SCRIPTS:
      link = os.path.join(MODELZOO, model, "test", script)
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
