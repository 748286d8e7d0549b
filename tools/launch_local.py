"""Runs a TensorFlow cluster as local processes, one per task, each with its own TF_CONFIG.

    python tools/launch_local.py --workers=N [--ps=M] [--grace_secs=S] [--log_dir=DIR] \
        -- <entry> <flags...>

Layout, all on 127.0.0.1 at free ports: one "chief" task (index 0), N-1 "worker" tasks
(indexes 0..N-2) and, with --ps=M, M "ps" tasks; --workers=1 alone is {"chief": [address]}.
Each task gets TF_CONFIG = {"cluster": ..., "task": {"type": ..., "index": ...}}. An <entry>
ending in .py, or a leading -m, runs with this interpreter; anything else runs as given, e.g.
`-- python -m estimators vit --distribution=multi_worker_mirrored ...`.

Every line the tasks print is streamed here prefixed `[chief:0] `, `[worker:1] `, `[ps:0] `
(with --log_dir also unprefixed to DIR/<type>_<index>.log). When the chief and every worker
exit 0, the ps tasks (which serve forever) are stopped and the launcher exits 0. When one of
them fails, or a ps task exits by itself, one line says which and how, the other tasks are
stopped (SIGTERM to each task's process group, SIGKILL after --grace_secs) and the launcher
exits 1; SIGINT/SIGTERM to the launcher stops every task and exits 130/143 (a second one
skips the rest of the grace period).

The tasks share this machine's cores (2 here): a local cluster exercises the distributed code
paths and checkpoints; it does not train faster than one process.
"""
import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
POLL_SECS = 0.05
# How long the output of a stopped task may take to drain (a process that left the task's
# process group can hold its pipe open for ever).
READER_JOIN_SECS = 2.0
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


class _Parser(argparse.ArgumentParser):
  """Reports a bad argument in one line."""

  def error(self, message):
    self.exit(2, "%s: error: %s\n" % (self.prog, message))


def parse_args(argv):
  """(launcher flags, task command): the command is everything after the first `--`."""
  parser = _Parser(prog="launch_local", description=__doc__.split("\n\n")[0],
                   usage="%(prog)s --workers=N [--ps=M] [--grace_secs=S] [--log_dir=DIR] "
                         "-- <entry> <flags...>")
  parser.add_argument("--workers", type=int, required=True,
                      help="the chief plus N-1 workers (>= 1)")
  parser.add_argument("--ps", type=int, default=0, help="parameter server tasks (>= 0)")
  parser.add_argument("--grace_secs", type=float, default=10.0,
                      help="how long a stopped task may take to exit before SIGKILL (> 0)")
  parser.add_argument("--log_dir", help="also write each task's output to DIR/<type>_<index>.log")
  split = argv.index("--") if "--" in argv else len(argv)
  args, unknown = parser.parse_known_args(argv[:split])
  if unknown:
    parser.error("unexpected %r: the task command goes after `--`" % unknown[0])
  command = argv[split + 1:]
  if not command:
    parser.error("nothing to run: give the task command after `--`, e.g. `-- train.py --flag=1`")
  if args.workers < 1:
    parser.error("--workers=%d: expected >= 1 (the chief counts as one)" % args.workers)
  if args.ps < 0:
    parser.error("--ps=%d: expected >= 0" % args.ps)
  if not args.grace_secs > 0:
    parser.error("--grace_secs=%s: expected > 0" % args.grace_secs)
  first = command[0]
  if first.endswith(".py") and not os.path.isfile(first):
    parser.error("entry script %s: not found" % first)
  if not (first.endswith(".py") or first == "-m") and shutil.which(first) is None:
    parser.error("entry command %s: not found" % first)
  if args.log_dir:
    try:
      os.makedirs(args.log_dir, exist_ok=True)
    except OSError as e:
      parser.error("--log_dir=%s: cannot create it (%s)" % (args.log_dir, e.strerror))
  return args, command


