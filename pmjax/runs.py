"""Runs: a workdir's config (its identity), its lock, and what it holds (`load_run`).

    W/config.json          the config the run was started with (see `write_config`)
    W/config_history.jsonl config changes accepted on resume (see `write_config`)
    W/metrics.jsonl        one row per epoch (and W/tb/ TensorBoard events)
    W/checkpoints/         latest/ and best/ (see pmjax.checkpoint)
    W/results.json         written by pmjax.evaluate

`load_run(W)` is the one factory from a workdir to its F, code and trained parity
networks, for evaluation, the benches and serving. `read_config` migrates configs
written by earlier versions (`migrate_config`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
from typing import Any

import jax
import ml_collections

from pmjax import checkpoint, codes, config_utils, inference, learned, models
from pmjax.data import builders, pipeline

# Fields that cannot change what a run computes: they may differ when it is resumed.
NEUTRAL_FIELDS = ('progress_bar', 'stop_after_epochs', 'eval_batch_size', 'data.manual_dir',
                  'data.data_dir', 'data.download', 'data.pipeline', 'data.device_limit_mb',
                  'data.stream_threads')
# What a base run does not read (F's parity models come later, from another workdir).
_NOT_READ_BY_BASE = ('parity.', 'code.', 'parity_model', 'parity_model_kwargs.', 'base_workdir')


class ConfigMismatchError(config_utils.ConfigError):
  """A workdir holds a run whose result-changing config differs from this one."""


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config.get(part) if config is not None else None
  return config


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _read_by(config: dict, field: str) -> bool:
  """Whether the run described by `config` (a flat dict) reads `field`."""
  def matches(pattern):
    return field.startswith(pattern) if pattern.endswith('.') else field == pattern
  stage = config.get('stage')
  if stage == 'base':
    return not any(matches(p) for p in _NOT_READ_BY_BASE)
  if stage == 'parity':
    return not field.startswith('base.')  # F comes from base_workdir
  return True


def _neutral(config: dict, field: str) -> bool:
  """Whether `field` cannot change the result (epochs: only with a constant schedule,
  where more epochs continue the same run; a decaying schedule depends on the total)."""
  if field in NEUTRAL_FIELDS:
    return True
  stage_cfg = field.rpartition('.')[0]
  return (field.endswith('.num_epochs') and
          config.get(f'{stage_cfg}.optim.schedule', 'constant') == 'constant')


def config_differences(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> tuple:
  """(result-changing, neutral) {field: (old value, new value)} between two configs."""
  a, b = _flat(_with_code_defaults(old)), _flat(_with_code_defaults(new))
  changing, neutral = {}, {}
  for field in sorted(set(a) | set(b)):
    was, now = a.get(field), b.get(field)
    if field == 'base_workdir' and was and now:
      was, now = os.path.realpath(was), os.path.realpath(now)
    if was == now or not (_read_by(a, field) or _read_by(b, field)):
      continue
    (neutral if _neutral(b, field) else changing)[field] = (was, now)
  return changing, neutral


def _with_code_defaults(config) -> dict:
  """A config as a plain dict, its `code` holding every parameter of its code."""
  d = json.loads(config_utils.to_json(config))
  code = d.get('code')
  if isinstance(code, dict) and 'name' in code:
    d['code'] = {**code, **codes.code_params(code)}
  return d


# Config fields renamed since workdirs were first written: old name -> new name.
RENAMED_FIELDS = {'log_every_steps': 'steps_per_call'}
# Config values renamed: field -> {old value: new value}.
RENAMED_VALUES = {'stage': {'all': 'base_and_parity'}}
# Config fields added since: field -> the value that means what runs did before.
ADDED_FIELDS = {'data.scaling': 'standardize', 'data.val_limit': 0, 'model_kwargs': {},
                'parity_model_kwargs': {}}


def migrate_config(config: dict) -> dict:
  """A config.json as written by an earlier pmjax -> today's layout: renamed fields
  and values, and the code's fields nested in `config.code`
  (`codes.migrate_code_config`). What the run computes, and so its identity, is
  unchanged."""
  config = dict(config)
  for old, new in RENAMED_FIELDS.items():
    if old in config and new not in config:
      config[new] = config.pop(old)
  for field, values in RENAMED_VALUES.items():
    if config.get(field) in values:
      config[field] = values[config[field]]
  for field, value in ADDED_FIELDS.items():
    *parents, name = field.split('.')
    d = config
    for p in parents:
      d[p] = dict(d.get(p) or {})
      d = d[p]
    d.setdefault(name, value)
  return codes.migrate_code_config(config)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{os.path.abspath(workdir)} is not a pmjax workdir: {path} is missing. Pass the '
        f'--workdir of a run started with `python -m pmjax.train`.')
  with open(path) as f:
    return ml_collections.ConfigDict(migrate_config(json.load(f)))


def write_config(workdir: str, config: ml_collections.ConfigDict, write: bool = True,
                 allow_change: bool = False):
  """Writes W/config.json, refusing a config that describes a different run.

  Every field that can change the result is part of the run's identity: a
  config that differs in one is refused with the list of fields, unless
  `allow_change` (`python -m pmjax.train --allow_config_change`), which records
  the change in W/config_history.jsonl. Fields that cannot change the result
  (`NEUTRAL_FIELDS`, more epochs at a constant learning rate) may differ; the
  change is said and recorded. `write=False` (processes other than 0) only checks.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  changes = {}
  if os.path.exists(path):
    changing, neutral = config_differences(read_config(workdir), config)
    if changing and not allow_change:
      listed = ', '.join(f'{f}={was!r} (this config: {now!r})'
                         for f, (was, now) in changing.items())
      if any(f.endswith('.num_epochs') for f in changing):
        listed += (' (with a decaying learning-rate schedule the number of epochs sets the '
                   'rate of every step, so more epochs are another run)')
      raise ConfigMismatchError(
          f'{os.path.abspath(workdir)} holds a run with {listed}. Use a new --workdir, '
          f'the same config to resume, or --allow_config_change to continue this run with '
          f'the new values (recorded in config_history.jsonl).')
    changes = {**changing, **neutral}
    if changes and write:
      print(f'pmjax: resuming {workdir} with changed ' + ', '.join(
          f'{f} {was!r} -> {now!r}' for f, (was, now) in changes.items()) +
            ('' if changing else ' (these cannot change the result)'), flush=True)
  if not write:
    return
  if changes:
    with open(os.path.join(workdir, 'config_history.jsonl'), 'a') as f:
      f.write(json.dumps({'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
                          'changed': {k: list(v) for k, v in changes.items()},
                          'result_changing': sorted(set(changes) - set(neutral))}) + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config_utils.to_json(config))
  os.replace(tmp, path)


