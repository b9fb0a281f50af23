"""Training throughput through the real training path: MNIST epochs, and conv steps.

    python -m pmjax.bench.train_throughput [--code=sum --k=2 --batch=64 --epochs=5]
    python -m pmjax.bench.train_throughput --steps --model=resnet8 --dataset=cifar10 \
        --stage=parity --code=collage --k=8 --r=3 --parity_model=tiles:resnet8

The second form (`--steps`) times `steps_per_call`-step calls of the same jitted
chunk on random inputs of the dataset's shape (speed does not depend on pixel
values), for F (`--stage=base`: images/s) or r parity models (`--stage=parity`:
groups/s), and reports the step's FLOPs (XLA's cost analysis of the compiled
one-step call) over its time, against this CPU's peak measured in the same run by
a microbenchmark (`conv_peak`: a large matmul and a large 3x3 convolution). It
prints one JSON line; `launch/throughput_side_by_side.sh` runs it for every conv
model next to a PyTorch twin (`launch/torch_train_step.py`).

The first form:

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

from pmjax import codes, inference, models, tasks, train
from pmjax.bench.codec_cost import compiled_flops
from pmjax.data import pipeline
from pmjax.models import get_model, get_parity_model

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


# ---------------------------------------------------------------------------
# Conv steps (--steps): F or r parity models, random inputs of a dataset's shape.
# ---------------------------------------------------------------------------

SHAPES = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}
# The training recipes of configs/: F on CIFAR-10 (SGD + Nesterov, weight decay 5e-4),
# F on MNIST and every parity model (Adam; parity weight decay 1e-5).
BASE_OPTIM = {'cifar10': dict(name='sgd', lr=0.1, momentum=0.9, nesterov=True,
                              weight_decay=5e-4, schedule='constant'),
              'mnist': dict(name='adam', lr=1e-3, weight_decay=0.0, schedule='constant')}
PARITY_OPTIM = dict(name='adam', lr=1e-3, weight_decay=1e-5, schedule='constant')


def _time(fn, repeats: int) -> float:
  """Median seconds of fn() (which blocks), after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def nominal_compiled_flops(run_chunk, state, args, devices: int = 1) -> float:
  """FLOPs of one training step by XLA's cost analysis, with every convolution counted
  as XLA's own (`models.xla_convolutions`), so GFLOP/s compares
  layouts, and pmjax with PyTorch, on the same count of work. The analysis counts one
  device's share of a step partitioned over `devices` (the mesh's size): the step's
  count is that times `devices`."""
  with models.xla_convolutions():
    return devices * compiled_flops(run_chunk.lower(state, *args, n_steps=1).compile())


def conv_peak(repeats: int = 5) -> dict:
  """This CPU's attainable GFLOP/s in XLA, measured now: a 2048^3 float32 matmul and a
  3x3 convolution 64 -> 64 channels on 128 images of 32x32 (forward)."""
  a = jax.random.normal(jax.random.key(0), (2048, 2048))
  x = jax.random.normal(jax.random.key(1), (128, 32, 32, 64))
  w = jax.random.normal(jax.random.key(2), (3, 3, 64, 64))
  mm = jax.jit(lambda a: a @ a)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  out = {}
  for name, f, args in (('matmul', mm, (a,)), ('conv3x3', conv, (x, w))):
    flops = compiled_flops(f.lower(*args).compile())
    out[f'{name}_gflops_per_s'] = flops / _time(lambda: f(*args).block_until_ready(),
                                                repeats) / 1e9
  return out


