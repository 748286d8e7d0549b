"""Training past one device: --distribution, TF_CONFIG and NPU ranks (migration.distribute),
the run loop's chief-only writes, and real local clusters (tools/launch_local.py): two workers
x batch B train as one worker x 2B, and a killed worker's cluster resumes from the chief's
checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from estimators import run_loop
from migration import backend as backend_lib
from migration import distribute
from migration.validation import ConfigError
from tests import conftest
from tests import test_npu_ranks
from tests import tiny_model  # pylint: disable=unused-import  (registers "tiny")

CPU = backend_lib.Backend("cpu")
CLUSTER = {"chief": ["127.0.0.1:2000"], "worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}
LAUNCHER = os.path.join(conftest.REPO, "tools", "launch_local.py")


def tf_config(cluster=None, task_type="chief", index=0):
  return json.dumps({"cluster": cluster or CLUSTER, "task": {"type": task_type,
                                                              "index": index}})


def resolve(strategy, backend=CPU, **environ):
  return distribute.resolve(strategy, backend, environ)


@pytest.mark.parametrize("raw, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[1, 2]", "TF_CONFIG must be a JSON object"),
    ('{"task": {"type": "chief"}}', 'TF_CONFIG needs "cluster"'),
    ('{"cluster": {"chief": ["nohost"]}, "task": {"type": "chief"}}',
     'cluster job "chief" must be a non-empty list of "host:port"'),
    ('{"cluster": {"chief": ["a:1"], "worker": ["a:1"]}, "task": {"type": "chief"}}',
     "TF_CONFIG cluster lists a:1 more than once"),
    ('{"cluster": {"chief": ["a:1"]}}', 'TF_CONFIG needs "task"'),
    ('{"cluster": {"chief": ["a:1"]}, "task": {"type": "chief", "index": "0"}}',
     'TF_CONFIG needs "task"'),
    ('{"cluster": {"chief": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
     'TF_CONFIG task type "worker" is not a job of its cluster (chief)'),
    (tf_config(task_type="worker", index=2),
     "TF_CONFIG task worker:2 is outside its cluster, which has 2 worker task(s)"),
])
def test_a_malformed_tf_config_is_one_line_naming_what_is_wrong(raw, message):
  with pytest.raises(ConfigError) as error:
    resolve("multi_worker_mirrored", TF_CONFIG=raw)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_multi_worker_tasks_number_the_workers_with_the_chief_first():
  chief = resolve("multi_worker_mirrored", TF_CONFIG=tf_config())
  second = resolve("multi_worker_mirrored", TF_CONFIG=tf_config(task_type="worker", index=1))
  assert (chief.num_workers, chief.worker_index, chief.is_chief) == (3, 0, True)
  assert (second.num_workers, second.worker_index, second.is_chief) == (3, 2, False)
  assert chief.num_replicas == 3 and chief.synchronous and chief.in_cluster
  # Without a chief job, worker 0 is the chief (TensorFlow's rule).
  workers_only = tf_config({"worker": ["a:1", "a:2"]}, "worker", 0)
  assert resolve("multi_worker_mirrored", TF_CONFIG=workers_only).is_chief


def test_without_tf_config_multi_worker_mirrored_is_one_worker_and_none_is_plain():
  alone = resolve("multi_worker_mirrored")
  assert (alone.num_workers, alone.is_chief, alone.in_cluster) == (1, True, False)
  assert resolve("none") == distribute.SINGLE


@pytest.mark.parametrize("strategy, environ, message", [
    ("none", {"TF_CONFIG": tf_config()}, "TF_CONFIG describes a cluster (chief: 1, worker: 2) "
     "but --distribution=none trains in one process"),
    ("mirrored", {"TF_CONFIG": tf_config()}, "--distribution=mirrored trains in one process"),
    ("multi_worker_mirrored", {"TF_CONFIG": tf_config(dict(CLUSTER, ps=["a:9"]))},
     "runs the TF_CONFIG jobs chief/worker, not ps (ps tasks serve "
     "--distribution=parameter_server)"),
    ("multi_worker_mirrored", {"TF_CONFIG": tf_config(dict(CLUSTER, evaluator=["a:9"]))},
     "an evaluator is a separate --mode=continuous_eval run"),
    ("multi_worker_mirrored", {"TF_CONFIG": tf_config({"chief": ["a:1", "a:2"]})},
     "TF_CONFIG lists 2 chief tasks"),
    ("parameter_server", {}, "--distribution=parameter_server needs TF_CONFIG"),
    ("parameter_server", {"TF_CONFIG": tf_config()}, "needs TF_CONFIG jobs chief (1) and ps"),
    ("none", {"RANK_SIZE": "8"}, "RANK_SIZE=8 asks for 8 NPU ranks (HCCL), but this run is "
     "on the CPU"),
])
def test_a_configuration_that_cannot_work_is_one_line(strategy, environ, message):
  with pytest.raises(ConfigError) as error:
    resolve(strategy, **environ)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_on_the_npu_ranks_come_from_rank_size_and_tf_distribute_is_refused():
  npu = backend_lib.Backend("npu", adapter=None)
  rank = resolve("none", npu, RANK_SIZE="4", RANK_ID="3")
  assert (rank.npu_ranks, rank.num_workers, rank.worker_index, rank.is_chief) == (
      True, 4, 3, False)
  assert resolve("none", npu, RANK_SIZE="4", RANK_ID="0").is_chief
  assert not resolve("none", npu).npu_ranks
  with pytest.raises(ConfigError, match="--distribution=mirrored with --device=npu: on Ascend "
                     "NPUs the devices train in parallel through HCCL"):
    resolve("mirrored", npu)


def test_the_global_batch_splits_over_the_replicas_or_is_refused():
  three = resolve("multi_worker_mirrored", TF_CONFIG=tf_config())
  assert distribute.per_replica_batch("train_batch_size", 48, three) == 16
  with pytest.raises(ConfigError, match=r"--train_batch_size=32 does not split over the 3 "
                     r"replicas of multi_worker_mirrored: chief task 0, worker 0 of 3.*give a "
                     r"multiple of 3"):
    distribute.per_replica_batch("train_batch_size", 32, three)


def test_a_strategy_the_stack_lacks_is_one_line(monkeypatch):
  monkeypatch.setitem(distribute._STRATEGY_CLASSES, "mirrored",  # pylint: disable=protected-access
                      "experimental.FutureStrategy")
  with pytest.raises(ConfigError, match="--distribution=mirrored needs "
                     "tf.distribute.experimental.FutureStrategy, which TensorFlow .* lacks"):
    distribute.make_strategy(resolve("mirrored"))


def test_a_follower_takes_the_chiefs_checkpoint_and_drops_its_own(tmp_path):
  worker = resolve("multi_worker_mirrored", TF_CONFIG=tf_config(task_type="worker", index=0))
  stale = tmp_path / "tmp_worker_0"
  stale.mkdir()
  (stale / "model.ckpt-3.index").write_text("stale")
  chief_checkpoint = str(tmp_path / "model.ckpt-7")
  for suffix in (".index", ".data-00000-of-00001"):
    (tmp_path / ("model.ckpt-7" + suffix)).write_text(suffix)
  folder = distribute.follow_chief(str(tmp_path), worker, chief_checkpoint)
  assert folder == str(stale)
  assert sorted(os.listdir(folder)) == ["checkpoint", "model.ckpt-7.data-00000-of-00001",
                                        "model.ckpt-7.index"]
  assert tf.train.latest_checkpoint(folder) == os.path.join(folder, "model.ckpt-7")
  distribute.follow_chief(str(tmp_path), worker, None)  # the chief starts afresh: so does it
  assert not os.path.exists(folder)


def tiny_flags(model_dir, *extra):
  return ["--model_dir=%s" % model_dir, "--device=cpu", "--tiny_shuffle=false",
          "--tf_random_seed=1", "--train_batch_size=16"] + list(extra)


def test_the_run_loop_refuses_eval_modes_across_processes(tmp_path, monkeypatch):
  monkeypatch.setenv("TF_CONFIG", tf_config())
  with pytest.raises(ConfigError, match="--mode=continuous_eval runs in one process; "
                     "multi_worker_mirrored: chief task 0, worker 0 of 3"):
    run_loop.prepare("tiny", tiny_flags(tmp_path, "--mode=continuous_eval",
                                        "--distribution=multi_worker_mirrored"))


def test_an_npu_rank_takes_its_share_of_the_batch_and_only_rank_0_reports(
    npu_double, tmp_path, monkeypatch):
  table = test_npu_ranks.write_table(tmp_path, test_npu_ranks.rank_table(
      test_npu_ranks.devices_of(2)))
  for name, value in (("RANK_SIZE", "2"), ("RANK_ID", "1"), ("RANK_TABLE_FILE", table),
                      ("JOB_ID", "10087")):
    monkeypatch.setenv(name, value)
  runner = run_loop.prepare("tiny", tiny_flags(tmp_path / "rank1", "--mode=train",
                                               "--device=npu"))
  distribution = runner.config.distribution
  assert (distribution.npu_ranks, distribution.worker_index, distribution.is_chief) == (
      True, 1, False)
  assert runner.config.replica_batch_size == 8  # the input_fn's batch: 16 over 2 ranks
  assert type(runner.estimator).__name__ == "NPUEstimator"
  # Rank 1 leaves the lock, flags.json, the export and the final metrics line to rank 0
  # (NPURunConfig always saves checkpoints: into this rank's own model_dir).
  monkeypatch.setattr(runner, "train", lambda max_steps: 0.0)
  assert runner.run() == {}
  assert not (tmp_path / "rank1" / "flags.json").exists()


def test_mirrored_on_one_cpu_is_one_replica_and_trains(tmp_path, capsys):
  runner = run_loop.prepare("tiny", tiny_flags(tmp_path, "--distribution=mirrored",
                                               "--train_steps=3", "--mode=train"))
  assert runner.config.distribution.num_replicas == 1
  assert runner.run()["global_step"] == 3
  assert "Final metrics: " in capsys.readouterr().out


# Real clusters: processes started by tools/launch_local.py, on this machine's cores.

def launch(workers, flags, ps=0, **popen):
  command = [sys.executable, LAUNCHER, "--workers=%d" % workers, "--ps=%d" % ps,
             "--grace_secs=5", "--", "-m", "tests.tiny_entry"] + flags
  return subprocess.Popen(command, cwd=conftest.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, **popen)


def finish(process, timeout=300):
  out, _ = process.communicate(timeout=timeout)
  return process.returncode, out


def variables(checkpoint):
  reader = tf.train.NewCheckpointReader(checkpoint)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_two_workers_of_batch_b_train_as_one_worker_of_batch_2b(tmp_path):
  steps = 6
  single = tmp_path / "single"
  run_loop.prepare("tiny", tiny_flags(single, "--mode=train", "--train_steps=%d" % steps,
                                      "--save_checkpoints_steps=%d" % steps)).run()
  # Both start from the same variables: the single run's step-0 checkpoint (a graph under a
  # strategy draws other random initial values).
  cluster = tmp_path / "cluster"
  cluster.mkdir()
  for path in tf.gfile.Glob(str(single / "model.ckpt-0.*")):
    shutil.copy(path, str(cluster))
  tf.train.update_checkpoint_state(str(cluster), str(cluster / "model.ckpt-0"))
  code, out = finish(launch(2, tiny_flags(cluster, "--mode=train", "--train_steps=%d" % steps,
                                          "--distribution=multi_worker_mirrored")))
  assert code == 0, out[-3000:]
  assert "global batch 16, 8 per replica" in out
  assert "[worker:0] " in out and "starts from the chief's %s" % (cluster / "model.ckpt-0") in out
  final_metrics = [line for line in out.splitlines() if "Final metrics: " in line]
  assert len(final_metrics) == 1 and final_metrics[0].startswith("[chief:0] ")
  one, two = (variables(str(folder / ("model.ckpt-%d" % steps))) for folder in (single, cluster))
  assert set(one) == set(two) and one["global_step"] == two["global_step"] == steps
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert not np.allclose(one["hidden/kernel"], variables(str(single / "model.ckpt-0"))[
      "hidden/kernel"])  # it trained
  # Only the chief wrote: the worker's copy is TensorFlow's tmp_worker_0, no summaries there.
  assert not tf.gfile.Glob(str(cluster / "tmp_worker_0" / "events.*"))


def _worker_pid(launcher_pid):
  """The pid of the launcher's child whose TF_CONFIG task is worker 0."""
  with open("/proc/%d/task/%d/children" % (launcher_pid, launcher_pid)) as children:
    for pid in children.read().split():
      with open("/proc/%s/environ" % pid, "rb") as environ:
        for entry in environ.read().split(b"\0"):
          if entry.startswith(b"TF_CONFIG=") and b'"type": "worker"' in entry:
            return int(pid)
  return None


