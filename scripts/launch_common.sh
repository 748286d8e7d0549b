#!/usr/bin/env bash
# Shared body of the Ascend ModelZoo launch scripts (train_full_1p.sh,
# train_performance_1p.sh); sourced by them after they set `run_kind` (full|performance).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<USAGE
usage: bash $(basename "$0") --model=NAME --data_path=DIR [options] [-- extra model flags]
  --model=NAME            one of: amoeba_net protoattend masf vit bit
  --data_path=DIR         data folder (passed as --data_dir)
  --output_path=DIR       logs and checkpoints go to DIR/\$ASCEND_DEVICE_ID/ (default ./output)
  --precision_mode=MODE   allow_fp32_to_fp16 | force_fp16 | must_keep_origin_dtype |
                          allow_mix_precision (and the other NPU modes)
  --over_dump=True        overflow dump to DIR/\$ASCEND_DEVICE_ID/overflow_dump
  --data_dump_flag=True   data dump to DIR/\$ASCEND_DEVICE_ID/data_dump
  --data_dump_step=STEPS  steps to dump (default 10)
  --profiling=True        profiling to DIR/\$ASCEND_DEVICE_ID/profiling
  --batch_size=N          training batch size
  --train_steps=N         training steps (performance run: default 100)
  --train_epochs=N        training epochs (models with --num_epochs)
  -h, --help              this help
Environment: ASCEND_DEVICE_ID (default 0), PYTHON (default python3); RANK_SIZE=1,
RANK_ID=0 and JOB_ID=10087 are exported as in the ModelZoo scripts.
USAGE
}

model="" data_path="" output_path="./output" precision_mode="" over_dump=False
data_dump_flag=False data_dump_step=10 profiling=False batch_size="" train_steps=""
train_epochs="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model=*) model="${1#*=}" ;;
    --data_path=*) data_path="${1#*=}" ;;
    --output_path=*) output_path="${1#*=}" ;;
    --precision_mode=*) precision_mode="${1#*=}" ;;
    --over_dump=*) over_dump="${1#*=}" ;;
    --data_dump_flag=*) data_dump_flag="${1#*=}" ;;
    --data_dump_step=*) data_dump_step="${1#*=}" ;;
    --profiling=*) profiling="${1#*=}" ;;
    --batch_size=*) batch_size="${1#*=}" ;;
    --train_steps=*) train_steps="${1#*=}" ;;
    --train_epochs=*) train_epochs="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "$(basename "$0"): unknown argument $1 (see -h)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$model" ] || { echo "$(basename "$0"): --model is required (see -h)" >&2; exit 2; }
[ -f "$repo/$model.py" ] || { echo "$(basename "$0"): no entry script $repo/$model.py for --model=$model" >&2; exit 2; }
[ -n "$data_path" ] || { echo "$(basename "$0"): --data_path is required (see -h)" >&2; exit 2; }
[ -e "$data_path" ] || { echo "$(basename "$0"): --data_path=$data_path does not exist" >&2; exit 2; }
is_true() { case "$1" in True|true|1) return 0 ;; *) return 1 ;; esac; }

export RANK_SIZE=1 RANK_ID=0 JOB_ID=10087
export ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
out="$output_path/$ASCEND_DEVICE_ID"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/train_$ASCEND_DEVICE_ID.log"

args=(--data_dir="$data_path" --model_dir="$out/ckpt")
if [ "$run_kind" = performance ]; then
  args+=(--mode=train)
  [ -n "$train_steps$train_epochs" ] || train_steps=100
fi
[ -n "$precision_mode" ] && args+=(--precision_mode="$precision_mode")
[ -n "$batch_size" ] && args+=(--train_batch_size="$batch_size")
[ -n "$train_steps" ] && args+=(--train_steps="$train_steps")
[ -n "$train_epochs" ] && args+=(--num_epochs="$train_epochs")
is_true "$over_dump" && args+=(--enable_dump_debug --dump_path="$out/overflow_dump")
is_true "$data_dump_flag" && args+=(--enable_dump --dump_path="$out/data_dump" --dump_step="$data_dump_step")
is_true "$profiling" && args+=(--enable_profiling --profiling_options="{\"output\":\"$out/profiling\",\"training_trace\":\"on\",\"task_trace\":\"on\",\"aicpu\":\"on\",\"fp_point\":\"\",\"bp_point\":\"\",\"aic_metrics\":\"PipeUtilization\"}")

echo "$(basename "$0"): $model on device $ASCEND_DEVICE_ID, log $log"
start=$(date +%s)
set +e
(cd "$repo" && "${PYTHON:-python3}" "$model.py" "${args[@]}" ${extra[@]+"${extra[@]}"}) > "$log" 2>&1
code=$?
set -e
end=$(date +%s)
if [ $code -ne 0 ]; then
  tail -n 20 "$log" >&2
  echo "$(basename "$0"): training failed (exit $code); full log: $log" >&2
  exit $code
fi

# The ModelZoo summary lines, from the run loop's progress and final-metrics lines.
# (The mean of the last 10 examples/sec lines; top-1 style accuracy from the final line.)
fps=$( (grep -o '[0-9.]* examples/sec' "$log" || true) | tail -n 10 | \
  awk '{s+=$1; n++} END {if (n) printf "%.2f", s/n}')
accuracy=$( (grep '^Final metrics: ' "$log" || true) | tail -n 1 | sed 's/^Final metrics: //' | \
  "${PYTHON:-python3}" -c 'import json,sys
text = sys.stdin.read().strip()
m = json.loads(text) if text else {}
print(next((m[k] for k in ("top_1_accuracy", "accuracy") if k in m), "None"))')
grep -q "The model has been compiled on the Ascend AI processor" "$log" || \
  echo "Note: no 'compiled on the Ascend AI processor' line: this run did not use an NPU."
echo "Final Performance images/sec : ${fps:-None}"
echo "Final Train Accuracy : $accuracy"
echo "E2E Training Duration sec : $((end - start))"
