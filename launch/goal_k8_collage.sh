#!/usr/bin/env bash
# Issue 12's goal table and wrong-output table at K=8: a `collage` code with r=3 parity
# models (`tiles:tilecnn` on MNIST / Fashion-MNIST; on CIFAR-10 `tiles:resnet8_narrow` on
# half-size cells, `code.cell=half`: 16x16 instead of 16x8, the same FLOPs as F) per F,
# against the faithful Berrut on the same F, S = 1, 2, 3 (the first S parity models).
# The Fs: launch/k8_tilesum.sh's lenet5 (ROOT/{mnist,fashion_mnist}/base) and
# launch/cifar10_cpu.sh's resnet8 (C10/cifar10/resnet8/base).
# CIFAR-10's S = 1 cell comes from a second run, one parity model (r = 1) trained with a
# true-label term beside the MSE (`parity.label_weight=1`), 70 epochs.
# Usage: launch/goal_k8_collage.sh [ROOT] [C10_ROOT] [OUT]
#        (EPOCHS=30,20,50,70: Fashion-MNIST, MNIST, CIFAR-10 r = 3, CIFAR-10 r = 1)
set -euo pipefail
root=${1:-workdirs/goal_k8}
c10=${2:-workdirs/cifar10_cpu}/cifar10/resnet8/base
out=${3:-workdirs/goal_k8_collage}
read -r ep_f ep_m ep_c ep_c1 <<< "$(echo "${EPOCHS:-30,20,50,70}" | tr ',' ' ')"
train() {  # dataset model base parity_model epochs workdir [extra flags]   (R=3 unless set)
  python -m pmjax.train --config="configs/$1.py:stage=parity,model=$2,parity_model=$4,k=8,code=collage,r=${R:-3},epochs=$5" \
    --config.base_workdir="$3" --workdir="$6" --config.progress_bar=False "${@:7}"
  python -m pmjax.evaluate --workdir="$6"
}
train fashion_mnist lenet5 "$root/fashion_mnist/base" tiles:tilecnn "$ep_f" "$out/fashion_mnist/collage_tilecnn_r3"
train mnist lenet5 "$root/mnist/base" tiles:tilecnn "$ep_m" "$out/mnist/collage_tilecnn_r3"
# CIFAR-10 (issue 22): half-size cells, crop + flip augmentation (F inside the step) and
# a cosine rate, 50 epochs by default (~45 s per epoch on this 2-core CPU).
train cifar10 resnet8 "$c10" tiles:resnet8_narrow "$ep_c" "$out/cifar10/collage_half_resnet8_narrow_r3" \
  --config.code.cell=half --config.eval_every_epochs=5 --config.data.augment=True \
  --config.parity.optim.schedule=cosine
R=1 train cifar10 resnet8 "$c10" tiles:resnet8_narrow "$ep_c1" "$out/cifar10/collage_half_resnet8_narrow_r1_label" \
  --config.code.cell=half --config.eval_every_epochs=10 --config.data.augment=True \
  --config.parity.optim.schedule=cosine --config.parity.label_weight=1.0
python -m pmjax.bench.goal_table \
  --base_workdirs="$root/mnist/base,$root/fashion_mnist/base,$c10" \
  --parity_workdirs="$out/mnist/collage_tilecnn_r3,$out/fashion_mnist/collage_tilecnn_r3,$out/cifar10/collage_half_resnet8_narrow_r3,$out/cifar10/collage_half_resnet8_narrow_r1_label" \
  --out="$out/goal"
for ds in mnist fashion_mnist cifar10; do
  base="$root/$ds/base"; [ "$ds" = cifar10 ] && base="$c10"
  python -m pmjax.bench.byzantine --base_workdir="$base" \
    --parity_workdirs="$(ls -d "$out/$ds"/collage_*_r3)" --out="$out/byzantine_$ds"
done
