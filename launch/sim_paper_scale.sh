#!/usr/bin/env bash
# The paper's scale by simulation: k=2, 12 base + 6 parity instances (coded) vs 18
# (equal, hedge), 100,000 Poisson queries per run at 150..390 queries/s, service
# times of resnet18 measured here, under three settings of the on/off interference
# model (see pmjax/serving/sim.py). Usage: launch/sim_paper_scale.sh [OUT]
set -euo pipefail
out=${1:-workdirs/sim}
python -m pmjax.serving.sim --model=resnet18 --calm_s=5 --busy_s=0.5 --busy_factor=5 --out="$out/often_x5"
python -m pmjax.serving.sim --model=resnet18 --calm_s=20 --busy_s=0.5 --busy_factor=5 --out="$out/rare_x5"
python -m pmjax.serving.sim --model=resnet18 --calm_s=10 --busy_s=0.2 --busy_factor=10 --out="$out/rare_x10"
