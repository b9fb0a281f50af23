#!/usr/bin/env bash
# Training throughput, pmjax vs PyTorch re-implementations of the same steps, measured
# one after the other in one run on this machine:
#   1. the original trainer's k=2 mlp parity step (launch/torch_parity_step.py) against
#      pmjax's MNIST training epoch (python -m pmjax.bench.train_throughput);
#   2. the conv table (launch/side_by_side.py): lenet5 and resnet8 F, sum / concat k=2
#      and the collage's k=8 tiles:resnet8 at r = 1 and r = 3, with pmjax's layout
#      before issue 22 for the rows it changed; GFLOP/s against this CPU's conv peak.
#   [TORCH_PYTHON=/path/to/python-with-torch] launch/throughput_side_by_side.sh [side_by_side.py flags]
# TORCH_PYTHON defaults to this python when it has torch; without PyTorch the PyTorch
# parts are skipped (pmjax's rows still run).
set -euo pipefail
torch_py=${TORCH_PYTHON:-python}
if ! "$torch_py" -c 'import torch' >/dev/null 2>&1; then
  echo "PyTorch not found in '$torch_py' (set TORCH_PYTHON): the PyTorch columns are skipped"
  torch_py=""
fi
if [ -n "$torch_py" ] && [ -z "${SKIP_MLP:-}" ]; then
  tj=$("$torch_py" launch/torch_parity_step.py)
  out=$(python -m pmjax.bench.train_throughput 2>/dev/null)   # no early-closing pipe
  jj=$(printf '%s\n' "$out" | grep -m1 '^{')
  python - "$tj" "$jj" <<'PY'
import json, sys
t, j = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"PyTorch {t['torch']} ({t['threads']} threads), k=2 sum, 64 groups/step:")
print(f"  cached-input epoch loop {t['cached_epoch_groups_per_s']:>10,.0f} groups/s")
print(f"  bare step               {t['bare_step_groups_per_s']:>10,.0f} groups/s")
print(f"pmjax (jax, {j['devices'][0]} x{len(j['devices'])}):")
print(f"  training epoch          {j['train_groups_per_s']:>10,.0f} groups/s")
print(f"  epoch + val/test A_d    {j['epoch_groups_per_s']:>10,.0f} groups/s")
print(f"ratio pmjax training epoch / PyTorch cached-input epoch: "
      f"{j['train_groups_per_s'] / t['cached_epoch_groups_per_s']:.1f}x")
print(f"ratio pmjax training epoch / PyTorch bare step:          "
      f"{j['train_groups_per_s'] / t['bare_step_groups_per_s']:.1f}x")
PY
fi
python launch/side_by_side.py --torch_python="$torch_py" "$@"
