#!/usr/bin/env bash
# Shared body of the Ascend ModelZoo launch scripts (train_{full,performance}_{1p,8p}.sh);
# sourced by them after they set `run_kind` (full|performance) and `script_rank_size` (1 for
# one device, 8 for the multi-device scripts, which start one process per rank).
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
  --output_path=DIR         output root (default ./output); each device's run writes to
                            DIR/<its device id>/ (OUT below)
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
  --batch_size=N            training batch size; with N devices the global batch, of which
                            each device takes 1/N (N must divide it)
  --train_steps=N           training steps (performance run: default 100)
  --train_epochs=N          training epochs (not with --train_steps)
  --rank_size=N             devices, one process (rank) each: default 8 for the _8p scripts;
                            the _1p scripts take only 1
  --rank_table=FILE         rank table JSON (version 1.0, one server) listing the N devices;
                            default \$RANK_TABLE_FILE; required by the _8p scripts, ignored
                            by the _1p ones
  -h, --help                this help
Runs: train_full_*.sh trains and evaluates (the model's default mode), resuming from
OUT/ckpt. train_performance_*.sh trains only (--mode=train) in OUT/ckpt_performance, which
it empties first, so it never continues a full run.
Devices: the _1p scripts run one process on \$ASCEND_DEVICE_ID (default 0). The _8p scripts
check the rank table before starting anything, then start one process per rank 0..N-1,
each with RANK_ID and ASCEND_DEVICE_ID (that rank's device_id in the table); rank 0's run
is the run (its closing lines are printed; the other ranks start from its variables). If a
rank fails, the others are stopped and the script exits with the failed rank's exit code.
Output: each process writes OUT/train_<id>_<full|performance>_<YYYYmmdd-HHMMSS>.log and a
summary .json of the same name (flags, images/sec, accuracy, duration, exit code);
OUT/train_<id>.log links to the newest log.
Environment: PYTHON (default python3). As in the ModelZoo scripts, RANK_SIZE, JOB_ID=10087
and (_8p) RANK_TABLE_FILE are exported, RANK_ID and ASCEND_DEVICE_ID set per process.
USAGE
}

model="" data_path="" output_path="./output" precision_mode="" fusion_switch_file=""
mixlist_file="" over_dump=False data_dump_flag=False data_dump_step=10 profiling=False
batch_size="" train_steps="" train_epochs="" rank_size="$script_rank_size" rank_table=""
extra=()
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
    --rank_size) rank_size="$value" ;;
    --rank_table) rank_table="$value" ;;
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

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$rank_size" || die "--rank_size=$rank_size is not a positive integer"
if [ -n "$batch_size" ]; then
  is_count "$batch_size" || die "--batch_size=$batch_size is not a positive integer"
  [ $((batch_size % rank_size)) -eq 0 ] || die "--batch_size=$batch_size is the global" \
    "batch and does not divide over $rank_size devices; expected a multiple of $rank_size"
fi

# The device of each rank 0..N-1 (after the rank table's checks; exits 2 on a bad table).
rank_devices() {  # rank_devices TABLE N
  (cd "$repo" && "$python_bin" - "$script" "$1" "$2" <<'PY'
import sys
from migration import validation
script, path, rank_size = sys.argv[1:]
try:
  servers = validation.check_rank_table_file(path, rank_size)["server_list"]
  if len(servers) != 1:
    raise validation.ConfigError("RANK_TABLE_FILE %s lists %d servers; this launcher starts "
                                 "the ranks of one server" % (path, len(servers)))
except validation.ConfigError as e:
  sys.stderr.write("%s: %s\n" % (script, e))
  sys.exit(2)
device_of = {int(d["rank_id"]): str(int(d["device_id"])) for d in servers[0]["device"]}
print(" ".join(device_of[rank] for rank in range(len(device_of))))
PY
  )
}
if [ "$script_rank_size" -eq 1 ]; then
  [ "$rank_size" -eq 1 ] || die "--rank_size=$rank_size: $script trains on one device;" \
    "use ${script/_1p/_8p} for more"
  devices=("${ASCEND_DEVICE_ID:-0}")
  unset RANK_TABLE_FILE  # one device needs no rank table, whatever the shell has set
else
  rank_table="${rank_table:-${RANK_TABLE_FILE:-}}"
  [ -n "$rank_table" ] || die "--rank_table=FILE (or RANK_TABLE_FILE) is required: the rank" \
    "table of the $rank_size devices"
  rank_table="$(absolute_file --rank_table "$rank_table")"
  device_list="$(rank_devices "$rank_table" "$rank_size")" || exit 2
  read -r -a devices <<< "$device_list"
  export RANK_TABLE_FILE="$rank_table"
