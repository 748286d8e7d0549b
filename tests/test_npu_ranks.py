"""Ascend data parallelism over RANK_SIZE ranks: the rank table's checks, and the multi-rank
graph on the npu_bridge test double (one process is one rank there: HCCL ops are built,
and fail when run).

Reference: ../shared/reference/npu_bridge_api.md §3.1, §5, §7.1, §9.3, §10.
"""
import importlib
import json

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from migration import validation

TRAIN = tf.estimator.ModeKeys.TRAIN
EVAL = tf.estimator.ModeKeys.EVAL


def rank_table(*servers):
  """A version 1.0 rank table; each server is a list of (device_id, rank_id) strings."""
  return {"server_count": str(len(servers)), "status": "completed", "version": "1.0",
          "server_list": [
              {"server_id": "10.0.0.%d" % (i + 1),
               "device": [{"device_id": device, "device_ip": "192.168.%d.%d" % (i, j + 2),
                           "rank_id": rank} for j, (device, rank) in enumerate(devices)]}
              for i, devices in enumerate(servers)]}


def devices_of(count):
  """(device_id, rank_id) of `count` devices numbered as in the EfficientNet 8p table."""
  return [(str(i), str(i)) for i in range(count)]


def write_table(directory, table, name="rank_table.json"):
  path = directory / name
  path.write_text(table if isinstance(table, str) else json.dumps(table))
  return str(path)


# --- rank table --------------------------------------------------------------------------


def test_good_tables_pass_and_come_back_parsed(tmp_path):
  path = write_table(tmp_path, rank_table(devices_of(8)))
  table = validation.check_rank_table_file(path, 8, 7)
  assert len(table["server_list"][0]["device"]) == 8
  # Devices need not be numbered as the ranks, nor listed in rank order; device ids repeat
  # across servers.
  validation.check_rank_table_file(
      write_table(tmp_path, rank_table([("6", "1"), ("7", "0")], [("6", "2"), ("7", "3")]),
                  "two_servers.json"), "4", "3")
  validation.check_environment({"RANK_SIZE": "8", "RANK_ID": "0", "RANK_TABLE_FILE": path})


@pytest.mark.parametrize("table, rank_size, rank_id, message", [
    (rank_table([("0", "0"), ("0", "1")]), None, None,
     'server_list[0].device[1].device_id "0" is listed twice on server 10.0.0.1'),
    (rank_table([("0", "0"), ("1", "0")]), None, None,
     'server_list[0].device[1].rank_id "0" is also the rank_id of server_list[0].device[0]'),
    (rank_table([("0", "0")], [("0", "0")]), None, None,
     'server_list[1].device[0].rank_id "0" is also the rank_id of server_list[0].device[0]'),
    (rank_table([("0", "0"), ("1", "one")]), None, None,
     'server_list[0].device[1].rank_id is "one"; expected a non-negative integer'),
    (rank_table([("npu0", "0")]), None, None,
     'server_list[0].device[0].device_id is "npu0"; expected a non-negative integer'),
    (rank_table([("0", "0"), ("1", "2")]), None, None,
     "server_list[0].device[1].rank_id is 2; the 2 devices must have the ranks 0..1"),
    (rank_table([]), None, None, "server_list lists no device"),
    (rank_table(devices_of(8)), 2, None, "RANK_SIZE=2 but {path} lists 8 devices"),
    (rank_table(devices_of(2)), None, "5", "RANK_ID=5 is not a rank_id in {path} (has 0..1)"),
    ("{not json", 2, None, "RANK_TABLE_FILE: {path} is not valid JSON"),
    ("[]", 2, None, "RANK_TABLE_FILE {path}: expected a JSON object with server_list"),
])
def test_each_bad_table_is_one_line_naming_file_and_value(tmp_path, table, rank_size, rank_id,
                                                         message):
  path = write_table(tmp_path, table)
  with pytest.raises(validation.ConfigError) as e:
    validation.check_rank_table_file(path, rank_size, rank_id)
  assert message.format(path=path) in str(e.value)
  assert path in str(e.value) and "\n" not in str(e.value)


def test_environment_needs_a_good_table_above_one_rank(tmp_path):
  with pytest.raises(validation.ConfigError, match="^RANK_SIZE=2 needs RANK_TABLE_FILE"):
    validation.check_environment({"RANK_SIZE": "2", "RANK_ID": "0"})
  path = write_table(tmp_path, rank_table([("0", "0"), ("0", "1")]))
  with pytest.raises(validation.ConfigError, match="listed twice"):
    validation.check_environment({"RANK_SIZE": "2", "RANK_ID": "1", "RANK_TABLE_FILE": path})
  with pytest.raises(validation.ConfigError, match="does not exist"):
    validation.check_environment({"RANK_SIZE": "2", "RANK_TABLE_FILE": str(tmp_path / "x")})


# --- the multi-rank graph on the npu_bridge double --------------------------------------


@pytest.fixture
def npu(npu_bridge_on_path, monkeypatch):
  """The double's npu_init in the environment train_*_8p.sh gives rank 1 of 2."""
  del npu_bridge_on_path
  for name, value in (("JOB_ID", "10087"), ("RANK_SIZE", "2"), ("RANK_ID", "1")):
    monkeypatch.setenv(name, value)
  return importlib.import_module("npu_bridge.npu_init")


