"""Shared fixtures: the npu_bridge test double, real data, and in-process flag parsing."""
import os
import sys

import pytest

from input_fns import data_root

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NPU_DOUBLE = os.path.join(REPO, "migration", "doubles")


@pytest.fixture
def shared_data():
  root = data_root()
  if not os.path.isdir(root):
    pytest.skip("real data not found at %s (set DATA_ROOT)" % root)
  return root


NPU_ENV_VARS = ("JOB_ID", "RANK_SIZE", "CM_WORKER_SIZE", "RANK_ID", "RANK_TABLE_FILE",
                "POD_NAME", "TF_CONFIG", "LOCAL_CHECKPOINT_DIR", "RESTORE_FROM")


def _unload(package):
  for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
    del sys.modules[name]


@pytest.fixture
def npu_bridge_on_path(monkeypatch):
  """The npu_bridge test double, importable for this test only, with no NPU environment
  variables set; yields the `npu_bridge` package and unloads it afterwards. The npu_device
  double beside it is hidden (on TF 2.x the backend would prefer it)."""
  from migration import backend as backend_lib  # pylint: disable=g-import-not-at-top
  for name in NPU_ENV_VARS:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.syspath_prepend(NPU_DOUBLE)
  monkeypatch.setitem(sys.modules, "npu_device", None)
  import npu_bridge  # pylint: disable=g-import-not-at-top
  yield npu_bridge
  _unload("npu_bridge")
  backend_lib.activate(backend_lib.Backend("cpu"))


@pytest.fixture
def npu_device_on_path(monkeypatch):
  """The npu_device test double (TF 2.x), importable for this test only, its
  compat.enable_v1() recorded but not run (it turns TF2 behaviour off for the whole
  process); yields the package and unloads it afterwards."""
  from migration import backend as backend_lib  # pylint: disable=g-import-not-at-top
  from migration import tf2_adapter  # pylint: disable=g-import-not-at-top
  for name in NPU_ENV_VARS + ("ASCEND_DEVICE_ID",):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.syspath_prepend(NPU_DOUBLE)
  npu_device = pytest.importorskip("npu_device", reason="npu_device needs TensorFlow 2.x")
  calls = []
  monkeypatch.setattr(npu_device.compat, "enable_v1", lambda: calls.append("enable_v1"))
  npu_device.compat.calls = calls
  yield npu_device
  _unload("npu_device")
  tf2_adapter._opened.clear()  # pylint: disable=protected-access
  backend_lib.activate(backend_lib.Backend("cpu"))


@pytest.fixture
def npu_double(npu_bridge_on_path, monkeypatch):
  """The test double with the ModelZoo single-device launch environment."""
  monkeypatch.setenv("JOB_ID", "10087")
  monkeypatch.setenv("RANK_ID", "0")
  monkeypatch.setenv("RANK_SIZE", "1")
  return npu_bridge_on_path


@pytest.fixture
def cpu_backend():
  from migration import backend as backend_lib
  yield backend_lib.activate(backend_lib.Backend("cpu"))
  backend_lib.activate(backend_lib.Backend("cpu"))


@pytest.fixture
def migration_env(monkeypatch):
  """Sets MIGRATION_* variables for converted code (migration.runtime) in this test only:
  `migration_env(MIGRATION_DEVICE="cpu", ...)`; the runtime re-reads them."""
  from migration import backend as backend_lib  # pylint: disable=g-import-not-at-top
  from migration import runtime  # pylint: disable=g-import-not-at-top
  for name in [n for n in os.environ if n.startswith(runtime.PREFIX)]:
    monkeypatch.delenv(name)

  def _set(**variables):
    for name, value in variables.items():
      monkeypatch.setenv(name, value)
    runtime.reset()
    return runtime.settings()

  yield _set
  runtime.reset()
  backend_lib.activate(backend_lib.Backend("cpu"))


def scalar_summary_tags(graph):
  """The tags of the graph's tf.summary.scalar ops (what TensorBoard shows)."""
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  return {tf.compat.as_str(tf.get_static_value(op.inputs[0]).item())
          for op in graph.get_operations() if op.type == "ScalarSummary"}


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  """scikit-learn's handwritten digits (real scans) as ImageNet-format tfrecords at 32 px:
  10 classes, labels 1..10, with labels.txt and the manifest (tools/make_digits_dataset.py)."""
  from tools import make_digits_dataset  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("digits"))
  make_digits_dataset.make_digits_dataset(out, image_size=32)
  return out
