"""The NPU on the TF 2.x stack: the backend finds npu_device, sets the run loop's NPU
options on its global_options() before open(), and the Estimator models train in the
adapter's TF1-compat mode (checked against the npu_device double)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from migration import backend as backend_lib
from migration import estimator as estimator_lib
from migration import optimizers
from migration import run_config as run_config_lib
from migration import session as session_lib
from tests import conftest
from tests import tiny_model

pytestmark = pytest.mark.skipif(backend_lib.TF1, reason="npu_device is the TF 2.x adapter")

RUN_OPTS = run_config_lib.RunOptions(
    model_dir=None, save_checkpoints_steps=50, save_checkpoints_secs=None,
    keep_checkpoint_max=3, save_summary_steps=10, log_step_count_steps=10,
    tf_random_seed=1, intra_op_threads=0, inter_op_threads=0)


def _write(path, data):
  path.write_text(json.dumps(data))
  return str(path)


def test_every_option_is_set_before_open(npu_device_on_path, tmp_path, monkeypatch):
  monkeypatch.setenv("ASCEND_DEVICE_ID", "3")
  backend = backend_lib.select_backend("npu")
  assert backend.uses_npu_device and not backend.uses_npu_bridge
  opts = run_config_lib.NPU_DEFAULTS._replace(
      precision_mode="allow_mix_precision",
      modify_mixlist=_write(tmp_path / "ops.json", {"black-list": {"to-add": ["Mul"]}}),
      fusion_switch_file=_write(tmp_path / "fusion.cfg",
                                {"Switch": {"GraphFusion": {"ALL": "off"}}}),
      enable_dump=True, dump_path=str(tmp_path / "dump"), dump_step="0|5", dump_mode="all",
      enable_dump_debug=True, enable_profiling=True,
      profiling_options='{"output": "/tmp/prof", "training_trace": "on"}',
      hcom_parallel=False, op_compiler_cache_mode="force",
      op_compiler_cache_dir=str(tmp_path / "cache"), iterations_per_loop=4)
  config = run_config_lib.build_run_config(backend, RUN_OPTS, opts)
  assert type(config) is tf.estimator.RunConfig
  ((device_id, seen),) = npu_device_on_path.opened
  assert device_id == 3
  expected = {
      "precision_mode": "allow_mix_precision", "modify_mixlist": opts.modify_mixlist,
      "fusion_switch_file": opts.fusion_switch_file, "enable_dump": "1",
      "dump_path": opts.dump_path, "dump_step": "0|5", "dump_mode": "all",
      "enable_dump_debug": "1", "dump_debug_mode": "all", "enable_profiling": "1",
      "profiling_options": opts.profiling_options, "hcom_parallel": "0",
      "op_compiler_cache_mode": "force", "op_compiler_cache_dir": opts.op_compiler_cache_dir}
  assert {key: seen.get(key) for key in expected} == expected
  assert seen == npu_device_on_path.global_options().as_dict(), (
      "an option was set after open(): the device never saw it")
  assert npu_device_on_path.loop_sizes == [4]
  assert npu_device_on_path.compat.calls == ["enable_v1"]
  run_config_lib.build_run_config(backend, RUN_OPTS, opts)
  assert len(npu_device_on_path.opened) == 1, "opened once per process"


def test_unset_options_stay_at_the_adapters_defaults(npu_device_on_path):
  defaults = npu_device_on_path.global_options().as_dict()
  backend = backend_lib.select_backend("auto")
  run_config_lib.build_run_config(backend, RUN_OPTS)
  ((_, seen),) = npu_device_on_path.opened
  assert seen == dict(defaults, hcom_parallel="1")


def test_models_run_as_plain_estimator_code(npu_device_on_path, tmp_path):
  backend = backend_lib.activate(backend_lib.select_backend("npu"))
  config = run_config_lib.build_run_config(backend, RUN_OPTS._replace(
      model_dir=str(tmp_path)))
  estimator = estimator_lib.create_estimator(tiny_model.tiny_model_fn, config,
                                             {"learning_rate": 0.5}, train_batch_size=32,
                                             backend=backend)
  assert type(estimator).__mro__[2] is tf.estimator.Estimator
  estimator.train(tiny_model.blobs_input_fn(tf.estimator.ModeKeys.TRAIN, 128), max_steps=3)
  assert estimator.get_variable_value("global_step") == 3
  session = session_lib.session_config(backend=backend)
  assert not session.graph_options.rewrite_options.custom_optimizers
  with tf.Graph().as_default():
    wrapped = optimizers.wrap_optimizer(tf.train.GradientDescentOptimizer(0.1),
                                        {"loss_scale": "dynamic"}, backend)
  assert type(wrapped) is optimizers.LossScaleOptimizer


def test_several_ranks_average_gradients_and_broadcast_through_npu_device(
    npu_device_on_path, monkeypatch):
  backend = backend_lib.select_backend("npu")
  monkeypatch.setattr(optimizers, "rank_size", lambda: 2)
  reduced, broadcast = [], []
  monkeypatch.setattr(npu_device_on_path.distribute, "all_reduce",
                      lambda values, reduction: reduced.append(reduction) or values)
  monkeypatch.setattr(npu_device_on_path.distribute, "broadcast",
                      lambda values, root_rank: broadcast.append(root_rank) or tf.no_op())
  with tf.Graph().as_default():
    var = tf.Variable(1.0)
    optimizer = optimizers.wrap_optimizer(tf.train.GradientDescentOptimizer(0.1), {}, backend)
    assert type(optimizer) is optimizers.AllReduceOptimizer
    optimizer.minimize(var * 2.0)
    hook = optimizers.BroadcastVariablesHook(backend.adapter)
    hook.begin()
  assert reduced == ["mean"] and broadcast == [0]


def _tiny_flowers(root):
  """A tf_flowers TFDS folder of 20 small single-colour photos (4 per class)."""
  from input_fns import tf_flowers  # pylint: disable=g-import-not-at-top
  for index, name in enumerate(tf_flowers.CLASS_NAMES):
    (root / "photos" / name).mkdir(parents=True)
    for j in range(4):
      Image.fromarray(np.full((40, 40, 3), 40 * index + j, np.uint8)).save(
          str(root / "photos" / name / ("%d.jpg" % j)))
  tf_flowers.build_from_image_folder(str(root / "photos"), str(root / "tfds"))
  return str(root / "tfds")


TINY_BIT = ["--hyperrule=false", "--image_size=32", "--resize_size=36"]


def _run(command, env):
  process = subprocess.run(command, cwd=conftest.REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=600,
                           env=dict(os.environ, PYTHONPATH=conftest.NPU_DOUBLE, **env))
  return process.returncode, process.stdout.decode("utf-8", "replace")


def test_bit_trains_on_the_npu_device_double_with_the_options_given(tmp_path):
  fusion = _write(tmp_path / "fusion_switch.cfg", {"Switch": {"UBFusion": {"ALL": "off"}}})
  code, log = _run([sys.executable, "bit.py", "--device=npu", "--mode=train",
                    "--precision_mode=allow_mix_precision", "--fusion_switch_file=" + fusion,
                    "--train_steps=2", "--train_batch_size=2",
                    "--data_dir=" + _tiny_flowers(tmp_path),
                    "--model_dir=%s" % (tmp_path / "model")] + TINY_BIT,
                   {"ASCEND_DEVICE_ID": "5"})
  assert code == 0, log[-3000:]
  assert "NPU through npu_device, device id 5 (ASCEND_DEVICE_ID)" in log
  opened = [l for l in log.splitlines() if "npu_device: device 5 open" in l]
  assert len(opened) == 1, log[-3000:]
  options = json.loads(opened[0].split(" options ", 1)[1])
  assert options["precision_mode"] == "allow_mix_precision"
  assert options["fusion_switch_file"] == fusion
  assert '"global_step": 2' in log.splitlines()[-1]


def test_bit_through_the_modelzoo_launch_script_on_npu_device(tmp_path):
  code, log = _run(["bash", "scripts/train_full_1p.sh", "--model=bit",
                    "--data_path=" + _tiny_flowers(tmp_path), "--output_path=%s" % tmp_path,
                    "--precision_mode=allow_mix_precision", "--batch_size=2",
                    "--train_steps=2", "--"] + TINY_BIT + ["--eval_batch_size=2"],
                   {"PYTHON": sys.executable, "ASCEND_DEVICE_ID": "0"})
  assert code == 0, log[-3000:]
  train_log = (tmp_path / "0" / "train_0.log").read_text()
  assert "NPU through npu_device, device id 0" in train_log
  assert any(l.startswith("E2E Training Duration sec : ") for l in log.splitlines())
