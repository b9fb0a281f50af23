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

A PyTorch F, from the command line (`pmjax.torch_weights`: tensors only, mapped layer by
layer and its logits checked against PyTorch's to 1e-4 before anything is written):

    python -m pmjax.import_base --torch_state_dict=model.pt \
        --config=configs/cifar10.py:stage=base,model=resnet18 --workdir=W
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from pmjax import checkpoint, config_utils, metrics, runs, tasks, torch_weights, train
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
  model, init = _base_network(config, workdir)
  return _write_base_run(config, workdir, model, init, variables)


def import_torch_state_dict(config, workdir: str, path: str, reference: str = '') -> dict:
  """Writes `workdir` as a trained base run of `config` holding the PyTorch state_dict
  at `path`, once its logits match PyTorch's (`torch_weights.verify`; `reference`: an
  .npz of inputs `x` (NCHW) and the `logits` the user's own model gave); returns the
  metrics row and the measured logit gap."""
  model, init = _base_network(config, workdir)
  shape = builders.get_spec(config.data.name).image_shape
  state = torch_weights.load_state_dict(path)
  variables = torch_weights.to_flax(state, model, init, shape)
  ref = None
  if reference:
    with np.load(reference, allow_pickle=False) as f:
      ref = {'x': f['x'], 'logits': f['logits']}
  gap = torch_weights.verify(model, variables, state, shape, reference=ref)
  row = _write_base_run(config, workdir, model, init, variables)
  return {**row, 'torch_logit_gap': gap}


def _base_network(config, workdir: str) -> tuple:
  """(F's network, its initial variables) for an import of `config` into `workdir`,
  refused before any work when the config is not a base run or the workdir is taken."""
  if config.stage != 'base':
    raise config_utils.ConfigError(f'config.stage={config.stage!r}: an imported F is a '
                                   f"stage='base' run (--config=...:stage=base)")
  if os.path.exists(os.path.join(workdir, 'config.json')):
    raise FileExistsError(f'{workdir} already holds a run; import into a new workdir')
  spec = builders.get_spec(config.data.name)
  model = runs.build_model(config.model, config.data.name, kwargs=runs.model_kwargs(config)[0])
  return model, tasks.init_variables(model, config.seed, spec.image_shape)


def _write_base_run(config, workdir: str, model, init: dict, variables: dict) -> dict:
  """Checks `variables` against `init`'s tree, measures F's accuracy and writes the
  finished base run; returns its metrics row."""
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


def main(argv):
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from pmjax import cli  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  for name in ('torch_state_dict', 'workdir'):
    if not f[name].value:
      raise app.UsageError(f'--{name} is required')
  with cli.user_errors(FileExistsError):
    row = import_torch_state_dict(f.config, f.workdir, f.torch_state_dict, f.torch_reference)
  print(f"imported {f.torch_state_dict} as {f.config.model} on {f.config.data.name} into "
        f"{f.workdir}: logits within {row['torch_logit_gap']:.1e} of PyTorch's; test A_a "
        f"{row.get('test_A_a', float('nan')):.4f}", file=sys.stderr)
  print(json.dumps({'workdir': f.workdir, **row}))


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  config_utils.define_config_flag('configs/default.py', 'A stage=base config: F\'s model '
                                  '(config.model) and dataset.')
  flags.DEFINE_string('torch_state_dict', None, 'A PyTorch state_dict (torch.save(model.'
                      'state_dict(), path)); read with weights_only=True.')
  flags.DEFINE_string('torch_reference', '', 'Optional .npz of inputs x (NCHW float) and the '
                      'logits your PyTorch model gave on them: checked instead of pmjax\'s '
                      'PyTorch twin of config.model.')
  flags.DEFINE_string('workdir', None, 'The new base workdir.')
  app.run(main)
