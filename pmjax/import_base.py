"""A base model F trained elsewhere -> a pmjax base workdir that parity runs build on.

    from pmjax import import_base
    import_base.import_base_variables(config, 'workdirs/my_f', {'params': params})

`config` is a stage=base config (its model, dataset and `data.scaling` say what F
is and which inputs it reads); `variables` must have exactly the parameter tree of
`get_model(config.model)` (names, shapes; a mismatch is refused, naming the
leaves). The workdir gets config.json, best and latest checkpoints of epoch
`config.base.num_epochs` (so `python -m pmjax.train` on it trains nothing more) and
one metrics row with F's validation and test accuracy, measured here. Then
`--config.base_workdir=W` trains parity models for it and `python -m pmjax.evaluate
--workdir=W` reports its accuracy. `launch/import_original_base_mlp.py` imports the
original artifact's PyTorch base-mlp this way.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from pmjax import checkpoint, config_utils, metrics, runs, tasks, train
from pmjax.data import builders, pipeline


def _tree_mismatch(want, got) -> list:
  """Lines naming the leaves whose path or shape differ between two trees."""
  flat = lambda t: {jax.tree_util.keystr(p): np.shape(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  a, b = flat(want), flat(got)
  lines = [f'{k}: missing (expected shape {a[k]})' for k in sorted(set(a) - set(b))]
  lines += [f'{k}: not a parameter of the model' for k in sorted(set(b) - set(a))]
  lines += [f'{k}: shape {b[k]}, expected {a[k]}' for k in sorted(set(a) & set(b))
            if a[k] != b[k]]
  return lines


def import_base_variables(config, workdir: str, variables: dict) -> dict:
  """Writes `workdir` as a trained base run of `config` holding `variables`; returns
  its metrics row (val_A_a, test_A_a, ...)."""
  if config.stage != 'base':
    raise config_utils.ConfigError(f'config.stage={config.stage!r}: an imported F is a '
                                   f"stage='base' run")
  if os.path.exists(os.path.join(workdir, 'config.json')):
    raise FileExistsError(f'{workdir} already holds a run; import into a new workdir')
  spec = builders.get_spec(config.data.name)
  model = runs.build_model(config.model, config.data.name, kwargs=runs.model_kwargs(config)[0])
  init = tasks.init_variables(model, config.seed, spec.image_shape)
  want = {'params': init['params'], 'batch_stats': init.get('batch_stats', {})}
  got = {'params': variables['params'],
         'batch_stats': variables.get('batch_stats') or want['batch_stats']}
  bad = _tree_mismatch(want, got)
  if bad:
    raise ValueError(f'the imported variables do not fit {config.model} on '
                     f'{config.data.name}:\n  ' + '\n  '.join(bad[:20]) +
                     '\nConvert them to the Flax parameter tree of '
                     f'pmjax.models.get_model({config.model!r}) first.')
  got = jax.tree.map(lambda w, v: jnp.asarray(v, jnp.asarray(w).dtype), want, got)
  for name, leaf in jax.tree_util.tree_flatten_with_path(got)[0]:
    if not np.all(np.isfinite(np.asarray(leaf))):
      raise ValueError(f'imported parameter {jax.tree_util.keystr(name)} holds NaN or Inf')

  runs.write_config(workdir, config)
  splits = pipeline.load_splits(config.data)
  evaluator = tasks.BaseEvaluator(model, pipeline.inputs_of(config.data), splits,
                                  config.get('eval_batch_size', 1000))
  row = evaluator(got)
  epochs = config.base.num_epochs
  tx = train.make_optimizer(config.base.optim, max(1, epochs))
  state = jax.tree.map(jnp.asarray, train.create_state(model, tx, got))  # int32 step
  tree = train.ckpt_tree(state, epochs, row[evaluator.best_key], epochs)
  ckpts = checkpoint.Checkpoints(workdir)
  try:
    ckpts.save('best', tree)
    metrics.MetricWriter(workdir).write(epochs, {'imported': True, **row})
    ckpts.save('latest', tree)
  finally:
    ckpts.close()
  return row
