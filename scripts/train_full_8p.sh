#!/usr/bin/env bash
# Ascend ModelZoo-style full training (train_and_eval) on 8 devices (or --rank_size), one
# process per rank of the rank table. -h for options.
run_kind=full
script_rank_size=8
# readlink -f: modelzoo/<model>/test/ holds symlinks to this file.
source "$(dirname "$(readlink -f "$0")")/launch_common.sh"