def test_a_killed_worker_stops_the_cluster_and_a_restart_resumes_from_the_chiefs_checkpoint(
    tmp_path):
  model_dir = tmp_path / "run"
  flags = tiny_flags(model_dir, "--mode=train", "--distribution=multi_worker_mirrored",
                     "--save_checkpoints_steps=5", "--log_step_count_steps=50")
  process = launch(2, flags + ["--train_steps=1000000"])
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    latest = tf.train.latest_checkpoint(str(model_dir))
    if latest and int(latest.rsplit("-", 1)[1]) >= 20:
      break
    time.sleep(0.5)
  worker = _worker_pid(process.pid)
  assert worker, "no worker process under the launcher"
  os.kill(worker, signal.SIGKILL)
  code, out = finish(process)
  assert code == 1
  assert "launch_local: worker:0 exited with signal SIGKILL; stopping the other tasks" in out
  assert "Final metrics: " not in out
  latest = tf.train.latest_checkpoint(str(model_dir))
  saved = int(latest.rsplit("-", 1)[1])
  assert saved >= 20
  # The restarted cluster goes on from there: the chief restores it, the worker copies it.
  code, out = finish(launch(2, flags + ["--train_steps=%d" % (saved + 10)]))
  assert code == 0, out[-3000:]
  assert "Restoring parameters from %s" % latest in out
  assert "starts from the chief's %s" % latest in out
  final = json.loads(out.split("Final metrics: ")[1].splitlines()[0])
  assert final["global_step"] == saved + 10


