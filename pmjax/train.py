"""Training: base models F and parity models F_P, data parallel over every device.

    python -m pmjax.train --config=configs/mnist.py:stage=base --workdir=W
    python -m pmjax.train --config=configs/mnist.py:stage=parity,k=2,code=concat \
        --config.base_workdir=W --workdir=W2
    python -m pmjax.train --config=configs/default.py --workdir=W  # base, then parity

Stages: `base` trains F with cross-entropy; `parity` freezes F (best checkpoint
of `config.base_workdir`) and trains F_P with MSE to `code.target(F(X))` over
random groups of k that change every epoch; `base_and_parity` runs both
(W/base, W/parity) and evaluates. Re-running the same command resumes from the
latest checkpoint with the same data order.

How a step runs: the whole dataset sits on every device (or, when it is
streamed, each call's examples: `pmjax.data.stream`); an epoch is a random
permutation cut into global batches; a jitted `shard_map` over the ('data',)
mesh scans `config.steps_per_call` steps per call, each device gathering,
augmenting, normalising and encoding its slice of the batch, and gradients
are averaged with `lax.pmean`. In memory, no host work happens inside an
epoch; streamed, the host reads the next call's examples while a call runs.

What differs between kinds of training lives in `pmjax.tasks`; this module is the
loop and what it needs (optimiser, train step, config checks, resume), kept in one
file so the loop reads top to bottom (about 460 lines).
"""

from __future__ import annotations

import math
import os
import time
from functools import partial
from typing import Any, Callable

from absl import app, flags, logging
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P
from tqdm import tqdm

from pmjax import checkpoint, cli, codes, config_utils, metrics, runs, tasks
from pmjax.data import pipeline, stream
from pmjax.mesh import local_copy, make_mesh, replicate


class TrainState(train_state.TrainState):
  batch_stats: Any = None


# ---------------------------------------------------------------------------
# Optimiser, mesh, state.
# ---------------------------------------------------------------------------

def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  """Adam (torch-style L2 weight decay, as the original), AdamW or SGD+momentum,
  with a constant, cosine or warmup-cosine learning rate."""
  lr, schedule = optim_cfg.lr, optim_cfg.get('schedule', 'constant')
  warmup = int(optim_cfg.get('warmup_steps', 0))
  if schedule == 'constant':
    sched = lr
  elif schedule == 'cosine':
    sched = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, max(warmup, 1),
                                               max(total_steps, warmup + 1))
  else:
    raise ValueError(f'config optim.schedule={schedule!r} is unknown; accepted: '
                     f"'constant', 'cosine'")
  wdecay = optim_cfg.get('weight_decay', 0.0)
  name = optim_cfg.name
  if name == 'adam':
    return optax.chain(optax.add_decayed_weights(wdecay), optax.adam(sched))
  if name == 'adamw':
    return optax.adamw(sched, weight_decay=wdecay)
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(wdecay),
                       optax.sgd(sched, momentum=optim_cfg.get('momentum', 0.9),
                                 nesterov=optim_cfg.get('nesterov', False)))
  raise ValueError(f"config optim.name={name!r} is unknown; accepted: 'adam', 'adamw', 'sgd'")


def create_state(model, tx, variables) -> TrainState:
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'])


def variables_of(state: TrainState) -> dict:
  """F's variables as this process's local copy (the state is replicated)."""
  return local_copy({'params': state.params, 'batch_stats': state.batch_stats})


