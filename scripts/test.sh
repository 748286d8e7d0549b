#!/usr/bin/env bash
# Runs the test suite on one stack (setting the stack up first).
#   bash scripts/test.sh                 # fast tier, auto stack (see setup.sh)
#   STACK=tf2 bash scripts/test.sh       # fast tier on TF 2.15
#   bash scripts/test.sh --slow          # also the real-data tier (needs ../shared/data)
#   bash scripts/test.sh -- -k run_loop  # anything after -- goes to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
marker=(-m "not slow")
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --slow) marker=() ;;
    --only-slow) marker=(-m slow) ;;
    --) shift; extra=("$@"); break ;;
    *) echo "test.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
python_bin=$(bash setup.sh | tail -n 1)
exec "$python_bin" -m pytest -q "${marker[@]}" ${extra[@]+"${extra[@]}"}
