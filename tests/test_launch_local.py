"""tools/launch_local.py: the local multi-process cluster, with tiny Python scripts as tasks.

Every task script records its pid (and those of any grandchild) under OUT/pids, so each test
can check that nothing outlives the launcher; tasks that must outlive others wait for files,
not for time, so the tests hold on a loaded machine.
"""
import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests import conftest
from tools import launch_local

LAUNCHER = os.path.join(conftest.REPO, "tools", "launch_local.py")
STOP_LINE = "launch_local: %s exited with %s; stopping the other tasks"

# Opens every task script; `python task.py OUT`.
TASK_PREAMBLE = """\
import json, os, signal, socket, subprocess, sys, time
CONFIG = json.loads(os.environ["TF_CONFIG"])
TYPE, INDEX = CONFIG["task"]["type"], CONFIG["task"]["index"]
TASK = "%s_%d" % (TYPE, INDEX)
OUT = sys.argv[1]


def record(name, value):
  path = os.path.join(OUT, name)
  with open(path + ".tmp", "w") as f:
    json.dump(value, f)
  os.rename(path + ".tmp", path)


def wait_for(*names):
  deadline = time.time() + 30
  while not all(os.path.exists(os.path.join(OUT, name)) for name in names):
    if time.time() > deadline:
      sys.exit("%s timed out waiting for %s" % (TASK, names))
    time.sleep(0.02)


def start_grandchild():
  child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  record(os.path.join("pids", TASK + "_grandchild"), child.pid)


record(os.path.join("pids", TASK), os.getpid())
"""


class Run(object):
  """One finished launcher run: exit code, stdout/stderr lines, seconds, the task records."""

  def __init__(self, proc, stdout, stderr, seconds, out):
    self.returncode = proc.returncode
    self.stdout = stdout.decode("utf-8")
    self.stderr_lines = stderr.decode("utf-8").splitlines()
    self.seconds = seconds
    self.out = out

  def cluster(self):
    prefix = "launch_local: cluster "
    lines = [l for l in self.stdout.splitlines() if l.startswith(prefix)]
    assert len(lines) == 1, self.stdout
    return json.loads(lines[0][len(prefix):])

  def records(self):
    return {path.name[:-len(".json")]: json.loads(path.read_text())
            for path in self.out.glob("*.json")}

  def assert_nothing_left(self, processes):
    pids = [json.loads(path.read_text()) for path in (self.out / "pids").iterdir()]
    assert len(pids) == processes, sorted(p.name for p in (self.out / "pids").iterdir())
    for pid in pids:
      with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def write_task(tmp_path, body, name="task.py"):
  """The task script (preamble + body) and its empty OUT folder."""
  script = tmp_path / name
  script.write_text(TASK_PREAMBLE + textwrap.dedent(body))
  out = tmp_path / "out"
  (out / "pids").mkdir(parents=True, exist_ok=True)
  return script, out


def start(flags, command, env=None):
  """Starts the launcher with this environment (less what it must set itself) plus `env`."""
  launcher_env = {name: value for name, value in os.environ.items()
                  if name not in ("PYTHONUNBUFFERED", "TF_CONFIG")}
  launcher_env.update(env or {}, INHERITED_BY_TASKS="yes")
  return subprocess.Popen([sys.executable, LAUNCHER] + list(flags) + ["--"] + list(command),
                          cwd=conftest.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=launcher_env)


def launch(tmp_path, flags, body, timeout=30):
  """Runs the launcher on a task script of `body` to the end."""
  script, out = write_task(tmp_path, body)
  began = time.monotonic()
  proc = start(flags, [str(script), str(out)])
  stdout, stderr = proc.communicate(timeout=timeout)
  return Run(proc, stdout, stderr, time.monotonic() - began, out)


def test_each_task_gets_its_tf_config_and_the_ps_tasks_stop_when_the_workers_succeed(tmp_path):
  run = launch(tmp_path, ["--workers=3", "--ps=2"], """
      with socket.socket() as sock:  # The address is free for this task to serve on.
        host, port = CONFIG["cluster"][TYPE][INDEX].split(":")
        sock.bind((host, int(port)))
      record(TASK + ".json", {"tf_config": CONFIG, "python": sys.executable,
                              "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
                              "inherited": os.environ.get("INHERITED_BY_TASKS")})
      if TYPE == "ps":
        time.sleep(600)
      wait_for("ps_0.json", "ps_1.json")
      """)
  assert run.returncode == 0, run.stderr_lines
  assert run.stderr_lines == []
  assert run.stdout.splitlines()[-1] == "launch_local: all 3 tasks finished"
  cluster = run.cluster()
  assert list(cluster) == ["chief", "worker", "ps"]
  assert [len(cluster[t]) for t in cluster] == [1, 2, 2]
  addresses = [a for t in cluster for a in cluster[t]]
  assert {a.split(":")[0] for a in addresses} == {"127.0.0.1"}
  assert len({a.split(":")[1] for a in addresses}) == 5
  records = run.records()
  assert sorted(records) == ["chief_0", "ps_0", "ps_1", "worker_0", "worker_1"]
  for name, record in records.items():
    task_type, index = name.split("_")
    assert record["tf_config"] == {"cluster": cluster,
                                   "task": {"type": task_type, "index": int(index)}}
    assert record["python"] == sys.executable
    assert record["unbuffered"] == "1"
    assert record["inherited"] == "yes"
  run.assert_nothing_left(5)