def task_command(command):
  """The argv a task runs: a .py entry or a leading -m runs with this interpreter."""
  if command[0].endswith(".py") or command[0] == "-m":
    return [sys.executable] + list(command)
  return list(command)


def free_ports(count):
  """`count` distinct ports free on HOST (all held open until every one is found)."""
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sockets.append(sock)
      sock.bind((HOST, 0))
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def cluster_spec(workers, ps):
  """The TF_CONFIG cluster: chief, then workers, then parameter servers."""
  addresses = ["%s:%d" % (HOST, port) for port in free_ports(workers + ps)]
  cluster = {"chief": addresses[:1]}
  if workers > 1:
    cluster["worker"] = addresses[1:workers]
  if ps:
    cluster["ps"] = addresses[workers:]
  return cluster


def exit_description(returncode):
  """`code N`, or `signal NAME` for a process killed by a signal."""
  if returncode >= 0:
    return "code %d" % returncode
  try:
    return "signal %s" % signal.Signals(-returncode).name
  except ValueError:
    return "signal %d" % -returncode


def warn(message):
  sys.stderr.write("launch_local: %s\n" % message)
  sys.stderr.flush()


class Output(object):
  """This process's stdout, written a whole line at a time under one lock (from any thread),
  so the tasks' lines never interleave mid-line."""

  def __init__(self):
    sys.stdout.flush()
    self._stream = getattr(sys.stdout, "buffer", sys.stdout)
    self._lock = threading.Lock()

  def line(self, data):
    if not isinstance(data, bytes):
      data = data.encode("utf-8")
    if not data.endswith(b"\n"):
      data += b"\n"
    with self._lock:
      self._stream.write(data)
      self._stream.flush()


