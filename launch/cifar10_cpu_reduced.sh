#!/usr/bin/env bash
# REDUCED CPU version of launch/cifar10_gpu.sh (no GPU here): the same code path
# (resnet18, CIFAR-10 builder, on-device crop+flip, BN, F computed inside the parity
# step, concat k=2, evaluation) on a subset: 2,000 training images, 1,000 test
# images, 2 base epochs and 2 parity epochs. Its accuracies say nothing about the
# full run; its speeds are CPU speeds. Usage: launch/cifar10_cpu_reduced.sh [ROOT]
set -euo pipefail
root=${1:-workdirs/cifar10_cpu_reduced}
subset=(--config.data.train_limit=2000 --config.data.test_limit=1000 --config.data.num_val=1000
        --config.progress_bar=False --config.steps_per_call=8)
python -m pmjax.train --config=configs/cifar10.py:stage=base,base_epochs=2 \
  --workdir="$root/base" "${subset[@]}" --config.base.batch_size=128
python -m pmjax.train --config=configs/cifar10.py:stage=parity,k=2,code=concat,epochs=2 \
  --config.base_workdir="$root/base" --workdir="$root/concat_k2" "${subset[@]}"
python -m pmjax.evaluate --workdir="$root/base"
python -m pmjax.evaluate --workdir="$root/concat_k2"
python launch/epoch_stats.py "$root/base" "$root/concat_k2"
