#!/usr/bin/env bash
# The `learned` code at k=2 on MNIST (base mlp F of the CPU grid), 20 epochs each:
# the losses (mse / kl / ce), the conv encoder, and a trained parity model inside.
# Usage: launch/learned_k2_variants.sh [BASE_WORKDIR] [ROOT] [CONV_EPOCHS]
set -euo pipefail
base=${1:-workdirs/grid/mnist/mlp/base}
root=${2:-workdirs/learned_k2}
conv_epochs=${3:-20}
run() {  # name, extra flags...
  local name=$1; shift
  python -m pmjax.train --config=configs/mnist.py:stage=parity,code=learned,k=2,epochs=20 \
    --config.base_workdir="$base" --workdir="$root/$name" --config.progress_bar=False "$@"
  python -m pmjax.evaluate --workdir="$root/$name"
}
run mse_trained_parity --config.code.train_parity=True
run kl --config.code.loss=kl
run ce --config.code.loss=ce
run conv_mse --config.code.encoder=conv --config.parity.num_epochs="$conv_epochs"
