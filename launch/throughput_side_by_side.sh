#!/usr/bin/env bash
# Parity-training throughput, pmjax vs a PyTorch re-implementation of the original
# trainer's step, measured one after the other in one run on this machine.
#   TORCH_PYTHON=/path/to/python-with-torch launch/throughput_side_by_side.sh
# (e.g. python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy)
set -euo pipefail
torch_py=${TORCH_PYTHON:?set TORCH_PYTHON to a python that has torch}
tj=$("$torch_py" launch/torch_parity_step.py)
jj=$(python -m pmjax.bench.train_throughput 2>/dev/null | head -1)
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
