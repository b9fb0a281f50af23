#!/usr/bin/env bash
# K=8 with one extra worker: ParM `concat` (2x4 tiling) with a TileSum parity model
# (one shared mlp on every tile, outputs summed) vs a plain copy of F's architecture,
# on MNIST and Fashion-MNIST with lenet5 F. Usage: launch/k8_tilesum.sh [ROOT]
set -euo pipefail
root=${1:-workdirs/goal_k8}
for ds in mnist fashion_mnist; do
  base="$root/$ds/base"
  python -m pmjax.train --config=configs/$ds.py:stage=base,model=lenet5,base_epochs=8 \
    --workdir="$base" --config.progress_bar=False
  python -m pmjax.train --config=configs/$ds.py:stage=parity,model=lenet5,parity_model=tilesum:mlp,k=8,code=concat,epochs=200 \
    --config.base_workdir="$base" --workdir="$root/$ds/tilesum_mlp" --config.progress_bar=False
  python -m pmjax.train --config=configs/$ds.py:stage=parity,model=lenet5,k=8,code=concat,epochs=30 \
    --config.base_workdir="$base" --workdir="$root/$ds/lenet5_copy" --config.progress_bar=False
  for w in "$root/$ds/base" "$root/$ds/tilesum_mlp" "$root/$ds/lenet5_copy"; do
    python -m pmjax.evaluate --workdir="$w"
  done
done
