"""`python -m estimators MODEL [--flags]`: any registered model through the run loop (the
launch scripts use it; `python <model>.py` is the same run under the seed pages' names)."""
import sys

from estimators import registry
from estimators import run_loop

if __name__ == "__main__":
  if len(sys.argv) < 2 or sys.argv[1] not in registry.MODELS:
    raise SystemExit("usage: python -m estimators MODEL [--flag=value ...]; MODEL is one "
                     "of: %s" % ", ".join(sorted(registry.MODELS)))
  model_name = sys.argv.pop(1)
  run_loop.main(model_name)
