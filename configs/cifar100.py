"""CIFAR-100, the original artifact's deep ResNet (BasicBlocks [3, 8, 36, 3]), streamed.

    python -m pmjax.train --config=configs/cifar100.py:stage=base --workdir=/tmp/c100_base
    python -m pmjax.train --config=configs/cifar100.py:stage=parity,k=2,code=concat \
        --config.base_workdir=/tmp/c100_base --workdir=/tmp/c100_concat_k2

`resnet152` here is the original's CIFAR-100 network: a 3x3 CIFAR stem and
BasicBlocks [3, 8, 36, 3] at widths 64-512 (101 3x3 convolutions, 57.9 M
parameters with 100 classes). Recipe as configs/cifar10.py (SGD + Nesterov 0.1, cosine,
weight decay 5e-4, crop + flip, 200 epochs). The training set is read through
the streaming path (`data.pipeline='stream'`, pmjax.data.stream: per process,
grain reader threads, the same batches as in memory); on a single device with
room, `--config.data.pipeline=device` holds it on the device instead (the same
result). GPU only in practice (a step of 8 images takes seconds on a 2-core
CPU). The raw file cifar-100-python.tar.gz is downloaded when online (no
offline copy here). Expected results: not yet measured (RESULTS.md).
`smoke` swaps in the narrow `resnet8` for `resnet152` (seconds on a CPU).
Arguments: see configs/default.py.
"""

from configs import cifar10


def get_config(arg=None):
  c = cifar10.get_config(arg, dataset='cifar100', model='resnet152')
  c.data.pipeline = 'stream'
  if c.smoke and c.model == 'resnet152':
    c.model = 'resnet8'
  return c
