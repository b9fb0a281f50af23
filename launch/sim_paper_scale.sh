#!/usr/bin/env bash
# The paper's scale by simulation: k=2, 12 base + 6 parity instances (coded) vs 18
# (equal, hedge), 100,000 Poisson queries per run at 150..390 queries/s, service
# times of resnet18 measured here, under three settings of the on/off interference
# model (configs/sim.py, pmjax/serving/sim.py). Usage: launch/sim_paper_scale.sh [OUT]
set -euo pipefail
out=${1:-workdirs/sim}
sim=(python -m pmjax.serving.sim --config=configs/sim.py --config.model=resnet18)
"${sim[@]}" --config.calm_s=5 --config.busy_s=0.5 --config.busy_factor=5 --config.out="$out/often_x5"
"${sim[@]}" --config.calm_s=20 --config.busy_s=0.5 --config.busy_factor=5 --config.out="$out/rare_x5"
"${sim[@]}" --config.calm_s=10 --config.busy_s=0.2 --config.busy_factor=10 --config.out="$out/rare_x10"
