"""Default: MNIST base-mlp, then a k=2 `concat` parity model, end to end.

    python -m pmjax.train --config=configs/default.py --workdir=/tmp/pmjax_default

Trains F (mlp, Adam, 30 epochs) in W/base, then F_P (k=2, concat, Adam 1e-3,
weight decay 1e-5, batch 64 groups, 100 epochs) in W/parity, and evaluates
into W/results.json. Arguments (`configs/default.py:k=3,code=sum,smoke`):
stage (base | parity | base_and_parity), code, k, r, model, epochs (parity
epochs; 0 = default), smoke (a few steps on a tiny subset, seconds). The code
is `config.code` = name, k, r and that code's own parameters (e.g.
`--config.code.coefficients=cauchy` for `code=linear`; see pmjax.codes).
Expected result and the measured numbers: RESULTS.md.
"""

import ml_collections

from pmjax.codes import code_config
from pmjax.config_utils import parse_arg


def get_config(arg=None, dataset='mnist', model='mlp', base_epochs=30, base_batch_size=64,
               code='concat'):
  a = parse_arg(arg, stage='base_and_parity', code=code, k=2, r=1, model=model, parity_model='',
                epochs=0, base_epochs=0, smoke=False, seed=0)
  c = ml_collections.ConfigDict()
  c.stage = a.stage
  c.seed = a.seed
  c.model = a.model
  c.parity_model = a.parity_model     # '' = same architecture as the base model
  # A model is a name of pmjax.models.MODELS or your own Flax module by import path
  # ('mypkg.nets:MyNet'), built with these keyword arguments (set them in your config
  # file; examples/own_model/). The parity model's default to F's when it is F's
  # architecture.
  c.model_kwargs = {}
  c.parity_model_kwargs = {}
  c.base_workdir = ''                 # parity stage: workdir of the trained base model
  # The code: name, k (queries per group), r (missing outputs tolerated per group) and
  # the code's own parameters with their defaults (pmjax.codes: linear's parity_input and
  # coefficients, learned's loss, encoder and train_parity, berrut's systematic).
  c.code = code_config(a.code, a.k, a.r)
  c.smoke = a.smoke                   # a few steps on a tiny subset

  c.data = ml_collections.ConfigDict()
  c.data.name = dataset
  c.data.manual_dir = ''   # raw files; '' = $PMJAX_MANUAL_DIR, ../shared/data, or download
  c.data.data_dir = ''     # prepared tfds files; '' = $PMJAX_DATA_DIR or ~/.cache/pmjax/tfds
  c.data.download = True   # fetch missing raw files from their canonical URLs
  c.data.verify_md5 = True # False accepts custom/synthetic idx files
  c.data.num_val = 5000    # validation = the last 5,000 training examples (unused where
                           #   the dataset has its own validation split: Speech Commands)
  c.data.train_limit = 0   # 0 = all
  c.data.test_limit = 0
  c.data.val_limit = 0     # cuts a dataset's own validation split (0 = all)
  c.data.augment = False
  # Parity runs without augmentation: a random horizontal flip per example, F's outputs on
  # the flipped training images precomputed too (no F inside the step).
  c.data.flip_targets = False
  c.data.scaling = 'standardize'  # or 'unit': x/255 as torchvision's ToTensor (the original's)
  c.data.pipeline = 'auto'       # 'device' (whole set on device), 'stream' (read per call:
  c.data.device_limit_mb = 1024  #   pmjax.data.stream), 'auto' (stream above this size)
  c.data.stream_threads = 4      # grain reader threads of the streaming path

  c.base = ml_collections.ConfigDict()
  c.base.num_epochs = a.base_epochs or base_epochs
  c.base.batch_size = base_batch_size
  c.base.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, weight_decay=0.0, schedule='cosine', warmup_steps=0,
      momentum=0.9, nesterov=False))

  c.parity = ml_collections.ConfigDict()
  c.parity.num_epochs = a.epochs or 100
  c.parity.batch_size = 0  # 0 = the original's: 64 groups for k=2, 32 otherwise
  c.parity.label_weight = 0.0  # > 0 (collage): + w x cross-entropy of each cell with its label
  c.parity.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, weight_decay=1e-5, schedule='constant', warmup_steps=0,
      momentum=0.9, nesterov=False))

  c.steps_per_call = 100    # steps per jitted call; the progress bar moves per call
  c.scan_unroll = 0          # 0 = auto (CPU + conv model: unrolled, <= 8 steps per call)
  c.eval_every_epochs = 1
  c.eval_batch_size = 1000
  c.stop_after_epochs = 0    # >0: stop this invocation after that many epochs (resumable)
  c.progress_bar = True

  if a.smoke:
    c.data.num_val = 128
    c.data.train_limit = 512
    c.data.test_limit = 256
    c.base.num_epochs = a.base_epochs or 2
    c.parity.num_epochs = a.epochs or 2
    c.base.batch_size = 32
    c.parity.batch_size = 16
    # A conv model's training scan is unrolled on CPU (`train.scan_unroll`): one step per
    # call compiles one step instead of 4 unrolled ones plus an epoch's shorter last call
    # (a CIFAR-10 resnet8 smoke run: 31 -> 22 s, the same result). An mlp's scan is a loop.
    c.steps_per_call = 4 if c.model.endswith('mlp') else 1
    c.eval_batch_size = 128
  return c


def smoke_224px(c):
  """The `smoke` of the 224x224 ResNet-18 configs (Cat v Dog, CUB): a narrow
  resnet8_imagenet on a few images, seconds on a CPU."""
  if c.model == 'resnet18_imagenet':
    c.model = 'resnet8_imagenet'
  c.data.num_val = 8
  c.data.train_limit, c.data.test_limit = 32, 16
  c.base.batch_size, c.parity.batch_size = 8, 4
  c.eval_batch_size = 16
  c.scan_unroll = 1   # a rolled scan compiles once per stage: faster for a few steps
  return c
