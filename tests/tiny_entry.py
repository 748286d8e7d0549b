"""`python -m tests.tiny_entry --model_dir=...`: the run loop on the tiny test model."""
from estimators import run_loop
from tests import tiny_model  # pylint: disable=unused-import  (registers "tiny")

if __name__ == "__main__":
  run_loop.main("tiny")
