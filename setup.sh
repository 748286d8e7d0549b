#!/usr/bin/env bash
# Makes the Python environment for one TensorFlow stack, idempotently.
#   bash setup.sh                # auto: TF 1.15 if a Python 3.7 is found, else TF 2.15
#   bash setup.sh --stack=tf1    # TF 1.15.5 on Python 3.7   -> .venv-tf1
#   bash setup.sh --stack=tf2    # TF 2.15.1 on Python 3.9-3.11 -> .venv-tf2
# STACK=tf1|tf2 in the environment does the same as --stack. Prints the venv's python path
# as its last line. Re-running is cheap: the install is skipped while requirements and
# pyproject.toml match. The project is installed editable (`import migration` works anywhere).
set -euo pipefail
cd "$(dirname "$0")"
stack="${STACK:-auto}"
for arg in "$@"; do
  case "$arg" in
    --stack=*) stack="${arg#--stack=}" ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (expected --stack=tf1|tf2|auto)" >&2; exit 2 ;;
  esac
done

find_python() {  # find_python 3.7 [3.8 ...]: the first interpreter of those versions
  local v cand
  for v in "$@"; do
    for cand in "python$v" "$(command -v pyenv >/dev/null 2>&1 && pyenv root)/versions/$v"*/bin/python; do
      if [ -x "$(command -v "$cand" 2>/dev/null)" ] && \
         "$cand" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
        command -v "$cand"; return 0
      fi
    done
  done
  return 1
}

if [ "$stack" = auto ]; then
  if find_python 3.7 >/dev/null; then stack=tf1; else stack=tf2; fi
fi
case "$stack" in
  tf1) python_bin=$(find_python 3.7) || { echo "setup.sh: TF 1.15 needs Python 3.7, none found" >&2; exit 1; }
       requirements=requirements.txt ;;
  tf2) python_bin=$(find_python 3.11 3.10 3.9) || { echo "setup.sh: TF 2.15 needs Python 3.9-3.11, none found" >&2; exit 1; }
       requirements=requirements-tf2.txt ;;
  *) echo "setup.sh: --stack=$stack is not tf1, tf2 or auto" >&2; exit 2 ;;
esac

venv=".venv-$stack"
stamp="$venv/.requirements.sha256"
want=$(cat "$requirements" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup.sh: creating $venv with $python_bin ($requirements)" >&2
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2 || true
  "$venv/bin/python" -m pip install --quiet -r "$requirements" >&2
  # the project itself, editable; -qq hides setuptools' "editable installation" notice, not errors
  "$venv/bin/python" -m pip install --quiet --quiet --no-deps -e . >&2
  "$venv/bin/python" -c "import tensorflow as tf; print('setup.sh: TensorFlow', tf.__version__)" >&2
  echo "$want" > "$stamp"
fi
echo "$PWD/$venv/bin/python"
