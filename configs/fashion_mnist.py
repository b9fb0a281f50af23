"""Fashion-MNIST, base-mlp.

    python -m pmjax.train --config=configs/fashion_mnist.py:stage=base --workdir=/tmp/fm_base
    python -m pmjax.train --config=configs/fashion_mnist.py:stage=parity,k=2,code=concat \
        --config.base_workdir=/tmp/fm_base --workdir=/tmp/fm_concat_k2

Raw files: Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist)
or the canonical download. Expected: base test accuracy about 89% (the original's
base-mlp: 89.47%). Arguments: see configs/default.py.
"""

from configs import default


def get_config(arg=None):
  return default.get_config(arg, dataset='fashion_mnist', model='mlp')