def initialize_distributed():
  """Joins a multi-process run when one is configured; returns the process count.

  `PMJAX_COORDINATOR`, `PMJAX_NUM_PROCESSES`, `PMJAX_PROCESS_ID` (set by
  launch/local_multiprocess.py) give the coordinator explicitly, with gloo CPU
  collectives; `PMJAX_DISTRIBUTED=1` lets JAX detect a cluster (SLURM, TPU VM).
  """
  if os.environ.get('PMJAX_COORDINATOR'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(os.environ['PMJAX_COORDINATOR'],
                               num_processes=int(os.environ['PMJAX_NUM_PROCESSES']),
                               process_id=int(os.environ['PMJAX_PROCESS_ID']))
  elif os.environ.get('PMJAX_DISTRIBUTED') == '1':
    jax.distributed.initialize()
  return jax.process_count()


# ---------------------------------------------------------------------------
# The train step and a jitted chunk of steps (pure, module level).
# ---------------------------------------------------------------------------

def train_step(state: TrainState, batch: dict, loss_fn: Callable):
  """One SGD step on this device's batch; gradients averaged over the 'data' axis."""
  def loss_of(params):
    return loss_fn(state.apply_fn, params, state.batch_stats, batch)

  # Parameters are replicated (device-invariant); differentiate a device-varying
  # copy so each device gets its own gradient, then average explicitly. (Without
  # the cast, shard_map's autodiff would already sum gradients over devices.)
  params = lax.pcast(state.params, 'data', to='varying')
  (loss, new_bs), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  grads = lax.pmean(grads, 'data')
  new_bs = lax.pmean(new_bs, 'data')
  state = state.apply_gradients(grads=grads, batch_stats=new_bs)
  return state, {'loss': lax.pmean(loss, 'data')}


def make_train_chunk(mesh: Mesh, loss_fn, batch_fn, global_batch: int, group_size: int,
                     unroll: int | bool = 1):
  """jit(state, data, chunk_data, perm, first_step, epoch_key; n_steps) -> (state, metrics).

  Runs `n_steps` train steps in one `lax.scan` inside a `shard_map`; step s
  uses groups perm[s*B : (s+1)*B] (each of `group_size` indices), device d
  its d-th slice, gathered from `data` (the whole training set, replicated).
  A streamed call (`pmjax.data.stream`) passes those same examples instead, as
  `chunk_data` sharded over the devices (device d: its slices of the n steps,
  in order; `perm` unused), so both compute the same batches. Per-example random
  keys depend on the global position only, so any device count gives the same
  result. `unroll` is passed to `lax.scan` (see `scan_unroll`).
  """
  n_dev = mesh.shape['data']
  if global_batch % n_dev:
    raise ValueError(f'batch size {global_batch} does not divide by the {n_dev} devices; '
                     f'choose a batch size that is a multiple of {n_dev}')
  per_device = global_batch // n_dev
  rows = per_device * group_size   # examples of one step on one device

  def chunk(state, data, chunk_data, perm, first_step, epoch_key, n_steps):
    dev = lax.axis_index('data')

    def body(state, s):
      step = first_step + s
      if chunk_data:   # streamed: this device's examples of step s are rows s*b*k...
        idx = (s * rows + jnp.arange(rows)).reshape(per_device, group_size)
        examples = {**data, **chunk_data}
      else:
        start = (step * global_batch + dev * per_device) * group_size
        idx = lax.dynamic_slice_in_dim(perm, start, rows).reshape(per_device, group_size)
        examples = data
      keys = jax.random.split(jax.random.fold_in(epoch_key, step), global_batch * group_size)
      keys = lax.dynamic_slice_in_dim(keys, dev * rows, rows)
      batch = batch_fn(examples, idx, keys.reshape(per_device, group_size))
      return train_step(state, batch, loss_fn)

    if n_steps == 1:
      # Straight-line code: lax.scan keeps a while loop for one step even when unrolled,
      # and XLA's CPU convolutions in a loop are ~10x slower (see scan_unroll): a chunk
      # of one step (an epoch's last) ran at a tenth of the speed of the others.
      return body(state, jnp.int32(0))
    state, m = lax.scan(body, state, jnp.arange(n_steps), unroll=unroll)
    return state, jax.tree.map(jnp.mean, m)

  @partial(jax.jit, static_argnames='n_steps', donate_argnums=0)
  def run(state, data, chunk_data, perm, first_step, epoch_key, n_steps):
    f = jax.shard_map(partial(chunk, n_steps=n_steps), mesh=mesh,
                      in_specs=(P(), P(), P('data'), P(), P(), P()), out_specs=(P(), P()))
    return f(state, data, chunk_data, perm, first_step, epoch_key)

  return run


@partial(jax.jit, static_argnums=(1, 2))
def epoch_permutation(key, n: int, used: int):
  return jax.random.permutation(key, n)[:used].astype(jnp.int32)


# ---------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------

def scan_unroll(config, model_name: str) -> tuple:
  """(unroll, steps per call) for the training scan.

  XLA's CPU backend runs convolutions inside a loop far slower than the same
  convolutions in straight-line code (vgg11, batch 32, this 2-core CPU: 5.8 s
  vs 0.87 s per step), so on CPU, models with convolutions unroll the scan and
  take at most 8 steps per call (compile time grows with the unrolled length).
  `config.scan_unroll` > 0 forces an unroll factor; 0 chooses as above.
  """
  steps = max(1, int(config.get('steps_per_call', 100)))
  forced = int(config.get('scan_unroll', 0))
  if forced:
    return forced, steps
  if jax.default_backend() == 'cpu' and not model_name.endswith('mlp'):
    return True, min(steps, 8)
  return 1, steps


def _stage_cfg(config):
  return config.base if config.stage == 'base' else config.parity


def resolve_batch_size(config) -> int:
  bs = _stage_cfg(config).batch_size
  if bs == 0:  # the original defaults: 64 groups for k=2, 32 otherwise
    bs = 64 if config.stage == 'base' or config.code.k == 2 else 32
  return bs


STAGES = ('base', 'parity', 'base_and_parity')


def validate_config(config):
  """Refuses, up front, values that would train nothing or fail deep inside a step."""
  problems = []
  if config.stage not in STAGES:
    renamed = " (renamed 'base_and_parity')" if config.stage == 'all' else ''
    raise config_utils.ConfigError(f"config.stage={config.stage!r} is unknown{renamed}; "
                                   f"accepted: {', '.join(map(repr, STAGES))}")
  stages = ('base', 'parity') if config.stage == 'base_and_parity' else (config.stage,)
  for name in stages:
    cfg = config[name]
    if not (isinstance(cfg.num_epochs, int) and cfg.num_epochs >= 1):
      problems.append(f'{name}.num_epochs={cfg.num_epochs!r} must be an integer >= 1')
    if not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 0):
      problems.append(f'{name}.batch_size={cfg.batch_size!r} must be an integer >= 1 '
                      f'(0: the default)')
    if not cfg.optim.lr > 0:
      problems.append(f'{name}.optim.lr={cfg.optim.lr!r} must be > 0')
    if cfg.optim.get('weight_decay', 0.0) < 0:
      problems.append(f'{name}.optim.weight_decay={cfg.optim.weight_decay!r} must be >= 0')
  if 'parity' in stages:
    code = config.code
    if not (isinstance(code.k, int) and code.k >= 2):
      problems.append(f'code.k={code.k!r} must be an integer >= 2')
    if not (isinstance(code.r, int) and code.r >= 1):
      problems.append(f'code.r={code.r!r} must be an integer >= 1')
    try:
      codes.code_params(code)
    except ValueError as e:
      problems.append(f'config.code: {e}')
  for field in ('steps_per_call', 'eval_every_epochs', 'eval_batch_size'):
    if not (isinstance(config.get(field, 1), int) and config.get(field, 1) >= 1):
      problems.append(f'{field}={config.get(field)!r} must be an integer >= 1')
  for field in ('train_limit', 'test_limit'):
    if not (isinstance(config.data.get(field, 0), int) and config.data.get(field, 0) >= 0):
      problems.append(f'data.{field}={config.data.get(field)!r} must be an integer >= 0 '
                      f'(0: all)')
  if not (isinstance(config.get('stop_after_epochs', 0), int)
          and config.get('stop_after_epochs', 0) >= 0):
    problems.append(f'stop_after_epochs={config.stop_after_epochs!r} must be >= 0')
  if problems:
    raise config_utils.ConfigError('invalid config: ' + '; '.join(problems) +
                     '. Fix these values (--config.FIELD=VALUE) and re-run.')


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Trains the configured stage(s) in `workdir`; returns the final metrics.

  `allow_config_change` continues a workdir whose config differs in fields
  that change the result (recorded in W/config_history.jsonl); without it,
  such a workdir is refused (see `pmjax.runs.write_config`).
  """
  validate_config(config)
  if config.stage == 'base_and_parity':
    base_dir, parity_dir = os.path.join(workdir, 'base'), os.path.join(workdir, 'parity')
    with runs.WorkdirLock(workdir, enabled=jax.process_index() == 0):
      runs.write_config(workdir, config, write=jax.process_index() == 0,
                      allow_change=allow_config_change)
      with config.unlocked():
        base_cfg = config.copy_and_resolve_references()
        base_cfg.stage = 'base'
        parity_cfg = config.copy_and_resolve_references()
        parity_cfg.stage, parity_cfg.base_workdir = 'parity', base_dir
      train_stage(base_cfg, base_dir, allow_config_change)
      train_stage(parity_cfg, parity_dir, allow_config_change)
      from pmjax import evaluate  # pylint: disable=g-import-not-at-top
      return evaluate.evaluate_workdir(workdir)
  return train_stage(config, workdir, allow_config_change)


def load_base_model(base_workdir: str, dataset: str, model_name: str,
                    model_kwargs: dict | None = None) -> tuple:
  """(config, model, variables) of the trained F a parity run is built on."""
  base_cfg = runs.read_config(base_workdir)
  if base_cfg.stage != 'base':
    hint = (f' (its base model is in {os.path.join(base_workdir, "base")})'
            if base_cfg.stage == 'base_and_parity' else '')
    raise config_utils.ConfigError(
        f'base_workdir {base_workdir} holds a {base_cfg.stage!r} run, not a trained base '
        f'model{hint}. Set --config.base_workdir to the workdir of a stage=base run.')
  base_cfg, base_model, base_vars, _ = runs.load_variables(base_workdir, 'best')
  if base_cfg.data.name != dataset or base_cfg.model != model_name:
    raise config_utils.ConfigError(
        f'base_workdir {base_workdir} holds {base_cfg.model} on '
        f'{base_cfg.data.name}, but this config asks for {model_name} on {dataset}')
  if model_kwargs is not None and runs.model_kwargs(base_cfg)[0] != model_kwargs:
    raise config_utils.ConfigError(
        f'base_workdir {base_workdir} holds {model_name} with model_kwargs='
        f'{runs.model_kwargs(base_cfg)[0]}, but this config has {model_kwargs}; set '
        f'config.model_kwargs to the base run\'s')
  scaling = getattr(dataset, 'scaling', 'standardize')
  if base_cfg.data.scaling != scaling:
    raise config_utils.ConfigError(
        f'base_workdir {base_workdir} holds F trained on data.scaling='
        f'{base_cfg.data.scaling!r} inputs, but this config asks for {scaling!r}; set '
        f'--config.data.scaling={base_cfg.data.scaling} (F and its parity models read the '
        f'same inputs)')
  return base_cfg, base_model, base_vars


def train_stage(config, workdir: str, allow_config_change: bool = False) -> dict:
  with runs.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _train_stage(config, workdir, allow_config_change)


def _train_stage(config, workdir: str, allow_config_change: bool) -> dict:
  if config.get('base_workdir'):
    with config.unlocked():
      config.base_workdir = os.path.abspath(config.base_workdir)
  dataset = pipeline.inputs_of(config.data)
  if config.stage == 'parity':  # checked before the workdir records this config
    if not config.get('base_workdir'):
      raise config_utils.ConfigError(
          'config.base_workdir is empty: a parity run needs the workdir of a trained base '
          'model (--config.base_workdir=W_BASE)')
    _, base_model, base_vars = load_base_model(config.base_workdir, dataset, config.model,
                                                runs.model_kwargs(config)[0])
  runs.write_config(workdir, config, write=jax.process_index() == 0,
                  allow_change=allow_config_change)
  # ----- Data and the task: what is trained, on what, with which loss. -----
  splits = pipeline.load_splits(config.data)
  eval_bs = config.get('eval_batch_size', 1000)
  task = tasks.make_task(config, splits, eval_bs,
                         base=(base_model, base_vars) if config.stage == 'parity' else None)
  mesh = make_mesh()
  batch_size = resolve_batch_size(config)
  n_train = splits.train_x.shape[0]
  steps_per_epoch = (n_train // task.group_size) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{n_train} training examples make no full batch of {batch_size} '
                     f'groups of {task.group_size}; lower the batch size')

  # ----- State, data on every device, the jitted chunk of steps. -----
  stage_cfg = _stage_cfg(config)
  num_epochs = stage_cfg.num_epochs
  tx = make_optimizer(stage_cfg.optim, steps_per_epoch * num_epochs)
  state = replicate(create_state(task.model, tx, task.init_variables(config.seed)), mesh)
  streamed = isinstance(splits.train_x, stream.SourceArray)
  if streamed:   # per-example arrays are read per call; the rest is replicated
    per_example = {n: a for n, a in task.data.items()
                   if isinstance(a, np.ndarray) and a.shape[:1] == (n_train,)}
    data = replicate({n: a for n, a in task.data.items() if n not in per_example}, mesh)
    reader = stream.ChunkReader(splits.train_x.source, per_example, mesh, batch_size,
                                task.group_size, config.data.get('stream_threads', 4))
  else:
    data = replicate({'train_x': splits.train_x, 'train_y': splits.train_y, **task.data},
                     mesh)
  unroll, steps_per_call = scan_unroll(config, task.unroll_model)
  run_chunk = make_train_chunk(mesh, task.loss_fn, task.batch_fn, batch_size,
                               task.group_size, unroll)
  evaluator, group_size = task.evaluator, task.group_size

  # ----- Resume from the latest good checkpoint. -----
  ckpts = checkpoint.Checkpoints(workdir)
  start_epoch, best, best_epoch = 0, -math.inf, 0
  restored = ckpts.restore('latest', ckpt_tree(state, 0, best, 0))
  if restored is not None:
    state = replicate(state.replace(
        params=restored['params'], batch_stats=restored['batch_stats'],
        opt_state=restored['opt_state'], step=restored['step']), mesh)
    start_epoch, best = int(restored['epoch']), float(restored['best_metric'])
    best_epoch = int(restored.get('best_epoch', 0))
    ckpts.repair_best(restored)
    print(f'Resumed {workdir} from epoch {start_epoch}', flush=True)
  writer = metrics.MetricWriter(workdir, resume_epoch=start_epoch,
                                enabled=jax.process_index() == 0)

  # ----- Epochs: train, evaluate, save best -> metrics row -> latest. -----
  data_key = jax.random.key(config.seed + 1)
  used = steps_per_epoch * batch_size * group_size
  chunk = min(steps_per_call, steps_per_epoch)
  stop_after = config.get('stop_after_epochs', 0)
  last = {}
  for epoch in range(start_epoch + 1, num_epochs + 1):
    if stop_after and epoch > start_epoch + stop_after:
      break
    t0 = time.time()
    epoch_key = jax.random.fold_in(data_key, epoch)
    perm = epoch_permutation(jax.random.fold_in(epoch_key, 0), n_train, used)
    losses = []
    with tqdm(total=steps_per_epoch, desc=f'{config.stage} epoch {epoch}/{num_epochs}',
              leave=False, disable=not config.get('progress_bar', True)
              or jax.process_index() != 0) as bar:
      plan = [(first, min(chunk, steps_per_epoch - first))
              for first in range(0, steps_per_epoch, chunk)]
      chunks = (stream.Prefetch(reader.epoch(local_copy(perm), plan)) if streamed
                else [{}] * len(plan))
      for (first, n), chunk_data in zip(plan, chunks):
        state, m = run_chunk(state, data, chunk_data, perm, jnp.int32(first), epoch_key,
                             n_steps=n)
        loss = float(local_copy(m['loss']))
        if not math.isfinite(loss):
          ckpts.close()
          if streamed:
            chunks.close()
          raise FloatingPointError(
              f'training loss became {loss} in epoch {epoch} (steps {first}..{first + n}); '
              f'stopped without saving it. The last good checkpoint (epoch {epoch - 1}, if '
              f'any) is kept in {workdir}/checkpoints. Lower the learning rate '
              f'(--config.{"base" if config.stage == "base" else "parity"}.optim.lr) and re-run.')
        losses.append((loss, n))
        bar.update(n)
        bar.set_postfix(loss=f'{loss:.4g}')
    train_time = time.time() - t0
    row = {'train_loss': sum(l * n for l, n in losses) / steps_per_epoch,
           'train_time_s': train_time,
           'groups_per_s': steps_per_epoch * batch_size / train_time}
    if streamed:   # time the loop waited for examples (the first call's read included)
      row['input_wait_s'] = chunks.wait_s
    if epoch % config.get('eval_every_epochs', 1) == 0 or epoch == num_epochs:
      row.update(evaluator(variables_of(state)))
    if row.get(evaluator.best_key, -math.inf) > best:
      best, best_epoch = row[evaluator.best_key], epoch
    # Best, then the metrics row, then latest: a kill anywhere in between leaves a
    # latest checkpoint whose later epochs are all re-done (identically) on resume,
    # so best, latest and metrics.jsonl always agree (see pmjax.checkpoint).
    tree = ckpt_tree(state, epoch, best, best_epoch)
    if best_epoch == epoch:
      ckpts.save('best', tree)
    writer.write(epoch, row)
    ckpts.save('latest', tree)
    last = {'epoch': epoch, **row}
    if jax.process_index() == 0:
      tqdm.write(f'{config.stage} epoch {epoch}/{num_epochs}: ' +
                 ', '.join(f'{k}={v:.4g}' for k, v in row.items()))
  ckpts.close()
  writer.close()
  return last


def ckpt_tree(state, epoch, best, best_epoch):
  """What a checkpoint of a run holds (also written by `pmjax.import_base`)."""
  return {'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'step': state.step,
          'epoch': np.int64(epoch), 'best_metric': np.float64(best),
          'best_epoch': np.int64(best_epoch), 'checksum': np.zeros(32, np.uint8)}


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if flags.FLAGS.workdir is None:
    raise app.UsageError('--workdir is required (where checkpoints and metrics go)')
  initialize_distributed()
  with cli.user_errors():
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                       allow_config_change=flags.FLAGS.allow_config_change)


if __name__ == '__main__':
  config_utils.define_config_flag('configs/default.py', 'Training config file.')
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
  flags.DEFINE_bool('allow_config_change', False,
                    'Continue a workdir whose config differs in fields that change the '
                    'result; the change is recorded in WORKDIR/config_history.jsonl.')
  app.run(main)
