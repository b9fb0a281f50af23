#!/usr/bin/env bash
# K=8, one extra worker, on the same lenet5 F per dataset (the goal row's, launch/k8_tilesum.sh):
# ParM `sum` with a copy of F as parity model (the setting ApproxIFER measured ParM in),
# then one table with Berrut (both forms), `concat` + TileSum, `concat` + copy of F.
# The copy-of-F parity models train for EPOCHS (rerunning with more epochs resumes them,
# k8_tilesum.sh's 30-epoch concat copy included).
# Usage: launch/codes_k8.sh [GOAL_ROOT] [OUT] [EPOCHS]
set -euo pipefail
root=${1:-workdirs/goal_k8}
out=${2:-workdirs/codes_k8}
epochs=${3:-30}
parity=()
for ds in mnist fashion_mnist; do
  base="$root/$ds/base"
  for code in sum concat; do
    w="$root/$ds/lenet5_copy"; [ $code = sum ] && w="$root/$ds/sum_lenet5_copy"
    python -m pmjax.train --config=configs/$ds.py:stage=parity,model=lenet5,k=8,code=$code,epochs=$epochs \
      --config.base_workdir="$base" --workdir="$w" --config.progress_bar=False
    python -m pmjax.evaluate --workdir="$w"
  done
  parity+=("$root/$ds/sum_lenet5_copy" "$root/$ds/lenet5_copy" "$root/$ds/tilesum_mlp")
done
python -m pmjax.bench.code_table --base_workdirs="$root/mnist/base,$root/fashion_mnist/base" --k=8 --s=1 \
  --berrut_outputs=logits,softmax \
  --parity_workdirs="$(IFS=,; echo "${parity[*]}")" --out="$out"