def test_a_single_worker_is_a_lone_chief(tmp_path):
  run = launch(tmp_path, ["--workers=1"], """
      record(TASK + ".json", CONFIG)
      """)
  assert run.returncode == 0, run.stderr_lines
  (address,) = run.cluster()["chief"]
  assert run.records() == {"chief_0": {"cluster": {"chief": [address]},
                                       "task": {"type": "chief", "index": 0}}}
  assert run.stdout.splitlines()[-1] == "launch_local: all 1 tasks finished"


@pytest.mark.parametrize("entry", ["module", "command"])
def test_the_entry_runs_as_a_module_or_as_a_command_given(tmp_path, entry):
  script, out = write_task(tmp_path, """
      record(TASK + ".json", sys.executable)
      """, name="task_module.py")
  if entry == "module":  # `-m` runs with the launcher's interpreter.
    python, command = sys.executable, ["-m", "task_module", str(out)]
  else:  # Anything else as given: here another path to an interpreter.
    python = os.path.join(str(tmp_path), "python")
    os.symlink(sys.executable, python)
    command = [python, str(script), str(out)]
  proc = start(["--workers=2"], command, env={"PYTHONPATH": str(tmp_path)})
  proc.communicate(timeout=30)
  assert proc.returncode == 0
  records = {path.name: json.loads(path.read_text()) for path in out.glob("*.json")}
  assert records == {"chief_0.json": python, "worker_0.json": python}


def test_output_is_streamed_line_by_line_with_task_prefixes_and_logged(tmp_path):
  log_dir = tmp_path / "logs"
  run = launch(tmp_path, ["--workers=2", "--log_dir=%s" % log_dir], """
      for i in range(300):
        print("%s line %d %s" % (TASK, i, "x" * 200))
      sys.stderr.write("%s to stderr\\n" % TASK)
      sys.stdout.write("%s without a newline" % TASK)
      """)
  assert run.returncode == 0, run.stderr_lines
  lines = run.stdout.splitlines()
  assert lines[0].startswith("launch_local: cluster ")
  assert lines[-1] == "launch_local: all 2 tasks finished"
  for task in ("chief_0", "worker_0"):
    expected = ["%s line %d %s" % (task, i, "x" * 200) for i in range(300)]
    expected += ["%s to stderr" % task, "%s without a newline" % task]
    prefix = "[%s] " % task.replace("_", ":")
    assert [l[len(prefix):] for l in lines if l.startswith(prefix)] == expected
    assert (log_dir / (task + ".log")).read_text() == "\n".join(expected)
  assert len(lines) == 2 + 2 * 302  # Nothing else: no line was split or merged.
  assert sorted(p.name for p in log_dir.iterdir()) == ["chief_0.log", "worker_0.log"]


@pytest.mark.parametrize("worker_end, described", [
    ("sys.exit(3)", "code 3"),
    ("os.kill(os.getpid(), signal.SIGKILL)", "signal SIGKILL"),
])
def test_a_failing_worker_stops_the_chief_and_its_grandchild(tmp_path, worker_end, described):
  run = launch(tmp_path, ["--workers=2"], """
      if TYPE == "chief":
        start_grandchild()
        record("chief_ready", True)
        time.sleep(600)
      wait_for("chief_ready")
      record("worker_exit.json", time.time())
      %s
      """ % worker_end)
  stopped_after = time.time() - run.records()["worker_exit"]
  assert run.returncode == 1
  assert run.stderr_lines == [STOP_LINE % ("worker:0", described)]
  assert "tasks finished" not in run.stdout
  assert stopped_after < 3  # The chief took SIGTERM: no waiting for the grace period (10 s).
  run.assert_nothing_left(3)


