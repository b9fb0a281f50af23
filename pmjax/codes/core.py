"""The code abstraction and its registry: `Code`, `CodeSpec`, `make_code`, shared checks.

See the package docstring (`pmjax.codes`) for what a code is; the codes
themselves live in `parm`, `linear` and `berrut`, each registering its spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Code(NamedTuple):
  name: str
  k: int                 # data queries per group
  r: int                 # coded (parity) queries per group
  encode: Callable       # x_BxKx... -> p_BxRx...
  target: Callable       # y_BxKxC -> t_BxRxC
  decode: Callable       # (y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR) -> yhat_BxKxC
  systematic: bool = True    # F answers the data queries themselves (decode keeps them)
  tolerates: int = 1         # missing outputs per group it rebuilds (make_code's r)
  answered_by: str = 'parity_model'  # who answers the coded queries: 'parity_model' (r
                                     # trained models), 'f' (F itself: training-free codes)
  parity_width: int = 1      # C-vectors per coded output: z_BxRx(parity_width*C) (collage: k)
  rebuilds_all: bool = False  # one available coded output rebuilds every missing data output


@dataclasses.dataclass(frozen=True)
class Param:
  """A typed parameter of a code: `config.code.<name>` in a run config."""
  name: str
  default: Any
  choices: tuple = ()            # accepted values (empty: any value of the default's type)
  legacy_field: str | None = None  # the flat field that carried it before `config.code`
  legacy: Any = None             # what a flat config without that field meant


@dataclasses.dataclass(frozen=True)
class CodeSpec:
  """A registered code: how to build it and what the rest of pmjax needs to know."""
  name: str
  build: Callable | None         # build(k, r, image_shape, **params) -> Code; None: trained
  params: tuple = ()             # Param, ...
  max_r: Callable = lambda k: 1  # the largest r (missing outputs tolerated) for k
  r_rule: str = 'r=1'            # max_r in words, for error messages
  trained: bool = True           # needs training (a parity model, or a coder)
  exact: bool = True             # decode(y, avail, target(y), ...) == y for any y
  how_to_make: str = ''          # for build=None: how to get one
  r_hint: str = ''               # said when r is too large
  describe: Callable | None = None  # describe(r, **params) -> a label naming the variant
  task: str = 'parity'           # the training task of pmjax.tasks that trains it


CODE_SPECS: dict = {}


def register_code(spec: CodeSpec) -> CodeSpec:
  """Makes `spec` buildable by name (`make_code`, `config.code`)."""
  CODE_SPECS[spec.name] = spec
  return spec


def get_code_spec(name: str) -> CodeSpec:
  if name not in CODE_SPECS:
    buildable = [n for n, c in CODE_SPECS.items() if c.build is not None]
    trained = [n for n, c in CODE_SPECS.items() if c.build is None]
    raise ValueError(f'code name {name!r} is unknown; accepted values: {buildable}, and '
                     + ', '.join(repr(n) for n in trained) +
                     ' (trained: `python -m pmjax.train ... code=NAME`, then '
                     'pmjax.runs.load_code)')
  return CODE_SPECS[name]


def code_config(name: str, k: int = 2, r: int = 1, **params):
  """`config.code` of a run: ConfigDict(name, k, r, <the code's parameters>), every
  parameter present (its default unless given), checked against the registry."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  spec = get_code_spec(name)
  return ml_collections.ConfigDict(dict(name=name, k=k, r=r, **_check_params(spec, params)))


def code_params(code_cfg) -> dict:
  """The parameters of `config.code` (a ConfigDict or dict: name, k, r, params), each
  checked against its code's `Param`s; a parameter the config lacks takes its default."""
  cfg = dict(code_cfg)
  spec = get_code_spec(cfg.pop('name'))
  cfg.pop('k', None)
  cfg.pop('r', None)
  return _check_params(spec, cfg)


def migrate_code_config(config: dict) -> dict:
  """A run config written before `config.code` was nested (code, k, r and the codes'
  flat fields such as linear_coefficients at the top level) -> `code: {name, k, r,
  params}`; a parameter whose flat field the old config lacks takes the value such a
  config meant (`Param.legacy`: e.g. Cauchy coefficients before they were a choice)."""
  if not isinstance(config.get('code'), str):
    return config
  config = dict(config)
  spec = get_code_spec(config['code'])
  legacy_fields = {p.legacy_field for s in CODE_SPECS.values() for p in s.params
                   if p.legacy_field}
  params = {}
  for p in spec.params:
    value = config.get(p.legacy_field) if p.legacy_field else None
    params[p.name] = (p.legacy if p.legacy is not None else p.default) if value is None \
        else value
  code = dict(name=config.pop('code'), k=config.pop('k', 2), r=config.pop('r', 1), **params)
  for field in legacy_fields:
    config.pop(field, None)
  config['code'] = code
  return config


def describe_code(name: str, r: int, params: dict) -> str:
  """A label naming the code and the parameters that tell its variants apart."""
  spec = get_code_spec(name)
  return spec.describe(r, **params) if spec.describe else name


def _check_params(spec: CodeSpec, params: dict) -> dict:
  known = {p.name: p for p in spec.params}
  unknown = sorted(set(params) - set(known))
  if unknown:
    raise ValueError(f'code {spec.name!r} has no parameter {unknown[0]!r}; its parameters: '
                     f'{sorted(known) or "none"}')
  out = {}
  for name, p in known.items():
    value = params.get(name, p.default)
    if p.choices and value not in p.choices:
      raise ValueError(f'{name}={value!r} is unknown for code {spec.name!r}; accepted '
                       f'values: {list(p.choices)}')
    out[name] = value
  return out


def make_code(name: str, k: int, r: int = 1, image_shape=None, **params) -> Code:
  """Builds the registered code `name` for groups of `k` queries tolerating `r`
  missing outputs.

  `image_shape` (H, W, C) is optional; when given, inputs are checked against
  it and `concat` checks at once that its grid divides the image. `params`
  are the code's own (`CODE_SPECS[name].params`): `linear` takes
  `parity_input` ('concat' or 'sum') and `coefficients` ('auto', 'balanced',
  'cauchy'; see `coefficient_matrix`); `berrut` takes `systematic` (see
  `_berrut_code`).
  """
  spec = get_code_spec(name)
  if spec.build is None:
    raise ValueError(spec.how_to_make)
  if not isinstance(k, (int, np.integer)) or k < 2:
    raise ValueError(f'k={k!r} is invalid: k (queries per coding group) must be an '
                     f'integer >= 2')
  if not isinstance(r, (int, np.integer)) or r < 1:
    raise ValueError(f'r={r!r} is invalid: r (missing outputs tolerated per group) must be '
                     f'an integer >= 1')
  if r > spec.max_r(int(k)):
    raise ValueError(f'r={r} is not supported by code {name!r} with k={k}; accepted values: '
                     f'{spec.r_rule}' + (f' ({spec.r_hint})' if spec.r_hint else ''))
  params = _check_params(spec, params)
  if image_shape is not None:
    image_shape = tuple(int(d) for d in image_shape)
  return spec.build(int(k), int(r), image_shape, **params)


def coded_query_shape(code: Code, image_shape) -> tuple:
  """The shape of one coded query of `code` on queries of `image_shape` (what each of its
  parity models takes): `image_shape` for most codes; larger for `collage` with
  cell='half'. Traced on shapes only (no compute)."""
  x = jax.ShapeDtypeStruct((1, code.k, *image_shape), jnp.float32)
  return tuple(jax.eval_shape(code.encode, x).shape[2:])


# --------------------------------------------------------------------------
# Checks and matrix encoders shared by the codes.
# --------------------------------------------------------------------------

def is_concrete(*arrays):
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_x(x, k, image_shape, min_rank=3):
  if x.ndim < min_rank:
    raise ValueError(f'x has shape {x.shape}; expected x_BxKx... with rank >= {min_rank} '
                     f'(batch, k={k}, then the query shape)')
  if x.shape[1] != k:
    raise ValueError(f'x has shape {x.shape}; axis 1 must be the group size k={k}')
  if image_shape is not None and tuple(x.shape[2:]) != image_shape:
    raise ValueError(f'x has shape {x.shape}; queries must have image_shape='
                     f'{image_shape}, the shape the code was made for')


def check_decode_args(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR, k, r, width=1):
  """Shapes of decode's arguments; `width`: C-vectors per coded output (Code.parity_width)."""
  check_x(y_BxKxC, k, None)
  b, _, c = y_BxKxC.shape
  if (avail_BxK.shape != (b, k) or z_BxRxC.shape != (b, r, width * c)
      or zavail_BxR.shape != (b, r)):
    z_name = 'z_BxRxC' if width == 1 else f'z_BxRx({width}C)'
    raise ValueError(
        f'decode got y {y_BxKxC.shape}, avail {avail_BxK.shape}, z {z_BxRxC.shape}, '
        f'zavail {zavail_BxR.shape}; expected y_BxKxC, avail_BxK, {z_name}, zavail_BxR '
        f'with B={b}, K={k}, R={r}, C={c}')


def raise_if_undecodable(decodable_B, masks, why):
  """With concrete masks, a group that cannot be decoded is an error (`why(g)` says
  why); under jit its rows come back NaN instead."""
  if is_concrete(*masks) and not bool(np.all(decodable_B)):
    bad = int(np.argmax(~np.asarray(decodable_B)))
    raise ValueError(f'group {bad} cannot be decoded: {why(bad)}')


def one_parity_per_missing(avail_BxK, zavail_BxR, name: str):
  """decodable_B of a code that rebuilds m missing outputs from any m parity outputs
  (linear, learned); with concrete masks an undecodable group raises."""
  k, r = avail_BxK.shape[1], zavail_BxR.shape[1]
  n_missing_B = k - jnp.sum(avail_BxK.astype(bool), axis=1)
  n_parity_B = jnp.sum(zavail_BxR.astype(bool), axis=1)
  decodable_B = n_missing_B <= n_parity_B
  raise_if_undecodable(decodable_B, (avail_BxK, zavail_BxR), lambda g: (
      f'{int(n_missing_B[g])} of k={k} outputs missing but only {int(n_parity_B[g])} of '
      f'r={r} parity outputs available; the {name} code rebuilds m missing outputs from '
      f'>= m parities'))
  return decodable_B


def matrix_encoder(w_rxk, k, image_shape):
  def encode(x_BxKx):
    """p_j = sum_i W[j,i] X_i: p_BxRx..."""
    check_x(x_BxKx, k, image_shape)
    return jnp.einsum('ri,bi...->br...', w_rxk, x_BxKx.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST).astype(x_BxKx.dtype)
  return encode


def matrix_target(w_rxk, k):
  def target(y_BxKxC):
    """t_j = sum_i W[j,i] F(X_i): t_BxRxC."""
    check_x(y_BxKxC, k, None)
    return jnp.einsum('ri,bic->brc', w_rxk, y_BxKxC, precision=jax.lax.Precision.HIGHEST)
  return target
