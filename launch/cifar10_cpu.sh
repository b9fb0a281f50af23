#!/usr/bin/env bash
# CIFAR-10 on this 2-core CPU (issue 11): F = resnet8 (CIFAR stem, widths 16-128, one
# BasicBlock per stage; configs/cifar10.py's SGD + Nesterov 0.1, cosine, weight decay
# 5e-4, crop + flip), then parity models `sum` and `concat` for k = 2, 3, 4 at equal
# epochs, each evaluated, and the summary table and plots (launch/sweep.py).
# BASE_EPOCHS (18: ~20 min here) and EPOCHS (parity; 18) shorten or lengthen it; the
# six parity runs take about as long as F each. Usage: launch/cifar10_cpu.sh [ROOT]
set -euo pipefail
root=${1:-workdirs/cifar10_cpu}
python launch/sweep.py --root="$root" --datasets=cifar10 --models=resnet8 --ks=2,3,4 \
  --codes=sum,concat --base_epochs="${BASE_EPOCHS:-18}" --epochs="${EPOCHS:-18}" -- \
  --config.eval_every_epochs=3
python launch/epoch_stats.py "$root/cifar10/resnet8/base"