def _model_fn(features, labels, mode):
  weights = tf.get_variable("w", [2, 1], initializer=tf.zeros_initializer())
  loss = tf.losses.mean_squared_error(labels, tf.matmul(features, weights))
  train_op = tf.train.GradientDescentOptimizer(0.1).minimize(
      loss, tf.train.get_or_create_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def _input_fn():
  x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  return tf.data.Dataset.from_tensors((x, np.array([[1.0], [2.0]], np.float32))).repeat()


def _spec(estimator, mode):
  """The spec of the estimator's wrapped model_fn in `mode`, in a new graph."""
  graph = tf.Graph()
  with graph.as_default():
    features, labels = tf.data.make_one_shot_iterator(_input_fn()).get_next()
    return graph, estimator.model_fn(features, labels, mode, estimator.config)


def test_estimator_broadcasts_rank_0_variables_in_train_above_one_rank(npu, tmp_path,
                                                                       monkeypatch):
  estimator = npu.NPUEstimator(_model_fn, config=npu.NPURunConfig(model_dir=str(tmp_path)))
  graph, spec = _spec(estimator, TRAIN)
  broadcast = spec.training_hooks[0]
  assert isinstance(broadcast, npu.NPUBroadcastGlobalVariablesHook)
  assert (broadcast._root_rank, broadcast._index) == (0, 1)  # from rank 0, here rank 1
  assert not any(isinstance(hook, npu.NPUBroadcastGlobalVariablesHook)
                 for hook in _spec(estimator, EVAL)[1].evaluation_hooks)

  # The hook builds its broadcast; running it would need HCCL, which the double refuses.
  with graph.as_default():
    broadcast.begin()
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      with pytest.raises(tf.errors.UnimplementedError,
                         match="hccl_ops.broadcast: the npu_bridge test double runs one rank, "
                         "but the rank size is 2"):
        broadcast.after_create_session(sess, None)
  with pytest.raises(tf.errors.UnimplementedError, match="runs one rank"):
    estimator.train(_input_fn, steps=1)

  monkeypatch.setenv("RANK_SIZE", "1")
  assert not any(isinstance(hook, npu.NPUBroadcastGlobalVariablesHook)
                 for hook in _spec(estimator, TRAIN)[1].training_hooks)


def test_distributed_optimizer_averages_each_gradient_over_the_ranks(npu):
  with tf.Graph().as_default():
    x = tf.constant([[1.0, 2.0]])
    weights = tf.get_variable("w", [2, 1], initializer=tf.ones_initializer())
    table = tf.get_variable("table", [5, 3], initializer=tf.ones_initializer())
    loss = (tf.reduce_sum(tf.matmul(x, weights)) +
            tf.reduce_sum(tf.nn.embedding_lookup(table, [0, 3])))
    optimizer = npu.NPUDistributedOptimizer(tf.train.GradientDescentOptimizer(0.1))
    assert optimizer.get_name() == "DistributedGradientDescentOptimizer"
    (dense, _), (sparse, _) = optimizer.compute_gradients(loss, [weights, table])

    # Dense: all-reduce (sum), then divide by the rank size.
    assert dense.op.type == "RealDiv" and tf.get_static_value(dense.op.inputs[1]) == 2
    summed = dense.op.inputs[0]
    assert summed.op.type == "PyFunc" and summed.shape == weights.shape
    # IndexedSlices: values and indices all-gathered (2 ranks x 2 rows), values divided.
    assert isinstance(sparse, tf.IndexedSlices)
    assert sparse.values.op.type == "RealDiv"
    assert tf.get_static_value(sparse.values.op.inputs[1]) == 2
    gathered = sparse.values.op.inputs[0]
    assert gathered.op.type == "PyFunc" and gathered.shape.as_list() == [4, 3]
    assert sparse.indices.op.type == "PyFunc" and sparse.indices.shape.as_list() == [4]

    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      # What goes into the all-reduce is this rank's own gradient ...
      np.testing.assert_allclose(sess.run(summed.op.inputs[0]), [[1.0], [2.0]])
      # ... and the all-reduce itself needs HCCL.
      with pytest.raises(tf.errors.UnimplementedError,
                         match="hccl_ops.allreduce: the npu_bridge test double runs one rank"):
        sess.run(dense)
      with pytest.raises(tf.errors.UnimplementedError, match="hccl_ops.allgather"):
        sess.run(sparse.values)


def test_one_rank_leaves_gradients_and_graph_alone(npu, monkeypatch):
  monkeypatch.setenv("RANK_SIZE", "1")
  with tf.Graph().as_default() as graph:
    weights = tf.get_variable("w", [2, 1])
    loss = tf.reduce_sum(weights)
    inner = tf.train.GradientDescentOptimizer(0.1)
    [(grad, _)] = npu.NPUDistributedOptimizer(inner).compute_gradients(loss)
    assert grad.op.type != "RealDiv"
    assert "PyFunc" not in [op.type for op in graph.get_operations()]