def test_loss_scaling_under_tf_distribute_is_refused_in_one_line(tmp_path):
  with pytest.raises(ConfigError, match="--loss_scale=dynamic .* cannot run under "
                     "--distribution=mirrored: loss scaling is not supported with "
                     "tf.distribute yet"):
    run_loop.prepare("tiny", tiny_flags(tmp_path, "--distribution=mirrored",
                                        "--loss_scale=dynamic"))


def test_masf_refuses_to_train_on_several_replicas(tmp_path):
  with pytest.raises(ConfigError, match=r"masf trains on one device only \(a step is one "
                     r"meta-learning episode.*\); it cannot run as mirrored: chief task 0"):
    run_loop.prepare("masf", ["--model_dir=%s" % tmp_path, "--device=cpu",
                              "--distribution=mirrored"])


@pytest.mark.slow  # a worker polls every 30 s for the chief to initialise the ps variables
def test_parameter_servers_train_asynchronously_and_the_chief_reports(tmp_path):
  model_dir = tmp_path / "run"
  code, out = finish(launch(2, tiny_flags(model_dir, "--distribution=parameter_server",
                                          "--train_steps=40"), ps=1))
  assert code == 0, out[-3000:]
  assert "global batch 16, 8 per replica" in out
  final = json.loads(out.split("[chief:0] Final metrics: ")[1].splitlines()[0])
  # Asynchronous workers stop on the global step they last read: steps already in flight
  # when it reaches 40 still count (CI saw 42).
  assert 40 <= final["global_step"] <= 44 and final["accuracy"] > 0.5
  assert "parameter_server: worker task 0, worker 1 of 2" in out
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(
      "model.ckpt-%d" % final["global_step"])
  assert not tf.gfile.Glob(str(model_dir / "tmp_*"))  # the variables live on the ps task


