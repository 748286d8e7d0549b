#!/usr/bin/env bash
# Ascend ModelZoo-style performance run (train only, short) on one device. -h for options.
run_kind=performance
script_rank_size=1
# readlink -f: modelzoo/<model>/test/ holds symlinks to this file.
source "$(dirname "$(readlink -f "$0")")/launch_common.sh"