fi
export RANK_SIZE="$rank_size" JOB_ID=10087
output_root="$(realpath -m -- "$output_path")"
stamp="$(date +%Y%m%d-%H%M%S)"
log_of() { echo "$output_root/$1/train_$1_${run_kind}_$stamp.log"; }
[ "$run_kind" != performance ] || [ -n "$train_steps$train_epochs" ] || train_steps=100

# The run's flags on device $1 (in `args`) and its folder OUT (in `out`).
device_args() {
  out="$output_root/$1"
  if [ "$run_kind" = performance ]; then
    args=(--data_dir="$data_path" --model_dir="$out/ckpt_performance" --mode=train)
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
}

# OUT of rank $1 on device $2 made ready for its run: its log started and linked.
prepare_device() {
  local rank_id="$1" device_id="$2" log latest
  device_args "$device_id"
  log="$(log_of "$device_id")"
  mkdir -p "$out"
  if [ "$run_kind" = performance ]; then
    rm -rf "$out/ckpt_performance"  # a performance run measures training from scratch
  fi
  : > "$log"
  # train_<id>.log (the seeds' path) links to the newest run's log; a plain file left by an
  # older launcher is kept under its own date.
  latest="$out/train_$device_id.log"
  if [ -f "$latest" ] && [ ! -L "$latest" ]; then
    mv "$latest" "$out/train_${device_id}_earlier_$(date -r "$latest" +%Y%m%d-%H%M%S).log"
  fi
  ln -sfn "$(basename "$log")" "$latest"
  echo "$script: $model, rank $rank_id of $RANK_SIZE on device $device_id, log $log"
}

# The training process of rank $1 on device $2 (exits with its exit code).
run_device() {
  device_args "$2"
  RANK_ID="$1" ASCEND_DEVICE_ID="$2" PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" \
    "$python_bin" -m estimators "$model" "${args[@]}" > "$(log_of "$2")" 2>&1
}

# The summary JSON of rank $1's run on device $2 (exit code $3, ended at $4); the closing
# lines are rank 0's, whose run prints the final metrics.
report_device() {
  local log report
  device_args "$2"
  log="$(log_of "$2")"
  report=("$python_bin" "$repo/tools/modelzoo_report.py" --model="$model"
          --run_kind="$run_kind" --log="$log" --summary="${log%.log}.json" --start="$start"
          --end="$4" --exit_code="$3" -- "${args[@]}")
  if [ "$1" -eq 0 ]; then "${report[@]}"; else "${report[@]}" > /dev/null; fi
}

# One background job per rank, each in its own process group (set -m), so that stopping a
# rank stops its training process and whatever that started.
rank_pids=()
stop_ranks() {
  local pid
  for pid in "${rank_pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
}
interrupted() {  # interrupted EXIT_CODE
  stop_ranks
  wait
  echo "$script: interrupted; training stopped" >&2
  exit "$1"
}
trap 'interrupted 130' INT
trap 'interrupted 143' TERM
for rank in "${!devices[@]}"; do
  prepare_device "$rank" "${devices[rank]}"
done
start=$(date +%s)
set -m
for rank in "${!devices[@]}"; do
  run_device "$rank" "${devices[rank]}" < /dev/null &
  rank_pids+=($!)
done
set +m

# Waits for every rank (polling: `wait -n` needs bash 4.3); the first to fail stops the rest.
rank_codes=() rank_ends=() failed_rank="" running=("${!rank_pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  sleep 0.2
  still_running=()
  for rank in "${running[@]}"; do
    if kill -0 "${rank_pids[rank]}" 2>/dev/null; then
      still_running+=("$rank")
      continue
    fi
    code=0
    wait "${rank_pids[rank]}" || code=$?
    rank_codes[rank]=$code rank_ends[rank]=$(date +%s)
    if [ "$code" -ne 0 ] && [ -z "$failed_rank" ]; then
      failed_rank="$rank"
      stop_ranks
    fi
  done
  running=(${still_running[@]+"${still_running[@]}"})
done
for rank in "${!devices[@]}"; do
  report_device "$rank" "${devices[rank]}" "${rank_codes[rank]}" "${rank_ends[rank]}"
done
if [ -n "$failed_rank" ]; then
  code="${rank_codes[failed_rank]}" device="${devices[failed_rank]}"
  log="$(log_of "$device")"
  tail -n 20 "$log" >&2
  if [ "$rank_size" -eq 1 ]; then
    echo "$script: training failed (exit $code); full log: $log" >&2
  else
    echo "$script: rank $failed_rank (device $device) failed (exit $code); log: $log" >&2
  fi
  exit "$code"
fi