def test_what_a_replica_updates_builds_and_loads_under_a_strategy(tmp_path):
  """Under tf.distribute each replica runs the model_fn, where mirrored variables are
  updated only with an aggregation: batch-norm statistics and AmoebaNet's EMA average
  theirs, and pretrained weights are assigned in the cross-replica context (each of the
  three failed on TF 1.15: "You must specify an aggregation method")."""
  from estimators import layers  # pylint: disable=g-import-not-at-top
  from estimators import pretrained  # pylint: disable=g-import-not-at-top
  from estimators.amoeba_net import model_fn as amoeba_model_fn  # pylint: disable=g-import-not-at-top
  from estimators.vit import network as vit_network  # pylint: disable=g-import-not-at-top
  from estimators.vit import weights as vit_weights  # pylint: disable=g-import-not-at-top
  from tests import test_vit_bit  # pylint: disable=g-import-not-at-top
  path = test_vit_bit.save_npz(tmp_path / "vit.npz", test_vit_bit.vit_npz_arrays(
      test_vit_bit.TINY_VIT, 32, 5))
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with tf.Graph().as_default():
    with strategy.scope():
      global_step = tf.train.get_or_create_global_step()

      def replica_fn():
        vit_network.build(tf.zeros([2, 32, 32, 3]), 5, True, test_vit_bit.TINY_VIT_CONFIG)
        network_variables = tf.trainable_variables()
        scaffold = pretrained.warm_start(path, network_variables, vit_weights.Filter(5))
        layers.batch_norm(tf.ones([2, 4, 4, 3]), training=True, name="bn")
        updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS) + [
            amoeba_model_fn.apply_ema(0.9, global_step, network_variables[:2])]
        return scaffold, network_variables[0], tf.group(*updates)

      scaffold, first, updates = strategy.extended.call_for_each_replica(replica_fn)
    scaffold.finalize()
    with tf.Session() as session:
      session.run(scaffold.init_op)
      scaffold.init_fn(session)
      session.run(updates)
      loaded = session.run(first)
  np.testing.assert_array_equal(loaded, np.load(path)[first.op.name])
