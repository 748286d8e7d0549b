#!/usr/bin/env bash
# The README's first command: AmoebaNet-D end to end on a small real dataset, on this machine.
#  1. sets up the Python environment (setup.sh; STACK=tf1|tf2 to choose),
#  2. builds ImageNet-format tfrecords from scikit-learn's handwritten digits (real scans
#     shipped inside the scikit-learn package; 10 classes, labels 1..10 as ImageNet's 1..1000),
#  3. trains AmoebaNet-D (a small N3/F16 configuration, 64 px) with --mode=train_and_eval,
#  4. evaluates the last checkpoint in a new process (--mode=eval), printing top-1/top-5.
# About 3-5 minutes on 2 CPU cores after setup. Output goes to ${WORK_DIR:-runs/quickstart}.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=$(bash setup.sh | tail -n 1)
work="${WORK_DIR:-runs/quickstart}"
rm -rf "$work/model"
"$python_bin" tools/make_digits_dataset.py --output_dir="$work/digits" --image_size=64 --overwrite
common=(--data_dir="$work/digits" --model_dir="$work/model"
        --num_cells=3 --reduction_size=16 --stem_reduction_size=16 --image_size=64
        --num_label_classes=11 --num_train_images=1438 --num_eval_images=359
        --train_batch_size=32 --eval_batch_size=40 --use_aux_head=false --label_smoothing=0)
"$python_bin" amoeba_net.py --mode=train_and_eval "${common[@]}" \
  --num_epochs=30 --num_epochs_per_eval=15 --optimizer=momentum --lr=0.2 \
  --lr_warmup_epochs=0.5 --lr_decay_value=0.85 --dense_dropout_keep_prob=1.0 \
  --log_step_count_steps=200
echo "--- evaluation-only run from the checkpoint, in a new process:"
"$python_bin" amoeba_net.py --mode=eval "${common[@]}" 2>&1 | grep -E "^(AmoebaNet-D eval|Final metrics)"
