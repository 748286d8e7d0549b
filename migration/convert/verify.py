"""`--verify`: runs the converted main script on the CPU, then with the NPU adapter's test double.

Each run is a separate process with the converted tree (and this package) on PYTHONPATH;
the verdict is read from what the run logs: the Estimator's "Saving checkpoints for N"
lines and the runtime's "migration: <Estimator> with <RunConfig> on <device>" line.
`{run}` in the arguments becomes a fresh folder per run (use it for --model_dir, so the
second run does not resume from the first one's checkpoint).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import migration

NPU_DOUBLES = os.path.join(os.path.dirname(os.path.abspath(migration.__file__)), "doubles")
# The doubles' folder holds npu_bridge and npu_device: the backend takes this stack's
# adapter (npu_bridge on TF 1.15, npu_device on TF 2.x).
RUNS = (("cpu", {"MIGRATION_DEVICE": "cpu"}, ()),
        ("npu double", {"MIGRATION_DEVICE": "npu"}, (NPU_DOUBLES,)))
_CHECKPOINT = re.compile(r"Saving checkpoints for (\d+) into (\S+?)\.?$", re.MULTILINE)
_ESTIMATOR = re.compile(r"migration: (\w+) with (\w+) on (npu via \w+|\w+)")


def _verdict(returncode, log):
  steps = _CHECKPOINT.findall(log)
  built = _ESTIMATOR.findall(log)
  parts = ["%s + %s on %s" % built[-1]] if built else []
  if steps:
    parts.append("trained to step %s (checkpoint %s)" % steps[-1])
  if returncode != 0:
    last = [line for line in log.splitlines() if line.strip()][-1:] or ["no output"]
    return False, "; ".join(parts + ["FAILED (exit %d): %s" % (returncode, last[0].strip())])
  if not steps:
    return False, "; ".join(parts + ["exited 0 but saved no checkpoint"])
  return True, "; ".join(parts)


def run(main_script, output_root, args, report_dir, timeout):
  """Runs both verification runs; prints and returns [(name, ok, verdict)]."""
  if "{run}" not in args:
    print("verify: the arguments have no {run}: both runs share their model folder, so the "
          "second resumes from the first's checkpoint")
  verdicts = []
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(migration.__file__)))
  for name, variables, extra_path in RUNS:
    run_dir = os.path.join(os.path.abspath(report_dir), "verify", name.replace(" ", "_"))
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh start, not a resumed earlier run
    os.makedirs(run_dir)
    env = dict(os.environ, **variables)
    env["PYTHONPATH"] = os.pathsep.join(
        list(extra_path) + [os.path.abspath(output_root), package_root] +
        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    command = [sys.executable, main_script] + shlex.split(args.replace("{run}", run_dir))
    print("verify (%s): %s" % (name, " ".join(shlex.quote(c) for c in command)), flush=True)
    log_path = os.path.join(report_dir, "verify_%s.log" % name.replace(" ", "_"))
    try:
      process = subprocess.run(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout,
                               universal_newlines=True)
      returncode, log = process.returncode, process.stdout
    except subprocess.TimeoutExpired as expired:
      returncode = -1
      log = (expired.stdout or b"").decode("utf-8", "replace") if isinstance(
          expired.stdout, bytes) else (expired.stdout or "")
      log += "\ntimed out after %d s" % timeout
    with open(log_path, "w") as f:
      f.write(log)
    ok, verdict = _verdict(returncode, log)
    print("verify (%s): %s  [log: %s]" % (name, verdict, log_path), flush=True)
    verdicts.append((name, ok, verdict))
  return verdicts