class WorkdirBusyError(RuntimeError):
  """Another process is training in the same workdir."""


class WorkdirLock:
  """An exclusive lock on W/.pmjax.lock while a run trains there (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, '.pmjax.lock')
    self.enabled, self.file = enabled, None

  def __enter__(self):
    if not self.enabled:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.file = open(self.path, 'a+')
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or 'unknown'
      self.file.close()
      raise WorkdirBusyError(
          f'{os.path.dirname(os.path.abspath(self.path))} is being trained by another '
          f'process ({holder}); wait for it to finish or stop it, or use another '
          f'--workdir') from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f'pid {os.getpid()} on {socket.gethostname()}')
    self.file.flush()
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      self.file.close()  # releases the lock


def model_names(config) -> tuple:
  """(base model name, parity model name) of a config."""
  return config.model, (config.get('parity_model') or config.model)


def model_kwargs(config) -> tuple:
  """(F's, the parity model's) keyword arguments: `config.model_kwargs`, and
  `config.parity_model_kwargs` when set, else F's where the parity model is F's
  architecture (`parity_model` unset or the same name), else none."""
  base = _plain(config.get('model_kwargs'))
  parity = _plain(config.get('parity_model_kwargs'))
  if not parity and model_names(config)[1] == config.model:
    parity = base
  return base, parity


def _plain(d) -> dict:
  """A config's kwargs as a dict, lists (as config.json gives back tuples) as tuples."""
  return {k: models.hashable(v)
          for k, v in dict(d.to_dict() if hasattr(d, 'to_dict') else (d or {})).items()}


def make_code(config) -> codes.Code:
  """The code of a parity run's config (code='learned' needs its trained networks:
  `load_code`), with the parameters its config carries (`codes.code_params`: a config
  written before a field existed gets the value it meant, e.g. Cauchy coefficients)."""
  spec, c = builders.get_spec(config.data.name), config.code
  return codes.make_code(c.name, c.k, c.r, image_shape=spec.image_shape,
                         **codes.code_params(c))


def make_coder(config) -> learned.LearnedCoder:
  """The (untrained) encoder/decoder of a code='learned' config."""
  spec = builders.get_spec(config.data.name)
  return learned.make_coder(config.code.k, config.code.r, spec.num_classes, spec.image_shape,
                            codes.code_params(config.code)['encoder'])


def load_code(workdir: str, which: str = 'best') -> codes.Code:
  """The code of a parity workdir, ready to encode and decode: `make_code` for the
  hand-designed codes; for a trained code (code='learned'), its trained encoder and
  decoder."""
  config = read_config(workdir)
  if config.stage != 'parity':
    raise ValueError(f'{os.path.abspath(workdir)} is a {config.stage!r} run; a code belongs to '
                     f'a parity run (stage=parity)')
  if codes.get_code_spec(config.code.name).build is not None:
    return make_code(config)
  return _parity_networks(config, _restore_variables(workdir, which)[1])[0]


