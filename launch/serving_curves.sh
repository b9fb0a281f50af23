#!/usr/bin/env bash
# Issue 23's throughput-latency curves on Ray Serve over HTTP: coded (2 base + 1 parity
# replica), equal and hedge (3 base replicas) at equal resources, the offered load swept
# up to saturation, with no fault and with a straggler (base0: 10% of its requests
# +200 ms), batch 1 and batch 8; the coded policy learns its parity hold (auto_hold).
# First the overhead table (bare Serve echo vs pmjax, with wrk beside the bench's own
# client), last the hand-set hold beside the learnt one. About 45 minutes on a 2-core
# machine (SECONDS_PER_RATE=8); `python -m pmjax.serving.curves OUT/NAME` prints a sweep's
# ratios again.
# Usage: launch/serving_curves.sh MNIST_PARITY_WORKDIR CIFAR10_PARITY_WORKDIR [OUT]
# (e.g. the README's main job and
#  `python -m pmjax.train --config=configs/cifar10.py:stage=base_and_parity,model=resnet8,code=concat,k=2,smoke`).
set -euo pipefail
mnist=${1:?MNIST parity workdir}
c10=${2:?CIFAR-10 parity workdir}
out=${3:-workdirs/serving_curves}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-8}
sweep() {   # NAME WORKDIR RATES BATCH [extra flags]
  local name=$1 w=$2 rates=$3 batch=$4; shift 4
  python -m pmjax.serving.cluster_bench --workdir="$w" --mode=coded,equal,hedge \
    --rates="$rates" --seconds_per_rate="$SECONDS_PER_RATE" --queries=50 --warmup=20 \
    --batch_size="$batch" --policy='{"auto_hold": true}' --out="$out/$name" "$@"
}
straggler=(--slow=base0 --slow_prob=0.1 --slow_ms=200)
python -m pmjax.serving.overhead --workdir="$mnist" --out="$out/overhead_mnist"
sweep mnist_b1_nofault "$mnist" 5,10,20,40,50 1
sweep mnist_b1_straggler "$mnist" 5,10,20,40,50 1 "${straggler[@]}"
sweep c10_resnet8_b1_nofault "$c10" 5,10,20,40 1
sweep c10_resnet8_b1_straggler "$c10" 5,10,20,40 1 "${straggler[@]}"
python -m pmjax.serving.overhead --workdir="$c10" --out="$out/overhead_c10_resnet8"
sweep mnist_b8_nofault "$mnist" 10,20,40,80 8
sweep mnist_b8_straggler "$mnist" 10,20,40,80 8 "${straggler[@]}"
sweep c10_resnet8_b8_nofault "$c10" 10,20,40,80 8
sweep c10_resnet8_b8_straggler "$c10" 10,20,40,80 8 "${straggler[@]}"
# The learnt hold against hand-set ones, same straggler, MNIST batch 1.
for hold in auto 0 100; do
  if [ "$hold" = auto ]; then pol='{"auto_hold": true}'; else pol="{\"parity_delay_ms\": $hold}"; fi
  python -m pmjax.serving.cluster_bench --workdir="$mnist" --mode=coded \
    --rates=10,30 --seconds_per_rate="$SECONDS_PER_RATE" --queries=50 --warmup=20 \
    --policy="$pol" --out="$out/mnist_b1_straggler_hold_$hold" "${straggler[@]}"
done
