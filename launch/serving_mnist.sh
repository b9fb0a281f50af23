#!/usr/bin/env bash
# The serving-loop measurements of RESULTS.md: resnet8 on MNIST, concat k=2 (2 base + 1
# parity instance for coded; 3 base for equal and hedge; 2 for none), Poisson load.
# Usage: launch/serving_mnist.sh PARITY_WORKDIR [OUT]
set -euo pipefail
w=${1:?parity workdir, e.g. workdirs/mnist_resnet8/concat_k2}
out=${2:-workdirs/serving}
common=(--workdir="$w" --mode=all --queries=4000 --warmup=400)
for rate in 200 400; do
  python -m pmjax.serving.bench "${common[@]}" --rate=$rate --out="$out/nofault_$rate"
  python -m pmjax.serving.bench "${common[@]}" --rate=$rate --slow_instances=base0 \
    --slow_prob=0.05 --slow_ms=50 --out="$out/slow_$rate"
done
python -m pmjax.serving.bench "${common[@]}" --rate=200 --fail_instance=base0 --fail_at_s=8 \
  --out="$out/failstop_200"
python -m pmjax.bench.codec_cost --models=mlp,resnet8 --code=concat --calls=3000
python -m pmjax.bench.codec_cost --models=mlp,resnet8 --code=sum --calls=3000
