"""Cat v Dog, ImageNet-style ResNet-18 (7x7 stem, max-pool, 2 classes) at 224x224.

    python -m pmjax.train --config=configs/cats_vs_dogs.py:stage=base --workdir=/tmp/cvd_base
    python -m pmjax.train --config=configs/cats_vs_dogs.py:stage=parity,k=2,code=concat \
        --config.base_workdir=/tmp/cvd_base --workdir=/tmp/cvd_concat_k2

Raw data: kagglecatsanddogs_5340.zip (downloaded when online) or an ImageFolder
copy MANUAL_DIR/cat_v_dog/{train,val,test}/{cat,dog}/ (see
pmjax/data/cats_vs_dogs.py for the split and the skipped files). Prepared at
224x224x3 (about 3.7 GB), so training streams it (data.pipeline='auto').
Training augmentation: RandomResizedCrop(224) + flip on device; ImageNet
mean/std. `concat` tiles k=2 as two 224x112 halves, k=4 as 112x112 quadrants;
`sum` adds the images channel by channel. GPU-sized; `smoke` (a narrow
resnet8_imagenet on a few images) runs on a CPU in seconds. The optimiser
recipe below is a standard one, not yet matched to the original artifact's;
results: not yet measured (the archive is not available offline here).
Arguments: see configs/default.py.
"""

from configs import default


def get_config(arg=None):
  c = default.get_config(arg, dataset='cats_vs_dogs', model='resnet18_imagenet',
                         base_epochs=30, base_batch_size=64)
  c.data.augment = True
  c.data.num_val = 2500
  c.base.optim.update(dict(name='sgd', lr=0.05, momentum=0.9, nesterov=True,
                           weight_decay=1e-4, schedule='cosine'))
  c.eval_batch_size = min(c.eval_batch_size, 100)
  if c.smoke:
    default.smoke_224px(c)
  return c
