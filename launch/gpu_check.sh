#!/usr/bin/env bash
# The GPU check (issue 22): on one GPU, in about 8 minutes, train CIFAR-10 ResNet-18 F
# (target >= 93% test), a k=2 `concat` parity model for it, evaluate both, and print
# images/s, the training step's achieved TFLOP/s (XLA's cost analysis of the compiled
# step over its time) and A_a / A_d.
#   launch/gpu_check.sh [ROOT]            on a GPU machine (ROOT: workdirs/gpu_check)
#   TINY=1 launch/gpu_check.sh ROOT       the same commands on CPU, tiny (CI runs this)
# DATA_DIR: the manual directory holding cifar-10-python.tar.gz (default
# ../shared/data/cifar10); TFDS_DIR: where it is prepared (default pmjax's cache). BASE_EPOCHS / PARITY_EPOCHS (25 / 8) and BATCH (512) change the run.
# On a GPU machine without a CUDA jaxlib it tries `pip install "jax[cuda12]==0.10.2"`;
# pmjax's other requirements must be installed (pip install -r requirements.txt, or
# wheels carried to a machine without network).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-workdirs/gpu_check}
data=${DATA_DIR:-../shared/data/cifar10}
py=${PYTHON:-python}
mkdir -p "$root"
if [ -n "${TINY:-}" ]; then
  # CPU smoke: narrow nets, a few hundred images, the same stages and prints.
  model=resnet8; be=${BASE_EPOCHS:-1}; pe=${PARITY_EPOCHS:-1}; batch=${BATCH:-32}
  extra=(--config.data.train_limit=256 --config.data.num_val=64 --config.data.test_limit=64
         --config.eval_batch_size=64 --config.steps_per_call=1)
  bench=(--calls=1 --steps_per_call=1)
else
  model=resnet18; be=${BASE_EPOCHS:-25}; pe=${PARITY_EPOCHS:-8}; batch=${BATCH:-512}
  extra=()
  bench=(--calls=5 --steps_per_call=8)
  if ! "$py" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    "$py" -m pip install -q "jax[cuda12]==0.10.2" || true
  fi
  "$py" -c "import jax, sys; print(jax.devices()); sys.exit(jax.default_backend() != 'gpu')" ||
    { echo "gpu_check: JAX sees no GPU (install a CUDA jaxlib, e.g. jax[cuda12])"; exit 1; }
fi
common=(--config.data.manual_dir="$data" --config.data.download=False --config.progress_bar=False
        "${extra[@]}")
[ -n "${TFDS_DIR:-}" ] && common+=(--config.data.data_dir="$TFDS_DIR")
echo "== training step speed (random inputs of CIFAR-10's shape)"
"$py" -m pmjax.bench.train_throughput --steps --stage=base --model=$model --dataset=cifar10 \
  --batch=$batch --peak=false "${bench[@]}" | tee "$root/bench_base.txt"
"$py" -m pmjax.bench.train_throughput --steps --stage=parity --model=$model --dataset=cifar10 \
  --code=concat --k=2 --batch=$((batch / 2)) --peak=false "${bench[@]}" | tee "$root/bench_parity.txt"
echo "== F: $model, $be epochs, batch $batch"
# Batch 512: lr 0.1 x 4 with a 2-epoch warm-up, then cosine (configs/cifar10.py's recipe).
steps_per_epoch=$((45000 / batch))
"$py" -m pmjax.train --config=configs/cifar10.py:stage=base,model=$model,base_epochs=$be \
  --config.base.batch_size=$batch --config.base.optim.lr=$("$py" -c "print(0.1 * $batch / 128)") \
  --config.base.optim.warmup_steps=$((2 * steps_per_epoch)) --config.eval_every_epochs=5 \
  "${common[@]}" --workdir="$root/base"
echo "== parity: concat k=2, $pe epochs"
"$py" -m pmjax.train --config=configs/cifar10.py:stage=parity,model=$model,code=concat,k=2,epochs=$pe \
  --config.base_workdir="$root/base" --config.parity.batch_size=$((batch / 2)) \
  --config.eval_every_epochs=4 "${common[@]}" --workdir="$root/concat_k2"
"$py" -m pmjax.evaluate --workdir="$root/concat_k2"
"$py" launch/epoch_stats.py "$root/base" "$root/concat_k2"
"$py" - "$root" <<'PY'
import json, os, sys
root = sys.argv[1]
def first_json(name):
  return next(json.loads(l) for l in open(os.path.join(root, name)) if l.startswith('{'))
b, p = first_json('bench_base.txt'), first_json('bench_parity.txt')
res = json.load(open(os.path.join(root, 'concat_k2', 'results.json')))
flat = {k: v for k, v in res.items() if isinstance(v, (int, float))}
for k in ('metrics', 'test'):
  if isinstance(res.get(k), dict):
    flat.update({kk: vv for kk, vv in res[k].items() if isinstance(vv, (int, float))})
pick = lambda *names: next((flat[n] for n in names if n in flat), float('nan'))
print(f"GPU check on {b['devices'][0]}: F step {b['per_s']:,.0f} images/s, "
      f"{b['gflops_per_s'] / 1e3:.2f} TFLOP/s; parity step {p['per_s']:,.0f} groups/s, "
      f"{p['gflops_per_s'] / 1e3:.2f} TFLOP/s; A_a {pick('test_A_a', 'A_a'):.4f}, "
      f"A_d {pick('test_A_d_top1', 'A_d_top1', 'A_d'):.4f}")
PY
