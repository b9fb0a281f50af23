"""A run's working directory: its config.json, its checkpoints, its models.

    W/config.json        the config the run was started with
    W/metrics.jsonl      one row per epoch (and W/tb/ TensorBoard events)
    W/checkpoints/       latest/ and best/ (see pmjax.checkpoint)
    W/results.json       written by pmjax.evaluate
"""

from __future__ import annotations

import os

import jax
import ml_collections

from pmjax import checkpoint, codes, config_utils, learned, models
from pmjax.data import builders

# Fields that define what a workdir holds: resuming with other values is an error.
IDENTITY_FIELDS = ('stage', 'seed', 'data.name', 'model', 'parity_model', 'code', 'k', 'r')
# Also identity for one code: the value a config written before the field existed meant.
CODE_FIELDS = {
    'linear': {'parity_input': 'concat', 'linear_coefficients': 'cauchy'},
    'learned': {'learned_loss': 'mse', 'learned_encoder': 'mlp', 'learned_train_parity': False},
}


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config.get(part) if config is not None else None
  return config


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{os.path.abspath(workdir)} is not a pmjax workdir: {path} is missing. Pass the '
        f'--workdir of a run started with `python -m pmjax.train`.')
  with open(path) as f:
    return config_utils.from_json(f.read())


def write_config(workdir: str, config: ml_collections.ConfigDict, write: bool = True):
  """Writes W/config.json, refusing a config that describes a different run.

  `write=False` (processes other than 0) only checks."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    old = read_config(workdir)
    fields = {f: None for f in IDENTITY_FIELDS}
    fields.update(CODE_FIELDS.get(_get(config, 'code'), {}))
    for field, default in fields.items():
      was = _get(old, field)
      was = default if was is None else was
      if was != _get(config, field):
        raise ValueError(
            f'{os.path.abspath(workdir)} holds a run with {field}={was!r}, but '
            f'this config has {field}={_get(config, field)!r}. Use a new --workdir, or the '
            f'same config to resume.')
  if not write:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config_utils.to_json(config))
  os.replace(tmp, path)


def model_names(config) -> tuple:
  """(base model name, parity model name) of a config."""
  return config.model, (config.get('parity_model') or config.model)


def make_code(config) -> codes.Code:
  """The code of a parity run's config (code='learned' needs its trained networks:
  `load_code`).

  A config written before `linear_coefficients` existed used the Cauchy matrix.
  """
  spec = builders.get_spec(config.data.name)
  return codes.make_code(config.code, config.k, config.get('r', 1), image_shape=spec.image_shape,
                         parity_input=config.get('parity_input', 'concat'),
                         coefficients=config.get('linear_coefficients', 'cauchy'))


def load_code(workdir: str, which: str = 'best') -> codes.Code:
  """The code of a parity workdir, ready to encode and decode: `make_code` for the
  hand-designed codes; for code='learned', its trained encoder and decoder."""
  config = read_config(workdir)
  if config.stage != 'parity':
    raise ValueError(f'{os.path.abspath(workdir)} is a {config.stage!r} run; a code belongs to '
                     f'a parity run (stage=parity)')
  if config.code != 'learned':
    return make_code(config)
  spec = builders.get_spec(config.data.name)
  coder = learned.make_coder(config.k, config.r, spec.num_classes, spec.image_shape,
                             config.get('learned_encoder', 'mlp'))
  _, _, variables, _ = load_variables(workdir, which)
  coder_vars, _ = learned.split_variables(variables['params'], {},
                                          config.get('learned_train_parity', False))
  return learned.make_learned_code(coder, coder_vars)


def build_model(name: str, dataset: str, r: int = 1, k: int | None = None):
  """F, or the parity model(s) of a code with k data and r parity queries."""
  spec = builders.get_spec(dataset)
  return models.get_parity_model(name, spec.num_classes, r, k, spec.image_shape)


def load_variables(workdir: str, which: str = 'best') -> tuple:
  """(config, model, variables, epoch) of the `which` checkpoint of a base or parity run.

  For a parity run the model and variables are F_P's.
  """
  config = read_config(workdir)
  base_name, parity_name = model_names(config)
  if config.stage == 'parity':
    model = build_model(parity_name, config.data.name, config.get('r', 1), config.k)
  else:
    model = build_model(base_name, config.data.name)
  ckpts = checkpoint.Checkpoints(workdir, create=False)
  try:
    tree = ckpts.restore(which, None)
  finally:
    ckpts.close()
  if tree is None:
    raise checkpoint.CheckpointError(
        f'{os.path.abspath(workdir)} has no {which} checkpoint yet; train it first '
        f'(python -m pmjax.train --workdir={workdir} ...)')
  variables = {'params': tree['params'], 'batch_stats': tree.get('batch_stats') or {}}
  variables = jax.tree.map(jax.numpy.asarray, variables)
  return config, model, variables, int(tree['epoch'])
