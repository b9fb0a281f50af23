#!/usr/bin/env bash
# One node, every local GPU: a single JAX process drives all of them (the ('data',)
# mesh spans jax.devices()). Usage: launch/single_node_gpu.sh CONFIG WORKDIR [--config.x=y ...]
# e.g. launch/single_node_gpu.sh configs/cifar10.py:stage=base workdirs/c10/base
set -euo pipefail
config=${1:?config, e.g. configs/cifar10.py:stage=base}; workdir=${2:?workdir}; shift 2
pip install -q -r requirements.txt "jax[cuda12]==0.10.2"
python -m pmjax.train --config="$config" --workdir="$workdir" "$@"
