"""MNIST, base-mlp (the original artifact's setting).

    python -m pmjax.train --config=configs/mnist.py:stage=base --workdir=/tmp/mnist_base
    python -m pmjax.train --config=configs/mnist.py:stage=parity,k=2,code=sum \
        --config.base_workdir=/tmp/mnist_base --workdir=/tmp/mnist_sum_k2

Expected (RESULTS.md has the measured values and commands): base test
accuracy >= 97.9%; k=2 parity A_d above the original trainer's at equal epochs.
Arguments: see configs/default.py (stage, code, k, model, epochs, smoke, ...).
"""

from configs import default


def get_config(arg=None):
  return default.get_config(arg, dataset='mnist', model='mlp')
