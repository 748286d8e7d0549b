#!/usr/bin/env bash
# Shared body of the Ascend ModelZoo launch scripts (train_full_1p.sh,
# train_performance_1p.sh); sourced by them after they set `run_kind` (full|performance).
# They run as scripts/<script> --model=NAME, or as modelzoo/<model>/test/<script> (symlinks
# to scripts/), where the folder names the model, as in the ModelZoo seeds.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
script="$(basename "$0")"
python_bin="${PYTHON:-python3}"

die() { echo "$script: $*" >&2; exit 2; }
known_models() {
  (cd "$repo" && "$python_bin" -c 'from estimators import registry; print(" ".join(sorted(registry.MODELS)))')
}

usage() {
  cat <<USAGE
usage: bash $script --data_path=DIR [options] [-- extra model flags]
Every option takes --name=VALUE or --name VALUE. Relative paths (here and after --) are
taken from the current folder.
  --model=NAME              required when run from scripts/ (from modelzoo/<model>/test/
                            the folder names it); one of: $(known_models)
  --data_path=DIR           data folder (passed as --data_dir; masf takes a PACS root
                            with kfold/ there too)
  --output_path=DIR         output root (default ./output); the run writes to
                            DIR/\$ASCEND_DEVICE_ID/ (OUT below)
  --precision_mode=MODE     allow_fp32_to_fp16 | force_fp16 | must_keep_origin_dtype |
                            allow_mix_precision (and the other NPU modes)
  --fusion_switch_file=FILE fusion switch JSON (-> --fusion_switch_file), e.g.
                            modelzoo/<model>/configs/fusion_switch.cfg; default none
  --mixlist_file=FILE       mixed-precision list JSON (-> --modify_mixlist; needs an
                            allow_mix_precision mode), e.g. modelzoo/<model>/configs/ops_info.json;
                            default none
  --over_dump=True|False    overflow dump (default False)
  --data_dump_flag=True|False  data dump (default False). The NPU has one dump folder:
                            data dump alone -> OUT/data_dump, overflow dump alone ->
                            OUT/overflow_dump, both -> OUT/dump
  --data_dump_step=STEPS    steps to data-dump, e.g. 10 or 0|5|10 (default 10)
  --profiling=True|False    profiling to OUT/profiling (default False)
  --batch_size=N            training batch size
  --train_steps=N           training steps (performance run: default 100)
  --train_epochs=N          training epochs (not with --train_steps)
  -h, --help                this help
Runs: train_full_1p.sh trains and evaluates (the model's default mode), resuming from
OUT/ckpt. train_performance_1p.sh trains only (--mode=train) in OUT/ckpt_performance, which
it empties first, so it never continues a full run.
Output: each run writes OUT/train_<id>_<full|performance>_<YYYYmmdd-HHMMSS>.log and a
summary .json of the same name (flags, images/sec, accuracy, duration, exit code);
OUT/train_<id>.log links to the newest log.
Environment: ASCEND_DEVICE_ID (default 0), PYTHON (default python3); RANK_SIZE=1,
RANK_ID=0 and JOB_ID=10087 are exported as in the ModelZoo scripts.
USAGE
}

model="" data_path="" output_path="./output" precision_mode="" fusion_switch_file=""
mixlist_file="" over_dump=False data_dump_flag=False data_dump_step=10 profiling=False
batch_size="" train_steps="" train_epochs="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    --*=*) name="${1%%=*}" value="${1#*=}" ;;
    --*)
      name="$1" value="${2-}"
      case "$value" in ""|--*) die "$name needs a value ($name=VALUE or $name VALUE; see -h)" ;; esac
      shift ;;
    *) die "unknown argument $1 (see -h)" ;;
  esac
  case "$name" in
    --model) model="$value" ;;
    --data_path) data_path="$value" ;;
    --output_path) output_path="$value" ;;
    --precision_mode) precision_mode="$value" ;;
    --fusion_switch_file) fusion_switch_file="$value" ;;
    --mixlist_file) mixlist_file="$value" ;;
    --over_dump) over_dump="$value" ;;
    --data_dump_flag) data_dump_flag="$value" ;;
    --data_dump_step) data_dump_step="$value" ;;
    --profiling) profiling="$value" ;;
    --batch_size) batch_size="$value" ;;
    --train_steps) train_steps="$value" ;;
    --train_epochs) train_epochs="$value" ;;
    *) die "unknown option $name (see -h)" ;;
  esac
  shift
done

# The model named by the folder when run as modelzoo/<model>/test/<script>: from $0 itself,
# not from the file the symlink points to.
invoked_dir="$(cd "$(dirname "$0")" && pwd)"
folder_model=""
if [ "$(basename "$invoked_dir")" = test ] && \
   [ "$(basename "$(dirname "$(dirname "$invoked_dir")")")" = modelzoo ]; then
  folder_model="$(basename "$(dirname "$invoked_dir")")"
