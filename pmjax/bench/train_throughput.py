"""Parity-model training throughput (groups/s), through the real training path.

    python -m pmjax.bench.train_throughput [--code=sum --k=2 --batch=64 --epochs=5]

Runs the very `make_train_chunk` that `pmjax.train` runs (on-device data,
frozen-F targets precomputed, `steps_per_call` steps per jitted call, the loss
read back after each call as the training loop does) on MNIST (the shared
offline copy, or random images of the same shape when it is absent) and
reports, after one warm-up epoch that includes compilation:
  train groups/s     training steps only (an epoch of 55,000 images in groups of k),
  epoch groups/s     the same plus per-epoch validation and test A_d evaluation,
and their ratio to the original PyTorch trainer measured on this machine
(../shared/reference/parm_pytorch_cpu.md: ~5,800 groups/s end to end as
shipped, ~23,500 with inputs cached as tensors, ~54,000 for its bare step, k=2).
"""

from __future__ import annotations

import json
import time
from functools import partial

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pmjax import codes, inference, tasks, train
from pmjax.data import pipeline
from pmjax.models import get_model

# The original trainer on this machine, k=2 sum, batch 64 groups (reference doc).
ORIGINAL_K2 = {'as shipped (PIL pipeline)': 5800.0, 'inputs cached as tensors': 23500.0,
               'bare training step': 54000.0}


def _data():
  try:
    cfg = ml_collections.ConfigDict({'name': 'mnist', 'download': False})
    return pipeline.load_splits(cfg), 'MNIST (offline copy)'
  except Exception:  # pylint: disable=broad-except
    rng = np.random.default_rng(0)
    def images(n):
      return rng.integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)
    def labels(n):
      return rng.integers(0, 10, n).astype(np.int32)
    return (pipeline.Splits(images(55000), labels(55000), images(5000), labels(5000),
                            images(10000), labels(10000)), 'random images (no MNIST found)')


def run(code_name='sum', k=2, batch=64, epochs=5, model_name='mlp', chunk=100,
        train_limit=0):
  splits, source = _data()
  if train_limit:  # smoke runs: a subset of the training set
    splits = splits._replace(train_x=splits.train_x[:train_limit],
                             train_y=splits.train_y[:train_limit])
  code = codes.make_code(code_name, k, image_shape=(28, 28, 1))
  base, parity = get_model(model_name, 10), get_model(model_name, 10)
  base_vars = tasks.init_variables(base, 1, (28, 28, 1))
  predict = inference.make_predict(base, 'mnist')
  base_logits = {n: inference.batched(predict, base_vars, getattr(splits, f'{n}_x'), 1000)
                 for n in ('val', 'test')}
  mesh = train.make_mesh()
  data = train.replicate({'train_x': splits.train_x, 'targets': inference.batched(
      predict, base_vars, splits.train_x, 1000)}, mesh)
  steps = (splits.train_x.shape[0] // k) // batch
  optim = ml_collections.ConfigDict(dict(name='adam', lr=1e-3, weight_decay=1e-5,
                                               schedule='constant'))
  state = train.replicate(train.create_state(
      parity, train.make_optimizer(optim, steps * epochs),
      tasks.init_variables(parity, 0, (28, 28, 1))), mesh)
  batch_fn = partial(tasks.parity_batch, dataset='mnist', augment=False,
                                     code=code, base_apply=base.apply)
  run_chunk = train.make_train_chunk(mesh, tasks.parity_loss, batch_fn, batch, k)
  evaluator = tasks.ParityEvaluator(inference.make_parity_outputs(parity, code, 'mnist', 1000),
                                    k, splits, base_logits)
  key = jax.random.key(0)
  n = splits.train_x.shape[0]
  train_s, eval_s = [], []
  for epoch in range(epochs + 1):
    t0 = time.perf_counter()
    perm = train.epoch_permutation(jax.random.fold_in(key, epoch), n, steps * batch * k)
    for first in range(0, steps, chunk):
      state, m = run_chunk(state, data, {}, perm, jnp.int32(first),
                           jax.random.fold_in(key, epoch), n_steps=min(chunk, steps - first))
      float(m['loss'])
    t1 = time.perf_counter()
    evaluator(train.variables_of(state))
    t2 = time.perf_counter()
    if epoch == 0:
      warmup = t2 - t0  # includes compilation
      continue
    train_s.append(t1 - t0)
    eval_s.append(t2 - t1)
  groups = steps * batch
  train_gps = groups / float(np.median(train_s))
  epoch_gps = groups / float(np.median(np.add(train_s, eval_s)))
  return {
      'code': code_name, 'k': k, 'batch_groups': batch, 'model': model_name, 'data': source,
      'devices': [str(d) for d in jax.devices()], 'steps_per_epoch': steps,
      'epochs_timed': epochs, 'warmup_epoch_s': warmup,
      'train_epoch_s_median': float(np.median(train_s)),
      'eval_s_median': float(np.median(eval_s)),
      'train_groups_per_s': train_gps, 'epoch_groups_per_s': epoch_gps,
      'ratio_vs_original': ({name: train_gps / v for name, v in ORIGINAL_K2.items()}
                            if k == 2 else None),
  }


def main(argv):
  del argv
  f = flags.FLAGS
  r = run(f.code, f.k, f.batch, f.epochs, f.model, train_limit=f.train_limit)
  print(json.dumps(r))
  print(f"\n{r['model']} {r['code']} k={r['k']} batch={r['batch_groups']} groups, "
        f"{r['devices'][0]} x{len(r['devices'])}:")
  print(f"  train     {r['train_groups_per_s']:>10,.0f} groups/s "
        f"({r['train_epoch_s_median']:.3f} s/epoch)")
  print(f"  +val/test {r['epoch_groups_per_s']:>10,.0f} groups/s")
  if r['ratio_vs_original']:
    for name, ratio in r['ratio_vs_original'].items():
      print(f'  {ratio:6.1f}x the original trainer {name} ({ORIGINAL_K2[name]:,.0f} groups/s)')


if __name__ == '__main__':
  flags.DEFINE_string('code', 'sum', 'Code name.')
  flags.DEFINE_integer('k', 2, 'Group size.')
  flags.DEFINE_integer('batch', 64, 'Groups per batch.')
  flags.DEFINE_integer('epochs', 5, 'Timed epochs (after one warm-up epoch).')
  flags.DEFINE_string('model', 'mlp', 'Parity model architecture.')
  flags.DEFINE_integer('train_limit', 0, 'Train on the first N images only (0 = all).')
  app.run(main)
