"""`python -m migration.convert`: Huawei's command-line rules, the report files, the input
left untouched, conversion of converted output changing nothing."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from migration import backend as backend_lib
from migration.convert import __main__ as convert_main
from tests import conftest

TPU_SCRIPT = '''"""A TPU script."""
import tensorflow.compat.v1 as tf
from tensorflow.compat.v1 import estimator as tf_estimator


def model_fn(features, labels, mode, params):
  optimizer = tf.tpu.CrossShardOptimizer(tf.train.GradientDescentOptimizer(0.1))  # keep me
  return tf_estimator.tpu.TPUEstimatorSpec(mode, loss=tf.constant(0.0))


def main():
  config = tf_estimator.tpu.RunConfig(tpu_config=tf_estimator.tpu.TPUConfig(10))
  return tf_estimator.tpu.TPUEstimator(model_fn=model_fn, config=config, export_to_tpu=False)
'''


@pytest.fixture
def source_tree(tmp_path):
  root = tmp_path / "src"
  (root / "pkg").mkdir(parents=True)
  (root / "train.py").write_text(TPU_SCRIPT)
  (root / "pkg" / "__init__.py").write_text("")
  (root / "pkg" / "plain.py").write_text("import os\n\nPATH = os.sep  # untouched\n")
  (root / "pkg" / "legacy.py").write_text('import tensorflow as tf\nprint "python 2"\n')
  (root / "config.yaml").write_text("depth: 18\n")
  return root


def _digest(root):
  digest = hashlib.sha256()
  for folder, _, names in sorted(os.walk(str(root))):
    for name in sorted(names):
      path = os.path.join(folder, name)
      digest.update(path.encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def _convert(*argv):
  return convert_main.main([str(a) for a in argv])


def test_converts_tree_and_writes_huawei_reports(source_tree, tmp_path, capsys):
  before = _digest(source_tree)
  out, rep = tmp_path / "out", tmp_path / "rep"
  status = _convert("-i", source_tree, "-o", out, "-r", rep)
  assert _digest(source_tree) == before, "the input was modified"
  assert status == 1, "an unparsable file must make the exit status non-zero"
  assert "1 item(s) could not be converted" in capsys.readouterr().out
  converted = (out / "train.py").read_text()
  assert "migration.compat.TPUEstimator(model_fn=model_fn, config=config)" in converted
  assert "migration.compat.CrossShardOptimizer(tf.train.GradientDescentOptimizer(0.1))  # " \
         "keep me" in converted
  for name in ("pkg/__init__.py", "pkg/plain.py", "pkg/legacy.py", "config.yaml"):
    assert (out / name).read_bytes() == (source_tree / name).read_bytes(), name
  success = (rep / "success_report.txt").read_text().splitlines()
  assert "train.py:7 change tf.tpu.CrossShardOptimizer to migration.compat." \
         "CrossShardOptimizer" in success
  assert "train.py:13 remove argument export_to_tpu=False (TPU only)" in success
  assert any(re.match(r"train\.py:\d+ add import migration\.compat$", l) for l in success)
  failed = (rep / "failed_report.txt").read_text()
  assert re.search(r"pkg/legacy\.py:2 cannot be parsed \(.+\); copied unchanged", failed)
  brief = (rep / "api_brief_report.txt").read_text().splitlines()
  assert brief[0].startswith("1.In brief: Total API: 6, in which Support: 0, API support "
                             "after migration: 5, ")
  assert brief[1].startswith("2.After eliminate duplicate: Total API: ")
  report = json.loads((rep / "report.json").read_text())
  assert {c["rule"] for c in report["changes"]} >= {"rename", "tpu-only-argument",
                                                    "add-import"}
  assert all(set(c) == {"file", "line", "rule", "before", "after"} for c in report["changes"])
  assert report["files_not_converted"][0]["file"] == "pkg/legacy.py"
  diff = (rep / "changes.diff").read_text()
  assert "-  optimizer = tf.tpu.CrossShardOptimizer(" in diff and "+++ b/train.py" in diff


def test_diff_shows_only_converted_lines(source_tree, tmp_path):
  out = tmp_path / "out"
  _convert("-i", source_tree, "-o", out, "-r", tmp_path / "rep")
  original = (source_tree / "train.py").read_text().splitlines()
  converted = (out / "train.py").read_text().splitlines()
  removed = [line for line in original if line not in converted]
  added = [line for line in converted if line not in original]
  assert len(removed) == 4 and all("tpu" in line for line in removed)
  assert added[0] == "import migration.compat"
  assert all("migration.compat." in line for line in added[1:])


def test_converting_converted_output_changes_nothing(source_tree, tmp_path):
  out, again = tmp_path / "out", tmp_path / "again"
  _convert("-i", source_tree, "-o", out, "-r", tmp_path / "rep")
  _convert("-i", out, "-o", again, "-r", tmp_path / "rep2")
  for folder, _, names in os.walk(str(out)):
    for name in names:
      path = os.path.relpath(os.path.join(folder, name), str(out))
      assert (again / path).read_bytes() == (out / path).read_bytes(), path
  assert (tmp_path / "rep2" / "success_report.txt").read_text() == ""


@pytest.mark.parametrize("where", ["-o", "-r"])
def test_output_or_report_inside_input_is_refused(source_tree, capsys, where):
  args = {"-o": "/tmp/elsewhere_out", "-r": "/tmp/elsewhere_rep"}
  args[where] = str(source_tree / "inside")
  status = _convert("-i", source_tree, "-o", args["-o"], "-r", args["-r"])
  err = capsys.readouterr().err.strip().splitlines()
  assert status == 2 and len(err) == 1
  assert "lies inside the input" in err[0] and where in err[0]
  assert not (source_tree / "inside").exists()


def test_argument_errors_are_one_line_with_status_2(source_tree, tmp_path, capsys):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("")
  cases = [
      (["-i", tmp_path / "missing"], "no such folder"),
      (["-i", source_tree, "-o", tmp_path / "full"], "not an empty folder"),
      (["-i", source_tree, "-o", tmp_path / "o1", "-m", "nope.py"], "-m nope.py"),
      (["-i", source_tree, "-o", tmp_path / "o2", "--verify=--x"], "needs -m"),
      (["-i", source_tree, "-o", tmp_path / "full" / "x" / "out"], "cannot be created"),
  ]
  for argv, message in cases:
    assert _convert(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
  with pytest.raises(SystemExit) as exit_info:
    _convert("-o", tmp_path / "o3")
  assert exit_info.value.code == 2, "-i is required"


def test_long_forms_and_module_entry_point(source_tree, tmp_path):
  out = tmp_path / "out"
  process = subprocess.run(
      [sys.executable, "-m", "migration.convert", "--input=%s" % (source_tree / "train.py"),
       "--output=%s" % out, "--report=%s" % (tmp_path / "rep")],
      cwd=conftest.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      universal_newlines=True)
  assert process.returncode == 0, process.stdout
  assert os.listdir(str(out)) == ["train.py"]
  assert "Converted 1 files into" in process.stdout


TINY_TPU_TRAINER = '''"""A minimal TPUEstimator trainer, as TPU users write them."""
from absl import app
from absl import flags
import numpy as np
import tensorflow.compat.v1 as tf

flags.DEFINE_string("model_dir", None, "Checkpoints.")
flags.DEFINE_integer("train_steps", 2, "Steps.")
flags.DEFINE_bool("use_tpu", True, "Use TPUs rather than plain CPUs.")
flags.DEFINE_bool("fail", False, "Crash after building the estimator.")
FLAGS = flags.FLAGS


def input_fn(params):
  x = np.random.RandomState(0).rand(64, 4).astype(np.float32)
  y = (x.sum(axis=1) > 2).astype(np.int32)
  return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(params["batch_size"])


def model_fn(features, labels, mode, params):
  logits = tf.layers.dense(features, 2)
  loss = tf.losses.sparse_softmax_cross_entropy(labels, logits)
  optimizer = tf.train.GradientDescentOptimizer(0.1)
  if FLAGS.use_tpu:
    optimizer = tf.tpu.CrossShardOptimizer(optimizer)
  train_op = optimizer.minimize(loss, tf.train.get_global_step())
  return tf.estimator.tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)


def main(_):
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(FLAGS.tpu if False else "")
  config = tf.estimator.tpu.RunConfig(
      cluster=resolver, model_dir=FLAGS.model_dir,
      tpu_config=tf.estimator.tpu.TPUConfig(iterations_per_loop=1, num_shards=8))
  estimator = tf.estimator.tpu.TPUEstimator(model_fn=model_fn, config=config,
                                            use_tpu=FLAGS.use_tpu, train_batch_size=16)
  if FLAGS.fail:
    raise RuntimeError("the script's own failure")
  estimator.train(input_fn, max_steps=FLAGS.train_steps)


if __name__ == "__main__":
  app.run(main)
'''


@pytest.fixture
def trainer_tree(tmp_path):
  root = tmp_path / "trainer"
  root.mkdir()
  (root / "train.py").write_text(TINY_TPU_TRAINER)
  return root


def test_verify_trains_on_cpu_and_on_the_npu_double(trainer_tree, tmp_path, capsys):
  rep = tmp_path / "rep"
  status = _convert("-i", trainer_tree, "-o", tmp_path / "out", "-r", rep, "-m", "train.py",
                    "--verify=--model_dir={run}/model --train_steps=2")
  out = capsys.readouterr().out
  assert status == 0, out
  assert re.search(r"verify \(cpu\): Estimator \+ RunConfig on cpu; trained to step 2 "
                   r"\(checkpoint .*/verify/cpu/model/model\.ckpt\)", out)
  npu = (r"NPUEstimator \+ NPURunConfig on npu via npu_bridge" if backend_lib.TF1
         else r"Estimator \+ RunConfig on npu via npu_device")
  assert re.search(r"verify \(npu double\): %s; trained to step 2 \(checkpoint "
                   r".*/verify/npu_double/model/model\.ckpt\)" % npu, out)
  assert "Saving checkpoints for 2 into" in (rep / "verify_cpu.log").read_text()


def test_verify_reports_a_failing_run_and_exits_1(trainer_tree, tmp_path, capsys):
  status = _convert("-i", trainer_tree, "-o", tmp_path / "out", "-r", tmp_path / "rep",
                    "-m", "train.py", "--verify=--model_dir={run}/model --fail")
  out = capsys.readouterr().out
  assert status == 1
  assert ("verify (cpu): Estimator + RunConfig on cpu; FAILED (exit 1): RuntimeError: the "
          "script's own failure") in out


def test_a_utf8_bom_is_kept(tmp_path):
  source = tmp_path / "src"
  source.mkdir()
  (source / "bom.py").write_bytes(b"\xef\xbb\xbfimport tensorflow.compat.v1 as tf\n"
                                  b"opt = tf.tpu.CrossShardOptimizer(opt)\n")
  assert _convert("-i", source, "-o", tmp_path / "out", "-r", tmp_path / "rep") == 0
  assert (tmp_path / "out" / "bom.py").read_bytes() == (
      b"\xef\xbb\xbfimport tensorflow.compat.v1 as tf\nimport migration.compat\n"
      b"opt = migration.compat.CrossShardOptimizer(opt)\n")


def test_main_is_looked_up_in_the_input_first(source_tree, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "train.py").write_text("# a different train.py in the working folder\n")
  assert _convert("-i", source_tree, "-o", tmp_path / "out", "-r", tmp_path / "rep",
                  "-m", "train.py") == 1  # 1: pkg/legacy.py does not parse; not 2


def test_unreadable_and_dangling_files_are_reported_and_the_rest_converts(source_tree,
                                                                          tmp_path, capsys):
  (source_tree / "dangling.py").symlink_to(source_tree / "gone.py")
  rep = tmp_path / "rep"
  assert _convert("-i", source_tree, "-o", tmp_path / "out", "-r", rep) == 1
  assert "error: dangling.py:- cannot be read or copied (" in capsys.readouterr().out
  assert "dangling.py:- cannot be read or copied (" in (rep / "failed_report.txt").read_text()
  assert "migration.compat.TPUEstimator(" in (tmp_path / "out" / "train.py").read_text()