def test_a_task_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
  run = launch(tmp_path, ["--workers=2", "--grace_secs=1"], """
      if TYPE == "chief":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record("chief_ready", True)
        time.sleep(600)
      wait_for("chief_ready")
      record("worker_exit.json", time.time())
      sys.exit(3)
      """)
  stopped_after = time.time() - run.records()["worker_exit"]
  assert run.returncode == 1
  assert run.stderr_lines == [STOP_LINE % ("worker:0", "code 3")]
  assert 0.9 < stopped_after < 5
  run.assert_nothing_left(2)


def test_a_ps_task_exiting_by_itself_is_a_failure(tmp_path):
  run = launch(tmp_path, ["--workers=1", "--ps=1"], """
      if TYPE == "chief":
        record("chief_ready", True)
        time.sleep(600)
      wait_for("chief_ready")
      """)
  assert run.returncode == 1
  assert run.stderr_lines == [STOP_LINE % ("ps:0", "code 0")]
  run.assert_nothing_left(2)


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_launcher_stops_every_task(tmp_path, signum, exit_code):
  script, out = write_task(tmp_path, """
      if TYPE == "chief":
        start_grandchild()
      record(TASK + "_ready", True)
      time.sleep(600)
      """)
  proc = start(["--workers=2", "--ps=1"], [str(script), str(out)])
  deadline = time.monotonic() + 30
  while not all((out / name).exists() for name in ("chief_0_ready", "worker_0_ready",
                                                    "ps_0_ready")):
    assert time.monotonic() < deadline and proc.poll() is None, "tasks did not start"
    time.sleep(0.02)
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=10)
  run = Run(proc, b"", stderr, 0, out)
  assert run.returncode == exit_code
  assert run.stderr_lines == ["launch_local: got %s; stopping all tasks" % signum.name]
  run.assert_nothing_left(4)


def test_a_second_signal_to_the_launcher_skips_the_grace_period(tmp_path):
  script, out = write_task(tmp_path, """
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
      record(TASK + "_ready", True)
      time.sleep(600)
      """)
  proc = start(["--workers=1", "--grace_secs=600"], [str(script), str(out)])
  deadline = time.monotonic() + 30
  while not (out / "chief_0_ready").exists():
    assert time.monotonic() < deadline and proc.poll() is None, "the chief did not start"
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  assert proc.stderr.readline() == b"launch_local: got SIGTERM; stopping all tasks\n"
  proc.send_signal(signal.SIGINT)
  proc.communicate(timeout=10)
  assert proc.returncode == 143
  Run(proc, b"", b"", 0, out).assert_nothing_left(1)


def test_a_second_signal_before_the_stop_begins_still_skips_the_grace_period():
  """The launcher's second signal can arrive between its "stopping all tasks" line and the
  start of the stop (CI under load): it used to be counted as the first and the launcher
  waited the whole grace period."""

  class TaskIgnoringSigterm(object):
    def __init__(self):
      self.killed = False
      self.proc = collections.namedtuple("Proc", "wait")(lambda: None)

    def group_alive(self):
      return not self.killed

    def signal_group(self, signum):
      self.killed = self.killed or signum == signal.SIGKILL

  task = TaskIgnoringSigterm()
  start_time = time.monotonic()
  launch_local.stop_tasks([task], 30.0, lambda: None, [signal.SIGTERM, signal.SIGINT],
                          stopped_by_signal=True)
  assert task.killed and time.monotonic() - start_time < 5.0


@pytest.mark.parametrize("argv, named", [
    (["--workers=2"], "nothing to run"),
    (["--workers=2", "--"], "nothing to run"),
    (["--workers=2", "train.py"], "'train.py'"),
    (["--", "TASK"], "--workers"),
    (["--workers=two", "--", "TASK"], "--workers"),
    (["--workers=0", "--", "TASK"], "--workers=0"),
    (["--workers=2", "--ps=-1", "--", "TASK"], "--ps=-1"),
    (["--workers=2", "--grace_secs=0", "--", "TASK"], "--grace_secs=0"),
    (["--workers=2", "--", "missing.py"], "missing.py"),
    (["--workers=2", "--", "no-such-command-here"], "no-such-command-here"),
])
def test_bad_arguments_are_refused_in_one_line(tmp_path, argv, named):
  task = tmp_path / "task.py"  # Would fail the test if it ran: it prints.
  task.write_text("print('must not run')\n")
  argv = [str(task) if arg == "TASK" else arg for arg in argv]
  proc = subprocess.run([sys.executable, LAUNCHER] + argv, cwd=conftest.REPO,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
  assert proc.returncode == 2
  assert proc.stdout == b""
  (line,) = proc.stderr.decode("utf-8").splitlines()
  assert line.startswith("launch_local: error: ") and named in line, line