def run_steps(model_name='resnet8', dataset='cifar10', stage='base', code_name='sum', k=2,
              r=1, parity_model='', batch=0, steps_per_call=8, calls=5, layout='unroll',
              num_classes=10, cell='') -> dict:
  """Times the training chunk of F (stage 'base') or of r parity models ('parity');
  `cell`: the `collage` code's cell size ('' = its default)."""
  shape = SHAPES[dataset]
  rng = np.random.default_rng(0)
  mesh = train.make_mesh()
  base = get_model(model_name, num_classes)
  if stage == 'base':
    batch = batch or (128 if dataset == 'cifar10' else 64)
    group, model, optim = 1, base, BASE_OPTIM[dataset]
    n = batch * steps_per_call
    data = {'train_x': rng.integers(0, 256, (n, *shape)).astype(np.uint8),
            'train_y': rng.integers(0, num_classes, n).astype(np.int32)}
    batch_fn = partial(tasks.base_batch, dataset=dataset, augment=False)
    loss_fn = partial(tasks.base_loss, objective=tasks.CLASSIFICATION)
    input_shape = shape
  else:
    batch = batch or (64 if k == 2 else 32)
    code = codes.make_code(code_name, k, r, image_shape=shape,
                           **({'cell': cell} if cell else {}))
    model = get_parity_model(parity_model or model_name, num_classes, code.r, code.k, shape)
    if code.r > 1:
      model = model.clone(layout=layout)
    group, optim = k, PARITY_OPTIM
    n = batch * k * steps_per_call
    train_x = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    base_vars = tasks.init_variables(base, 1, shape)
    targets = inference.batched(inference.make_predict(base, dataset), base_vars, train_x,
                                1000)
    data = {'train_x': train_x, 'targets': targets}   # F's outputs precomputed, as train
    batch_fn = partial(tasks.parity_batch, dataset=dataset, augment=False, code=code,
                       base_apply=base.apply)
    loss_fn = tasks.parity_loss
    query_shape = codes.coded_query_shape(code, shape)
    input_shape = query_shape if code.r == 1 else (code.r, *query_shape)
  total = steps_per_call * (calls + 2)
  state = train.replicate(train.create_state(
      model, train.make_optimizer(ml_collections.ConfigDict(optim), total),
      tasks.init_variables(model, 0, input_shape)), mesh)
  data = train.replicate(data, mesh)
  unroll = True if jax.default_backend() == 'cpu' else 1
  def chunk():
    return train.make_train_chunk(mesh, loss_fn, batch_fn, batch, group, unroll=unroll)
  perm = jnp.arange(n, dtype=jnp.int32)
  key = jax.random.key(0)
  args = (data, {}, perm, jnp.int32(0), key)
  # Counted on a chunk of its own: jit caches traces, and the timed chunk traced under
  # xla_convolutions (as one of one step was when --steps_per_call=1) would time XLA's
  # convolutions instead of the small ones' im2col.
  flops = nominal_compiled_flops(chunk(), state, args, devices=mesh.size)
  run_chunk = chunk()
  holder = [state]

  def call():
    holder[0], m = run_chunk(holder[0], *args, n_steps=steps_per_call)
    float(m['loss'])
  t0 = time.perf_counter()
  call()   # compiles
  compile_s = time.perf_counter() - t0
  step_s = _time(call, calls) / steps_per_call
  per_s = batch / step_s
  return {'stage': stage, 'model': model_name, 'dataset': dataset,
          'code': code_name if stage == 'parity' else None, 'k': k if stage == 'parity'
          else None, 'r': r if stage == 'parity' else None, 'parity_model':
          (parity_model or model_name) if stage == 'parity' else None,
          'layout': layout if stage == 'parity' and r > 1 else None,
          'cell': (cell or None) if stage == 'parity' else None, 'batch': batch,
          'unit': 'groups' if stage == 'parity' else 'images', 'per_s': per_s,
          'step_ms': step_s * 1e3, 'step_gflop': flops / 1e9,
          'gflops_per_s': flops / step_s / 1e9, 'compile_s': compile_s,
          'steps_per_call': steps_per_call, 'im2col_max_pixels': models.IM2COL_MAX_PIXELS,
          'devices': [str(d) for d in jax.devices()]}


def main(argv):
  del argv
  f = flags.FLAGS
  if f.steps:
    models.IM2COL_MAX_PIXELS = f.im2col_max_pixels
    r = run_steps(f.model, f.dataset, f.stage, f.code, f.k, f.r, f.parity_model, f.batch,
                  f.steps_per_call, f.calls, f.layout, cell=f.cell)
    if f.peak:
      r.update(conv_peak())
      r['fraction_of_conv_peak'] = r['gflops_per_s'] / r['conv3x3_gflops_per_s']
    print(json.dumps(r))
    about = ', '.join(a for a in (f"{r['code']} k={r['k']}", r['cell'] and f"{r['cell']} cells",
                                  r['layout']) if a)
    what = (f"{r['parity_model']} x{r['r']} ({about})"
            if f.stage == 'parity' else r['model'])
    print(f"\n{f.stage} {what} on {f.dataset} shapes, batch {r['batch']} {r['unit']}: "
          f"{r['per_s']:,.1f} {r['unit']}/s, {r['step_ms']:.1f} ms/step, "
          f"{r['step_gflop']:.2f} GFLOP/step, {r['gflops_per_s']:.1f} GFLOP/s")
    if f.peak:
      print(f"  CPU peak now: matmul {r['matmul_gflops_per_s']:.1f}, conv3x3 "
            f"{r['conv3x3_gflops_per_s']:.1f} GFLOP/s ({r['fraction_of_conv_peak']:.0%})")
    return
  r = run(f.code, f.k, f.batch or 64, f.epochs, f.model, train_limit=f.train_limit)
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
  flags.DEFINE_integer('batch', 0, 'Groups (images for --stage=base) per step; 0: 64 groups '
                       '(--steps: the recipe: 64 groups for k=2, else 32; F 128 CIFAR, 64 MNIST).')
  flags.DEFINE_integer('epochs', 5, 'Timed epochs (after one warm-up epoch).')
  flags.DEFINE_string('model', 'mlp', 'Parity model architecture.')
  flags.DEFINE_integer('train_limit', 0, 'Train on the first N images only (0 = all).')
  flags.DEFINE_bool('steps', False, 'Time conv training steps (any model) on random inputs.')
  flags.DEFINE_enum('stage', 'parity', ['base', 'parity'], '--steps: F or parity models.')
  flags.DEFINE_enum('dataset', 'cifar10', sorted(SHAPES), '--steps: input shapes.')
  flags.DEFINE_integer('r', 1, '--steps: parity models (a code with r > 1).')
  flags.DEFINE_string('parity_model', '', "--steps: parity architecture (default: --model).")
  flags.DEFINE_enum('layout', 'unroll', ['unroll', 'vmap'], '--steps: Stacked layout, r > 1.')
  flags.DEFINE_integer('im2col_max_pixels', models.IM2COL_MAX_PIXELS,
                       '--steps: models.IM2COL_MAX_PIXELS (0: every conv as XLA\'s own).')
  flags.DEFINE_string('cell', '', "--steps: collage cells, 'fit' or 'half' ('' = default).")
  flags.DEFINE_integer('steps_per_call', 8, '--steps: steps per jitted call.')
  flags.DEFINE_integer('calls', 5, '--steps: timed calls (median), after one warm-up.')
  flags.DEFINE_bool('peak', True, "--steps: also measure this CPU's peak (conv_peak).")
  app.run(main)
