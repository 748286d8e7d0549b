#!/usr/bin/env bash
# Ascend ModelZoo-style full training (train_and_eval) on one device. -h for options.
run_kind=full
script_rank_size=1
# readlink -f: modelzoo/<model>/test/ holds symlinks to this file.
source "$(dirname "$(readlink -f "$0")")/launch_common.sh"