@dataclasses.dataclass
class Run:
  """What a workdir holds, loaded once: its config, F, and for a parity run its code and
  trained parity networks: the one way evaluate, the benches and serving read a run.

  For a learned code, `parity_model` is the coder and `parity_vars` its trained
  variables (with a trained copy of F under 'parity' when it has one).
  """
  workdir: str
  config: ml_collections.ConfigDict
  epoch: int                    # of the loaded checkpoint
  base_model: Any
  base_vars: dict
  code: codes.Code | None = None
  parity_model: Any = None
  parity_vars: dict | None = None

  @property
  def dataset(self) -> str:
    """The dataset's name, carrying how its images are scaled (`pipeline.Inputs`)."""
    return pipeline.inputs_of(self.config.data)

  @property
  def learned(self) -> bool:
    return (self.code is not None
            and codes.get_code_spec(self.config.code.name).task == 'learned')

  @property
  def train_parity(self) -> bool:
    return bool(codes.code_params(self.config.code)['train_parity']) if self.learned \
        else False

  def parity_outputs(self, batch_size: int):
    """x_uint8_GxKx... -> (code, z_GxRxC): this run's coded queries answered by its
    trained networks (a parity model, or F / its trained copy on learned queries)."""
    if self.learned:
      fn = learned.make_parity_outputs(self.parity_model, self.base_model, self.base_vars,
                                       self.dataset, batch_size, self.train_parity)
      trained = {'params': self.parity_vars['params']}
      return lambda x_GxK: fn(trained, x_GxK)
    fn = inference.make_parity_outputs(self.parity_model, self.code, self.dataset, batch_size)
    return lambda x_GxK: fn(self.parity_vars, x_GxK)

  def parity_predicts(self) -> tuple:
    """(apply_fn, [variables of slot j for j < code.r]): what answers each coded query in
    serving (one network per slot)."""
    if self.learned:  # F, or its trained copy, answers every learned parity query
      f_vars = self.base_vars
      if self.train_parity:
        f_vars = {**self.base_vars, 'params': self.parity_vars['params']['parity']}
      return inference.make_apply(self.base_model), [f_vars] * self.code.r
    if self.code.r == 1:
      return inference.make_apply(self.parity_model), [self.parity_vars]
    return (inference.make_apply(self.parity_model.base),
            [models.Stacked.copy_variables(self.parity_vars, j) for j in range(self.code.r)])


def load_run(workdir: str, which: str = 'best') -> Run:
  """The `which` checkpoint of a base or parity workdir (F from base_workdir's best)."""
  config = read_config(workdir)
  if config.stage == 'base_and_parity':
    raise ValueError(f'{os.path.abspath(workdir)} holds a stage=base_and_parity run: load its '
                     f'{os.path.join(workdir, "base")} or {os.path.join(workdir, "parity")}')
  _, own_vars, epoch = _restore_variables(workdir, which)
  base_model = build_model(config.model, config.data.name, kwargs=model_kwargs(config)[0])
  if config.stage == 'base':
    return Run(workdir, config, epoch, base_model, own_vars)
  _, base_vars, _ = _restore_variables(config.base_workdir, 'best')
  code, parity_model = _parity_networks(config, own_vars)
  return Run(workdir, config, epoch, base_model, base_vars, code, parity_model, own_vars)


def _parity_networks(config, trained_vars) -> tuple:
  """(code, trained network) of a parity run: its parity model(s), or for a learned
  code the coder (and the Code made of its trained encoder and decoder)."""
  if codes.get_code_spec(config.code.name).task == 'learned':
    coder = make_coder(config)
    coder_vars, _ = learned.split_variables(
        trained_vars['params'], {}, codes.code_params(config.code)['train_parity'])
    return learned.make_learned_code(coder, coder_vars), coder
  code = make_code(config)
  return code, build_model(model_names(config)[1], config.data.name, code.r, code.k,
                           model_kwargs(config)[1])


def build_model(name: str, dataset: str, r: int = 1, k: int | None = None,
                kwargs: dict | None = None):
  """F, or the parity model(s) of a code with k data and r parity queries: `name` (a
  built-in or an import path, `models.resolve_model`) built with `kwargs`. The user's
  own module is traced once on the dataset's input shape, so that a module that cannot
  run is refused here with a message naming it."""
  spec = builders.get_spec(dataset)
  model = models.get_parity_model(name, spec.num_classes, r, k, spec.image_shape, kwargs)
  if r == 1 and models.is_import_path(name) and not name.startswith(models.PARITY_PREFIXES):
    models.check_model(model, name, spec.image_shape, spec.num_classes)
  return model


def load_variables(workdir: str, which: str = 'best') -> tuple:
  """(config, model, variables, epoch) of the `which` checkpoint of a base or parity run.

  For a parity run the model and variables are F_P's (a learned code's: its coder's);
  F's checkpoint is not read.
  """
  config, variables, epoch = _restore_variables(workdir, which)
  if config.stage == 'base':
    return (config, build_model(config.model, config.data.name, kwargs=model_kwargs(config)[0]),
            variables, epoch)
  return config, _parity_networks(config, variables)[1], variables, epoch


def _restore_variables(workdir: str, which: str) -> tuple:
  """(config, variables, epoch) of a workdir's `which` checkpoint."""
  config = read_config(workdir)
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
  return config, variables, int(tree['epoch'])
