#!/usr/bin/env bash
# The serving-loop measurements of RESULTS.md: resnet8 on MNIST, concat k=2 (2 base + 1
# parity instance for coded; 3 base for equal and hedge; 2 for none), Poisson load.
# Settings: configs/serving.py. Usage: launch/serving_mnist.sh PARITY_WORKDIR [OUT]
set -euo pipefail
w=${1:?parity workdir, e.g. workdirs/mnist_resnet8/concat_k2}
out=${2:-workdirs/serving}
common=(--config=configs/serving.py --config.workdir="$w" --config.queries=4000
        --config.warmup=400)
for rate in 200 400; do
  python -m pmjax.serving.bench "${common[@]}" --config.rate=$rate --config.out="$out/nofault_$rate"
  python -m pmjax.serving.bench "${common[@]}" --config.rate=$rate \
    --config.faults.slow_instances=base0 --config.faults.slow_prob=0.05 \
    --config.faults.slow_ms=50 --config.out="$out/slow_$rate"
done
python -m pmjax.serving.bench "${common[@]}" --config.rate=200 \
  --config.faults.fail_instance=base0 --config.faults.fail_at_s=8 --config.out="$out/failstop_200"
python -m pmjax.bench.codec_cost --models=mlp,resnet8 --code=concat --calls=3000
python -m pmjax.bench.codec_cost --models=mlp,resnet8 --code=sum --calls=3000
