"""CIFAR-100, the original artifact's deep ResNet (BasicBlocks [3, 8, 36, 3]).

    python -m pmjax.train --config=configs/cifar100.py:stage=base --workdir=/tmp/c100_base
    python -m pmjax.train --config=configs/cifar100.py:stage=parity,k=2,code=concat \
        --config.base_workdir=/tmp/c100_base --workdir=/tmp/c100_concat_k2

GPU only in practice; the raw file cifar-100-python.tar.gz is downloaded when
online (no offline copy here). Expected results: not yet measured.
Arguments: see configs/default.py.
"""

from configs import cifar10


def get_config(arg=None):
  return cifar10.get_config(arg, dataset='cifar100', model='resnet152')
