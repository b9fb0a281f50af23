"""Helpers for the `configs/*.py` files (ml_collections ConfigDicts)."""

from __future__ import annotations

import importlib.util
import json
import os

import ml_collections


class ConfigError(ValueError):
  """A config that cannot run as given; the message names the field and the fix."""


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument such as "stage=parity,k=3,code=concat,smoke".

  Keys must be among `defaults`; values take the type of the default; a bare
  key sets a boolean to True. Unknown keys raise ValueError listing the choices.
  """
  out = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; accepted: {sorted(defaults)}')
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = (not value) or value.lower() in ('1', 'true', 'yes')
    elif value == '':
      raise ValueError(f'config argument {key!r} needs a value: {key}=...')
    else:
      out[key] = type(default)(value) if default is not None else value
  return ml_collections.ConfigDict(out)


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def _configs_dir() -> str | None:
  spec = importlib.util.find_spec('configs')
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def define_config_flag(default: str, help_text: str):
  """`--config` of a command line: an ml_collections config file (with `--config.F=V`
  overrides), `default` (e.g. 'configs/serving.py') when not given; pmjax's own
  config files are found from any working directory."""
  import sys  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  sys.argv = resolve_config_flag(sys.argv)
  configs_dir = _configs_dir()
  if (configs_dir and not os.path.exists(default)
      and default.startswith('configs' + os.sep)):
    default = os.path.join(configs_dir, default[len('configs' + os.sep):])
  config_flags.DEFINE_config_file('config', default, help_text)


def resolve_config_flag(argv: list) -> list:
  """Makes `--config=configs/X.py[:args]` work from any directory.

  A config path that does not exist relative to the working directory but
  names a file of pmjax's own `configs` package (installed with `pip install
  -e .`, or beside the repository) is replaced by that file's absolute path.
  """
  configs_dir = _configs_dir()
  if configs_dir is None:
    return argv
  out = []
  for arg in argv:
    if arg.startswith('--config='):
      path, colon, rest = arg[len('--config='):].partition(':')
      if not os.path.exists(path) and path.startswith('configs' + os.sep):
        candidate = os.path.join(configs_dir, path[len('configs' + os.sep):])
        if os.path.exists(candidate):
          arg = f'--config={candidate}{colon}{rest}'
    out.append(arg)
  return out
