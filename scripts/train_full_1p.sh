#!/usr/bin/env bash
# Ascend ModelZoo-style full training (train_and_eval) on one device. -h for options.
run_kind=full
source "$(dirname "$0")/launch_common.sh"
