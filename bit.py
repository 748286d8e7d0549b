"""`python bit.py --mode=train_and_eval --data_dir=... --model_dir=...` (--help: the flags)."""
from estimators import run_loop

if __name__ == "__main__":
  run_loop.main("bit")
