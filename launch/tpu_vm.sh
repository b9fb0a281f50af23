#!/usr/bin/env bash
# Multi-host TPU VM slice: run the same command on every worker; jax.distributed
# .initialize() discovers the slice (PMJAX_DISTRIBUTED=1). WORKDIR should be a
# bucket or a shared disk (process 0 writes checkpoints and metrics).
#   gcloud compute tpus tpu-vm ssh NAME --worker=all --command \
#     "cd pmjax && launch/tpu_vm.sh configs/cifar10.py:stage=base gs://BUCKET/c10"
set -euo pipefail
config=${1:?config}; workdir=${2:?workdir}; shift 2
pip install -q -r requirements.txt "jax[tpu]==0.10.2"
PMJAX_DISTRIBUTED=1 python -m pmjax.train --config="$config" --workdir="$workdir" "$@"
