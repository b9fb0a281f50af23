#!/usr/bin/env bash
# MNIST base-mlp, then k=2 `sum` and `concat` parity models for 100 epochs (the
# original trainer's settings), then the side-by-side table against the original
# PyTorch trainer measured on this machine. Usage: launch/mnist_k2_vs_original.sh [ROOT]
set -euo pipefail
root=${1:-workdirs/mnist}
python -m pmjax.train --config=configs/mnist.py:stage=base --workdir="$root/base" \
  --config.progress_bar=False
for code in sum concat; do
  python -m pmjax.train --config=configs/mnist.py:stage=parity,k=2,code=$code \
    --config.base_workdir="$root/base" --workdir="$root/${code}_k2" --config.progress_bar=False
  python -m pmjax.evaluate --workdir="$root/${code}_k2"
done
python launch/compare_reference.py A="$root/sum_k2" B="$root/concat_k2"
