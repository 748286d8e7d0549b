#!/usr/bin/env bash
# Ascend ModelZoo-style performance run (train only, short) on one device. -h for options.
run_kind=performance
source "$(dirname "$0")/launch_common.sh"
