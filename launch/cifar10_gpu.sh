#!/usr/bin/env bash
# CIFAR-10 resnet18 on a GPU: base model (200 epochs, SGD+Nesterov, cosine, crop+flip),
# then a k=2 concat parity model, evaluation, and per-epoch speed. Meant for a GPU
# session; a full run takes hours on one GPU. EPOCHS / PARITY_EPOCHS shorten it.
# Usage: launch/cifar10_gpu.sh [ROOT]
set -euo pipefail
root=${1:-workdirs/cifar10}
base_epochs=${EPOCHS:-200}; parity_epochs=${PARITY_EPOCHS:-100}
python -c "import jax; print(jax.devices())"
python -m pmjax.train --config=configs/cifar10.py:stage=base,base_epochs=$base_epochs \
  --workdir="$root/base" --config.progress_bar=False
python -m pmjax.train --config=configs/cifar10.py:stage=parity,k=2,code=concat,epochs=$parity_epochs \
  --config.base_workdir="$root/base" --workdir="$root/concat_k2" --config.progress_bar=False
python -m pmjax.evaluate --workdir="$root/base"
python -m pmjax.evaluate --workdir="$root/concat_k2"
python launch/epoch_stats.py "$root/base" "$root/concat_k2"
