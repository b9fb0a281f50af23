"""CIFAR-10, ResNet-18 (CIFAR stem), SGD + Nesterov momentum, cosine, augmentation.

    python -m pmjax.train --config=configs/cifar10.py:stage=base --workdir=/tmp/c10_base
    python -m pmjax.train --config=configs/cifar10.py:stage=parity,k=2,code=concat \
        --config.base_workdir=/tmp/c10_base --workdir=/tmp/c10_concat_k2

Needs a GPU for full runs (a CPU epoch takes many minutes). Expected base test
accuracy: >= 93% after 200 epochs (not yet measured here; see RESULTS.md).
Arguments: see configs/default.py (model=vgg11, ... also work).
"""

from configs import default


def get_config(arg=None, dataset='cifar10', model='resnet18'):
  c = default.get_config(arg, dataset=dataset, model=model, base_epochs=200,
                         base_batch_size=128)
  c.data.augment = True
  c.base.optim.update(dict(name='sgd', lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4, schedule='cosine'))
  c.eval_batch_size = min(c.eval_batch_size, 500)
  return c