class Task(object):
  """One process of the cluster, the leader of its own process group."""

  def __init__(self, task_type, index):
    self.type = task_type
    self.index = index
    self.name = "%s:%d" % (task_type, index)
    self.proc = None
    self.reader = None

  def start(self, argv, cluster, output, log_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": self.type, "index": self.index}}))
    log_file = None
    if log_dir:
      log_file = open(os.path.join(log_dir, "%s_%d.log" % (self.type, self.index)), "wb")
    try:
      self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    except OSError:
      if log_file:
        log_file.close()
      raise
    self.reader = threading.Thread(target=self._stream_output, args=(output, log_file),
                                   name="output of " + self.name)
    self.reader.daemon = True
    self.reader.start()

  def _stream_output(self, output, log_file):
    prefix = ("[%s] " % self.name).encode("utf-8")
    try:
      for line in iter(self.proc.stdout.readline, b""):
        if log_file:
          log_file.write(line)
          log_file.flush()
        output.line(prefix + line)
    finally:
      self.proc.stdout.close()
      if log_file:
        log_file.close()

  @property
  def returncode(self):
    return self.proc.returncode

  def group_alive(self):
    """Whether any process of the task's group is left (its leader included until reaped)."""
    try:
      os.killpg(self.proc.pid, 0)
      return True
    except ProcessLookupError:
      return False
    except PermissionError:  # The group is gone and its id taken by someone else's.
      return False

  def signal_group(self, signum):
    try:
      os.killpg(self.proc.pid, signum)
    except (ProcessLookupError, PermissionError):
      pass


def become_subreaper():
  """Makes the tasks' orphaned descendants children of this process (Linux), so `reap`
  collects them: where PID 1 does not reap orphans (many containers), a killed grandchild
  would stay a zombie in its task's process group and keep the group alive."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
  except (AttributeError, OSError):
    return False


def reap(tasks, orphans_too):
  """Collects the exit status of every task that ended and, if this process is a subreaper,
  of every orphaned descendant that ended."""
  procs = {}
  for task in tasks:
    if task.proc is not None:
      task.proc.poll()
      procs[task.proc.pid] = task.proc
  seen = set()
  while orphans_too:
    try:
      info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
      return
    if info is None or info.si_pid in seen:
      return
    seen.add(info.si_pid)
    if info.si_pid in procs:
      procs[info.si_pid].poll()
    else:
      os.waitpid(info.si_pid, 0)


def stop_tasks(tasks, grace_secs, reap_all, signals_received, stopped_by_signal):
  """SIGTERMs every task's process group that is left, SIGKILLs what is still there after
  `grace_secs` (or at once on another signal to the launcher), and reaps every task.
  `stopped_by_signal`: the stop answers the launcher's first signal, so any later one
  (even one that arrived before this call) skips the grace period."""
  signals_before = 1 if stopped_by_signal else 0
  reap_all()
  left = [task for task in tasks if task.group_alive()]
  for task in left:
    task.signal_group(signal.SIGTERM)
  deadline = time.monotonic() + grace_secs
  while left and time.monotonic() < deadline and len(signals_received) == signals_before:
    time.sleep(POLL_SECS)
    reap_all()
    left = [task for task in left if task.group_alive()]
  for task in left:
    task.signal_group(signal.SIGKILL)
  for task in tasks:
    task.proc.wait()
  deadline = time.monotonic() + grace_secs
  while time.monotonic() < deadline:  # SIGKILLed descendants, until reaped.
    reap_all()
    if not any(task.group_alive() for task in left):
      break
    time.sleep(POLL_SECS)


def supervise(tasks, reap_all, signals_received):
  """Waits for the outcome: 0 when the chief and every worker exit 0, 1 when one of them fails
  or a ps task exits, 128 + the signal when the launcher gets SIGINT/SIGTERM."""
  while True:
    if signals_received:
      signum = signals_received[0]
      warn("got %s; stopping all tasks" % signal.Signals(signum).name)
      return 128 + signum
    reap_all()
    for task in tasks:
      if task.returncode is not None and (task.returncode != 0 or task.type == "ps"):
        warn("%s exited with %s; stopping the other tasks" %
             (task.name, exit_description(task.returncode)))
        return 1
    if all(task.returncode == 0 for task in tasks if task.type != "ps"):
      return 0
    time.sleep(POLL_SECS)


def run(args, command):
  """Starts the cluster, waits for its outcome, stops what is left; returns the exit code."""
  cluster = cluster_spec(args.workers, args.ps)
  tasks = [Task(task_type, index)
           for task_type, addresses in cluster.items() for index in range(len(addresses))]
  output = Output()
  output.line("launch_local: cluster %s" % json.dumps(cluster))
  orphans_too = become_subreaper()
  reap_all = lambda: reap(tasks, orphans_too)
  signals_received = []
  handler = lambda signum, unused_frame: signals_received.append(signum)
  previous = {signum: signal.signal(signum, handler)
              for signum in (signal.SIGINT, signal.SIGTERM)}
  started = []
  try:
    argv = task_command(command)
    exit_code = None
    for task in tasks:
      if signals_received:  # supervise() reports it.
        break
      try:
        task.start(argv, cluster, output, args.log_dir)
      except OSError as e:
        warn("cannot start %s (%s: %s); stopping the other tasks" % (task.name, argv[0], e))
        exit_code = 1
        break
      started.append(task)
    if exit_code is None:
      exit_code = supervise(started, reap_all, signals_received)
    stop_tasks(started, args.grace_secs, reap_all, signals_received, exit_code > 128)
    deadline = time.monotonic() + READER_JOIN_SECS
    for task in started:
      task.reader.join(max(0.0, deadline - time.monotonic()))
  finally:
    for signum, old_handler in previous.items():
      signal.signal(signum, old_handler)
  if exit_code == 0:
    output.line("launch_local: all %d tasks finished" % args.workers)
  return exit_code


def main(argv=None):
  args, command = parse_args(sys.argv[1:] if argv is None else list(argv))
  return run(args, command)


if __name__ == "__main__":
  sys.exit(main())
