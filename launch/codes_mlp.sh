#!/usr/bin/env bash
# Codes on the CPU grid's base-mlp F of one dataset (launch/sweep.py made F and the
# sum/concat runs): linear k=4 r=2 (balanced and Cauchy C), learned k=2 (frozen F and a
# trained copy), then one bench.code_table table with Berrut k=4, S=2 beside them.
# Usage: launch/codes_mlp.sh DATASET [GRID_ROOT] [OUT]
set -euo pipefail
ds=${1:?dataset, e.g. fashion_mnist}
g=${2:-workdirs/grid}/$ds/mlp
out=${3:-workdirs/codes_mlp_$ds}
train() {  # workdir, config args, extra flags...
  local w=$1 args=$2; shift 2
  python -m pmjax.train --config=configs/$ds.py:stage=parity,$args --config.base_workdir="$g/base" \
    --workdir="$w" --config.progress_bar=False "$@"
  python -m pmjax.evaluate --workdir="$w"
}
train "$g/linear_k4_r2_balanced" code=linear,k=4,r=2
train "$g/linear_k4_r2_cauchy" code=linear,k=4,r=2 --config.code.coefficients=cauchy
train "$g/learned_k2" code=learned,k=2,epochs=20
train "$g/learned_k2_trained_parity" code=learned,k=2,epochs=20 --config.code.train_parity=True
rows=$g/linear_k4_r2_cauchy,$g/linear_k4_r2_balanced,$g/concat_k4,$g/sum_k4,$g/concat_k2,$g/sum_k2
rows=$rows,$g/learned_k2,$g/learned_k2_trained_parity
python -m pmjax.bench.code_table --base_workdirs="$g/base" --k=4 --s=2 --parity_workdirs="$rows" --out="$out"
