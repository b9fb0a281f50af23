#!/usr/bin/env bash
# Issue 23's throughput-latency curves for the in-process loop (`pmjax.serving.bench`,
# no HTTP, no Ray): coded (2 base + 1 parity instance), equal and hedge (3 base
# instances) at equal resources, the offered load swept past saturation, with no fault
# and with a straggler (base0: 10% of its batches +200 ms, as launch/serving_curves.sh
# gives the Ray path), batch 1 and batch 8; coded learns its parity hold (auto_hold).
# Each load serves max(QUERIES, rate x SECONDS_PER_RATE) queries after 200 warm-up ones,
# so a p99.9 rests on at least two queries. About 25 minutes on a 2-core machine;
# `python -m pmjax.serving.curves OUT/NAME` prints a sweep's ratios again.
# Usage: [SEED=0] launch/serving_curves_inprocess.sh MNIST_PARITY_WORKDIR CIFAR10_PARITY_WORKDIR [OUT]
# (the workdirs as for launch/serving_curves.sh).
set -euo pipefail
mnist=${1:?MNIST parity workdir}
c10=${2:?CIFAR-10 parity workdir}
out=${3:-workdirs/serving_curves_inprocess}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-4}
QUERIES=${QUERIES:-2000}
SEED=${SEED:-0}
sweep() {   # NAME WORKDIR RATES BATCH [extra flags]
  local name=$1 w=$2 rates=$3 batch=$4; shift 4
  python -m pmjax.serving.bench --config=configs/serving.py --config.workdir="$w" \
    --config.modes=coded,equal,hedge --config.rates="$rates" \
    --config.seconds_per_rate="$SECONDS_PER_RATE" --config.queries="$QUERIES" \
    --config.batch_size="$batch" --config.policy.auto_hold=True --config.seed="$SEED" \
    --config.out="$out/$name" "$@" 2>&1 | grep -E '^\||^saturation'
}
straggler=(--config.faults.slow_instances=base0 --config.faults.slow_prob=0.1
           --config.faults.slow_ms=200)
sweep mnist_b1_nofault "$mnist" 200,500,1000,1500,2000,3000 1
sweep mnist_b1_straggler "$mnist" 200,500,1000,1500,2000,3000 1 "${straggler[@]}"
sweep mnist_b8_nofault "$mnist" 1000,2000,4000,6000,8000 8
sweep mnist_b8_straggler "$mnist" 1000,2000,4000,6000,8000 8 "${straggler[@]}"
sweep c10_resnet8_b1_nofault "$c10" 100,300,600,900,1200 1
sweep c10_resnet8_b1_straggler "$c10" 100,300,600,900,1200 1 "${straggler[@]}"
sweep c10_resnet8_b8_nofault "$c10" 300,600,1200,2400,3600 8
sweep c10_resnet8_b8_straggler "$c10" 300,600,1200,2400,3600 8 "${straggler[@]}"
