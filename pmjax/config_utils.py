"""Helpers for the `configs/*.py` files (ml_collections ConfigDicts)."""

from __future__ import annotations

import json

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
