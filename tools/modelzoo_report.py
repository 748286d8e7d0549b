"""The ModelZoo summary of one launcher run: prints its lines and writes its summary JSON.

    python tools/modelzoo_report.py --model=vit --run_kind=full --log=OUT/train_0_full_....log \
        --summary=OUT/train_0_full_....json --start=EPOCH --end=EPOCH --exit_code=0 \
        -- <the flags the run was given>

Called by scripts/launch_common.sh after every run. The numbers come from the run's own
closing `Final metrics: {json}` line (estimators/run_loop.py): `examples_per_sec`, the
steady-state training throughput the run measured, and the model's headline figure
(`headline_metric`, the key holding it, and `headline_meaning`). A successful run prints:

    Final Performance images/sec : 812.35
    Final Train Accuracy : 0.9132
    Accuracy meaning : top-1 accuracy on the validation split
    E2E Training Duration sec : 73

A performance run trains only, so its accuracy line says it was not evaluated. A failed run
prints nothing (the launcher shows the log's tail) but still gets its summary JSON.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from estimators import registry  # pylint: disable=g-import-not-at-top

# estimators.run_loop.FINAL_METRICS_PREFIX (not imported: that would import TensorFlow).
FINAL_METRICS_PREFIX = "Final metrics: "
NPU_COMPILED_LINE = "The model has been compiled on the Ascend AI processor"
RUN_KINDS = ("full", "performance")


def final_metrics(log_text):
  """The dict of the log's last `Final metrics: {json}` line, or None."""
  lines = [l for l in log_text.splitlines() if l.startswith(FINAL_METRICS_PREFIX)]
  return json.loads(lines[-1][len(FINAL_METRICS_PREFIX):]) if lines else None


def build_summary(model, run_kind, log_path, python_args, start, end, exit_code):
  """The per-run summary (written as JSON beside the log)."""
  with open(log_path, errors="replace") as f:
    log_text = f.read()
  metrics = final_metrics(log_text) or {}
  accuracy = accuracy_metric = accuracy_meaning = None
  if run_kind == "full":
    accuracy_metric = metrics.get("headline_metric")
    accuracy_meaning = metrics.get("headline_meaning")
    accuracy = metrics.get(accuracy_metric)
  return {
      "model": model,
      "run_kind": run_kind,
      "python_args": list(python_args),
      "examples_per_sec": metrics.get("examples_per_sec"),
      "accuracy": accuracy,
      "accuracy_metric": accuracy_metric,
      "accuracy_meaning": accuracy_meaning,
      "global_step": metrics.get("global_step"),
      "duration_sec": end - start,
      "exit_code": exit_code,
      "log": log_path,
      "ran_on_npu": NPU_COMPILED_LINE in log_text,
  }


def report_lines(summary):
  """The ModelZoo lines (notes first) of a successful run's summary."""
  lines = []
  if not summary["ran_on_npu"]:
    lines.append("Note: no '%s' line: this run did not use an NPU." % NPU_COMPILED_LINE)
  fps = summary["examples_per_sec"]
  if fps is None:
    lines.append("Note: the run's final metrics carry no examples_per_sec, so images/sec "
                 "is not known.")
  if summary["run_kind"] == "full" and summary["accuracy"] is None:
    lines.append("Note: the run's final metrics carry no headline figure (no evaluation).")
  lines.append("Final Performance images/sec : %s" % ("None" if fps is None else "%.2f" % fps))
  if summary["run_kind"] == "performance":
    lines.append("Final Train Accuracy : not evaluated in a performance run")
  else:
    accuracy = summary["accuracy"]
    lines.append("Final Train Accuracy : %s" % (
        "%.4f" % accuracy if isinstance(accuracy, float) else accuracy))
    lines.append("Accuracy meaning : %s" % summary["accuracy_meaning"])
  lines.append("E2E Training Duration sec : %d" % summary["duration_sec"])
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, choices=registry.names())
  parser.add_argument("--run_kind", required=True, choices=RUN_KINDS)
  parser.add_argument("--log", required=True, help="the run's log file")
  parser.add_argument("--summary", required=True, help="summary JSON to write")
  parser.add_argument("--start", required=True, type=int, help="start, epoch seconds")
  parser.add_argument("--end", required=True, type=int, help="end, epoch seconds")
  parser.add_argument("--exit_code", required=True, type=int, help="the run's exit code")
  parser.add_argument("python_args", nargs="*", help="the flags the run was given (after --)")
  args = parser.parse_args(argv)
  summary = build_summary(args.model, args.run_kind, args.log, args.python_args, args.start,
                          args.end, args.exit_code)
  with open(args.summary, "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write("\n")
  if args.exit_code == 0:
    print("\n".join(report_lines(summary)))


if __name__ == "__main__":
  main()