fi
if [ -n "$folder_model" ] && [ -n "$model" ] && [ "$model" != "$folder_model" ]; then
  die "--model=$model contradicts the folder modelzoo/$folder_model/ (omit --model there)"
fi
model="${model:-$folder_model}"
[ -n "$model" ] || die "--model=NAME is required when run from scripts/; one of: $(known_models)"
case " $(known_models) " in
  *" $model "*) ;;
  *) die "--model=$model is not a registered model; expected one of: $(known_models)" ;;
esac

is_true() {
  case "$2" in
    True|true|1) return 0 ;;
    False|false|0) return 1 ;;
    *) die "$1=$2 is not a boolean; expected True or False" ;;
  esac
}
dump_data=false dump_overflow=false run_profiling=false
is_true --data_dump_flag "$data_dump_flag" && dump_data=true
is_true --over_dump "$over_dump" && dump_overflow=true
is_true --profiling "$profiling" && run_profiling=true

# Paths are made absolute against the caller's folder, and the run starts there too (no cd),
# so a relative path, here or after --, names the same file to the checks and to the run.
[ -n "$data_path" ] || die "--data_path=DIR is required (see -h)"
data_path="$(realpath -m -- "$data_path")"
[ -e "$data_path" ] || die "--data_path=$data_path does not exist"
absolute_file() {  # absolute_file FLAG PATH: PATH made absolute; it must be a file
  local path
  path="$(realpath -m -- "$2")"
  [ -f "$path" ] || die "$1=$path is not a file"
  echo "$path"
}
[ -z "$fusion_switch_file" ] || fusion_switch_file="$(absolute_file --fusion_switch_file "$fusion_switch_file")"
[ -z "$mixlist_file" ] || mixlist_file="$(absolute_file --mixlist_file "$mixlist_file")"

export RANK_SIZE=1 RANK_ID=0 JOB_ID=10087
export ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
out="$(realpath -m -- "$output_path")/$ASCEND_DEVICE_ID"
mkdir -p "$out"
log="$out/train_${ASCEND_DEVICE_ID}_${run_kind}_$(date +%Y%m%d-%H%M%S).log"
summary="${log%.log}.json"

if [ "$run_kind" = performance ]; then
  model_dir="$out/ckpt_performance"
  rm -rf "$model_dir"  # a performance run measures training from scratch
  args=(--data_dir="$data_path" --model_dir="$model_dir" --mode=train)
  [ -n "$train_steps$train_epochs" ] || train_steps=100
else
  args=(--data_dir="$data_path" --model_dir="$out/ckpt")
fi
[ -n "$precision_mode" ] && args+=(--precision_mode="$precision_mode")
[ -n "$fusion_switch_file" ] && args+=(--fusion_switch_file="$fusion_switch_file")
[ -n "$mixlist_file" ] && args+=(--modify_mixlist="$mixlist_file")
[ -n "$batch_size" ] && args+=(--train_batch_size="$batch_size")
[ -n "$train_steps" ] && args+=(--train_steps="$train_steps")
[ -n "$train_epochs" ] && args+=(--train_epochs="$train_epochs")
# DumpConfig has one dump_path, shared by the data and the overflow dump.
if $dump_data && $dump_overflow; then
  args+=(--enable_dump --enable_dump_debug --dump_path="$out/dump" --dump_step="$data_dump_step")
elif $dump_data; then
  args+=(--enable_dump --dump_path="$out/data_dump" --dump_step="$data_dump_step")
elif $dump_overflow; then
  args+=(--enable_dump_debug --dump_path="$out/overflow_dump")
fi
$run_profiling && args+=(--enable_profiling --profiling_options="{\"output\":\"$out/profiling\",\"training_trace\":\"on\",\"task_trace\":\"on\",\"aicpu\":\"on\",\"fp_point\":\"\",\"bp_point\":\"\",\"aic_metrics\":\"PipeUtilization\"}")
args+=(${extra[@]+"${extra[@]}"})

# train_<id>.log (the seeds' path) links to the newest run's log; a plain file left by an
# older launcher is kept under its own date.
latest="$out/train_$ASCEND_DEVICE_ID.log"
if [ -f "$latest" ] && [ ! -L "$latest" ]; then
  mv "$latest" "$out/train_${ASCEND_DEVICE_ID}_earlier_$(date -r "$latest" +%Y%m%d-%H%M%S).log"
fi
ln -sfn "$(basename "$log")" "$latest"

echo "$script: $model on device $ASCEND_DEVICE_ID, log $log"
start=$(date +%s)
set +e
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python_bin" -m estimators "$model" "${args[@]}" \
  > "$log" 2>&1
code=$?
set -e
end=$(date +%s)
"$python_bin" "$repo/tools/modelzoo_report.py" --model="$model" --run_kind="$run_kind" \
  --log="$log" --summary="$summary" --start="$start" --end="$end" --exit_code="$code" \
  -- "${args[@]}"
if [ $code -ne 0 ]; then
  tail -n 20 "$log" >&2
  echo "$script: training failed (exit $code); full log: $log" >&2
  exit $code
fi
