"""Codes: pure, jittable, batch-first encode / target / decode functions.

A `Code` bundles what coded computation needs around a parity model F_P:

  encode(x_BxKx...)                      -> p_BxRx...   the parity queries
  target(y_BxKxC)                        -> t_BxRxC     what F_P must output
  decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR) -> yhat_BxKxC

`decode` returns available rows unchanged and rebuilds the missing ones from
the available outputs and the available parity outputs. A row that cannot be
rebuilt (more rows missing than parities available) comes back as NaN under
`jit`; called with concrete masks, `decode` raises `ValueError` instead.

    from pmjax.codes import make_code
    code = make_code('concat', k=2, image_shape=(28, 28, 1))
    encode = jax.jit(code.encode)           # the "imported jitted codec"

ParM's codes (r = 1): `sum` (P = X1 + .. + Xk) and `concat` (the k images
downsampled and tiled into one image of the original size); both train F_P
towards the sum of the k outputs and decode by subtraction.

`berrut` (ApproxIFER, training-free, S stragglers): queries are interpolated
with Berrut's rational interpolant; every worker runs the unchanged F.

`linear` (any r >= 1, systematic): parity model j answers a parity query (by
default the `concat` tiling; `parity_input='sum'` gives sum_i C[j,i] X_i) and
is trained towards t_j = sum_i C[j,i] F(X_i), where C (r x k, see
`coefficient_matrix`) has every square submatrix invertible; decoding solves
the small (masked, batched, least-squares when over-determined) system for
up to r missing outputs. With r = 1, C = ones: exactly ParM.

Codes are registered (`register_code(CodeSpec(...))`): a spec names the
builder, its typed parameters (and the flat config field that carries each),
the largest r for a k, and what the code needs (a trained parity model or
not). `make_code` builds any registered code; `CODE_SPECS` lists them. The
`r` argument of `make_code` has one meaning for every code: how many missing
outputs a group tolerates (Berrut's S stragglers); `Code.r` is how many coded
queries the code adds (Berrut non-systematic: K + S, every worker runs one).
"""

from __future__ import annotations

import dataclasses
import functools
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


@dataclasses.dataclass(frozen=True)
class Param:
  """A typed parameter of a code, and the flat config field that carries it."""
  name: str
  default: Any
  choices: tuple = ()            # accepted values (empty: any value of the default's type)
  config_field: str | None = None
  legacy: Any = None             # what a config written before config_field existed meant


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
PARITY_INPUTS = ('concat', 'sum')   # the linear code's parity query


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
                     'pmjax.workdir.load_code)')
  return CODE_SPECS[name]


def code_params(name: str, config) -> dict:
  """The parameters of code `name` carried by a (flat) run config; a field the config
  does not have takes the value such a config meant (`Param.legacy`)."""
  out = {}
  for p in get_code_spec(name).params:
    if p.config_field:
      value = config.get(p.config_field)
      out[p.name] = (p.legacy if p.legacy is not None else p.default) if value is None else value
  return out


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


def _parm_code(name, k, r, image_shape):
  del r  # 1
  if name == 'sum':
    encode = _sum_encoder(k, image_shape)
  else:
    if image_shape is not None:
      concat_grid(k, image_shape)  # fail at construction, not at first call
    encode = _concat_encoder(k, image_shape)
  return Code(name, k, 1, encode, _sum_target(k), _subtraction_decoder(k))


# --------------------------------------------------------------------------
# Encoders.
# --------------------------------------------------------------------------

def _check_x(x, k, image_shape, min_rank=3):
  if x.ndim < min_rank:
    raise ValueError(f'x has shape {x.shape}; expected x_BxKx... with rank >= {min_rank} '
                     f'(batch, k={k}, then the query shape)')
  if x.shape[1] != k:
    raise ValueError(f'x has shape {x.shape}; axis 1 must be the group size k={k}')
  if image_shape is not None and tuple(x.shape[2:]) != image_shape:
    raise ValueError(f'x has shape {x.shape}; queries must have image_shape='
                     f'{image_shape}, the shape the code was made for')


def check_decode_args(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR, k, r):
  _check_x(y_BxKxC, k, None)
  b, _, c = y_BxKxC.shape
  if avail_BxK.shape != (b, k) or z_BxRxC.shape != (b, r, c) or zavail_BxR.shape != (b, r):
    raise ValueError(
        f'decode got y {y_BxKxC.shape}, avail {avail_BxK.shape}, z {z_BxRxC.shape}, '
        f'zavail {zavail_BxR.shape}; expected y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR '
        f'with B={b}, K={k}, R={r}, C={c}')


def raise_if_undecodable(decodable_B, masks, why):
  """With concrete masks, a group that cannot be decoded is an error (`why(g)` says
  why); under jit its rows come back NaN instead."""
  if _is_concrete(*masks) and not bool(np.all(decodable_B)):
    bad = int(np.argmax(~np.asarray(decodable_B)))
    raise ValueError(f'group {bad} cannot be decoded: {why(bad)}')


def _matrix_encoder(w_rxk, k, image_shape):
  def encode(x_BxKx):
    """p_j = sum_i W[j,i] X_i: p_BxRx..."""
    _check_x(x_BxKx, k, image_shape)
    return jnp.einsum('ri,bi...->br...', w_rxk, x_BxKx.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST).astype(x_BxKx.dtype)
  return encode


def _matrix_target(w_rxk, k):
  def target(y_BxKxC):
    """t_j = sum_i W[j,i] F(X_i): t_BxRxC."""
    _check_x(y_BxKxC, k, None)
    return jnp.einsum('ri,bic->brc', w_rxk, y_BxKxC, precision=jax.lax.Precision.HIGHEST)
  return target


def _sum_encoder(k, image_shape):
  """P = X1 + .. + Xk: x_BxKx... -> p_Bx1x...

  A product with a row of ones: XLA's CPU backend runs the equivalent
  reduce over the group axis ~8x slower (57 vs 7 us for k=8 MNIST images).
  """
  return _matrix_encoder(np.ones((1, k), np.float32), k, image_shape)


def concat_grid(k: int, image_shape) -> tuple:
  """(rows, cols) of the `concat` layout: the near-square grid that divides the image.

  Among grids with rows <= cols <= k, at least k cells and no empty row, whose
  rows divide H and cols divide W, the one with the fewest empty cells, then
  the squarest. k=2 -> 1x2 (each image H x W/2, side by side); k=3 and k=4 ->
  2x2 (H/2 x W/2 quadrants TL, TR, BL, BR; k=3 leaves BR zero); on 28x28,
  k=5..8 -> 2x4; on 36x36, k=5 -> 2x3, k=9 -> 3x3. Cells fill row-major.
  """
  if len(image_shape) != 3:
    raise ValueError(f'image_shape={tuple(image_shape)} must be (H, W, C) for code concat')
  h, w, _ = image_shape
  grids = [(rows, cols) for cols in range(1, k + 1) for rows in range(1, cols + 1)
           if rows * cols >= k and (rows - 1) * cols < k and h % rows == 0 and w % cols == 0]
  if not grids:
    raise ValueError(
        f'code concat with k={k} has no grid of at most k columns that divides '
        f'image_shape={tuple(image_shape)} (rows must divide H={h} and columns W={w}). '
        f'Choose another k, or resize the images.')
  return min(grids, key=lambda g: (g[0] * g[1] - k, g[1] - g[0]))


@functools.lru_cache(maxsize=None)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """The n_out x n_in matrix of `jax.image.resize` (bilinear, antialiased) along one axis.

  The resize is linear and separable, so resizing an image equals multiplying
  each axis by this matrix (built by resizing the identity); two small matmuls
  are ~3x faster on CPU than the resize op, and give the same values.
  """
  with jax.ensure_compile_time_eval():
    eye = jnp.eye(n_in, dtype=jnp.float32)
    return np.asarray(jax.image.resize(eye, (n_out, n_in), method='bilinear', antialias=True))


def _concat_encoder(k, image_shape):
  def encode(x_BxKxHxWxC):
    """k images -> one image of the same size: each resized to a grid cell and tiled."""
    _check_x(x_BxKxHxWxC, k, image_shape, min_rank=5)
    b, _, h, w, c = x_BxKxHxWxC.shape
    rows, cols = concat_grid(k, (h, w, c))
    ch, cw = h // rows, w // cols
    cells = x_BxKxHxWxC.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    if ch != h:
      cells = jnp.einsum('hH,bkHwc->bkhwc', resize_matrix(h, ch), cells, precision=hi)
    if cw != w:
      cells = jnp.einsum('bkhWc,wW->bkhwc', cells, resize_matrix(w, cw), precision=hi)
    empty = rows * cols - k
    if empty:
      cells = jnp.concatenate([cells, jnp.zeros((b, empty, ch, cw, c), cells.dtype)], 1)
    grid = cells.reshape(b, rows, cols, ch, cw, c).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(b, 1, h, w, c).astype(x_BxKxHxWxC.dtype)
  return encode


# --------------------------------------------------------------------------
# Target and decoder shared by the ParM codes.
# --------------------------------------------------------------------------

def _sum_target(k):
  def target(y_BxKxC):
    """What F_P must output: the sum of the k outputs."""
    _check_x(y_BxKxC, k, None)
    return jnp.sum(y_BxKxC, axis=1, keepdims=True)
  return target


def _is_concrete(*arrays):
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _subtraction_decoder(k):
  def decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR):
    """Missing answer = F_P(P) - sum of the available ones; available rows unchanged."""
    check_decode_args(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR, k, 1)
    avail_BxK = avail_BxK.astype(bool)
    zavail_B = zavail_BxR[:, 0].astype(bool)
    n_missing_B = k - jnp.sum(avail_BxK, axis=1)
    decodable_B = (n_missing_B == 0) | ((n_missing_B == 1) & zavail_B)
    raise_if_undecodable(decodable_B, (avail_BxK, zavail_BxR), lambda g: (
        f'{int(n_missing_B[g])} of k={k} outputs missing and parity available='
        f'{bool(zavail_B[g])}; this code (r=1) rebuilds at most one missing output, and '
        f'only when the parity output arrived'))
    others_BxC = jnp.sum(jnp.where(avail_BxK[..., None], y_BxKxC, 0.0), axis=1)
    rebuilt_BxC = z_BxRxC[:, 0] - others_BxC
    rebuilt_BxC = jnp.where(decodable_B[:, None], rebuilt_BxC, jnp.nan)
    return jnp.where(avail_BxK[..., None], y_BxKxC, rebuilt_BxC[:, None, :])
  return decode


# --------------------------------------------------------------------------
# The systematic linear code (any r).
# --------------------------------------------------------------------------

COEFFICIENTS = ('auto', 'balanced', 'cauchy')


def coefficient_matrix(k: int, r: int, kind: str = 'auto') -> np.ndarray:
  """The r x k matrix C of the `linear` code; parity j's target is sum_i C[j,i] F(X_i).

  r = 1: ones (ParM), whatever the kind.

  'balanced' (r = 2): a row of ones and a row that weights every position about
  evenly: signs alternate in pairs (+a_0, -a_0, +a_1, -a_1, ...) with the
  magnitudes a_p spaced from 1 down to 1/2, the row scaled to norm sqrt(k).
  Decoding one missing output from a single parity divides that parity
  model's error by C[j, i], so no entry may be small: the smallest |C[j,i]| is
  0.61-0.65 for k = 4..8 (Cauchy: 0.13-0.27); the smallest singular value over
  the 2 x 2 submatrices (two missing outputs) is 0.32 at k=4 (Cauchy 0.51) and
  0.098 at k=8 (Cauchy 0.094). Every square submatrix is invertible (the
  entries of row 2 are distinct and nonzero).

  'cauchy' (any r): C[j,i] = 1/(a_j - b_i) with data nodes b_i = i and parity
  nodes a_j spread between them ((j + 1/2) k/r - 1/2, moved off any data
  node), each row scaled to norm sqrt(k). Every square submatrix of a Cauchy
  matrix is invertible, so any m <= r missing outputs can be solved from any m
  parities. Interleaving the nodes keeps the worst condition number over all
  square submatrices small: 3.8 (k=4, r=2), 14.1 (k=4, r=3), 21.0 (k=8, r=2),
  109 (k=8, r=3), against 51, 850, 227 and 14,800 with all parity nodes outside
  the data range; but entries far from a parity node are small (0.07-0.27).

  'auto': 'balanced' for r <= 2, 'cauchy' for r >= 3. Measured (RESULTS.md,
  MNIST k=4 r=2): with both parities in, Cauchy rebuilds better (0.967 vs
  0.946; two missing: 0.939 vs 0.859); from a single parity, balanced does
  (0.90 vs 0.78). A serving loop that decodes at k of k+r outputs meets the
  single-parity case most; one that waits for every parity, the other.
  """
  if kind not in COEFFICIENTS:
    raise ValueError(f'coefficients={kind!r} is unknown; accepted values: {list(COEFFICIENTS)}')
  if r == 1:
    return np.ones((1, k), np.float32)
  kind = _resolve_coefficients(r, kind)
  if kind == 'balanced':
    if r != 2:
      raise ValueError(f"coefficients='balanced' is defined for r <= 2, not r={r}; use "
                       f"coefficients='cauchy' (or 'auto') for r >= 3")
    a = np.linspace(1.0, 0.5, (k + 1) // 2)
    c = np.stack([np.ones(k), [a[i // 2] * (-1) ** i for i in range(k)]])
  else:
    a = (np.arange(r) + 0.5) * k / r - 0.5
    a = a + 0.5 * (np.abs(a - np.round(a)) < 1e-9)
    c = 1.0 / (a[:, None] - np.arange(k)[None, :])
  c = c * (np.sqrt(k) / np.linalg.norm(c, axis=1, keepdims=True))
  return c.astype(np.float32)


def _resolve_coefficients(r: int, kind: str) -> str:
  """The matrix 'auto' stands for at r parities."""
  return ('balanced' if r == 2 else 'cauchy') if kind == 'auto' else kind


def _linear_code(k, r, image_shape, parity_input, coefficients):
  if parity_input not in PARITY_INPUTS:
    raise ValueError(f'parity_input={parity_input!r} is unknown; accepted values: '
                     f'{list(PARITY_INPUTS)}')
  c_rxk = coefficient_matrix(k, r, coefficients)
  if parity_input == 'concat':
    if image_shape is not None:
      concat_grid(k, image_shape)
    tile = _concat_encoder(k, image_shape)

    def encode(x_BxKx):
      """The concat tiling, one copy per parity model: p_BxRx..."""
      p = tile(x_BxKx)
      return jnp.broadcast_to(p, (p.shape[0], r, *p.shape[2:]))
  else:
    encode = _matrix_encoder(c_rxk, k, image_shape)
  target = _matrix_target(c_rxk, k)

  def decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR):
    """Solves C[avail parities, missing] u = z - C[:, avail] y for the missing rows."""
    check_decode_args(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR, k, r)
    avail = avail_BxK.astype(bool)
    zavail = zavail_BxR.astype(bool)
    n_missing_B = k - jnp.sum(avail, axis=1)
    decodable_B = n_missing_B <= jnp.sum(zavail, axis=1)
    raise_if_undecodable(decodable_B, (avail_BxK, zavail_BxR), lambda g: (
        f'{int(n_missing_B[g])} of k={k} outputs missing but only '
        f'{int(np.sum(np.asarray(zavail)[g]))} of r={r} parity outputs available; the '
        f'linear code rebuilds m missing outputs from >= m parities'))
    cmat = jnp.asarray(c_rxk)
    miss = (~avail).astype(y_BxKxC.dtype)                        # B x K
    w = zavail.astype(y_BxKxC.dtype)                              # B x R
    y_known = jnp.where(avail[..., None], y_BxKxC, 0.0)
    resid = z_BxRxC - jnp.einsum('ri,bic->brc', cmat, y_known)    # B x R x C
    # Normal equations over all k unknowns, identity on the available ones.
    gram = jnp.einsum('ri,br,rj->bij', cmat, w, cmat)             # B x K x K
    mask = miss[:, :, None] * miss[:, None, :]
    eye = jnp.eye(k, dtype=y_BxKxC.dtype)
    lhs = gram * mask + eye * (1.0 - miss)[:, :, None]
    rhs = miss[..., None] * jnp.einsum('ri,br,brc->bic', cmat, w, resid)
    lhs = jnp.where(decodable_B[:, None, None], lhs, eye)         # keep solve well posed
    u = solve_small(lhs, rhs)
    u = jnp.where(decodable_B[:, None, None], u, jnp.nan)
    return jnp.where(avail[..., None], y_BxKxC, u)

  return Code('linear', k, r, encode, target, decode, tolerates=r)


def solve_small(a_BxKxK, b_BxKxC):
  """Batched solve of small systems by Gauss-Jordan elimination with partial pivoting.

  Plain jnp ops unrolled over the (static, small) k: no LAPACK custom call,
  which on the CPU backend was seen to hang inside a long-running process here
  (batched `jnp.linalg.solve` in the per-epoch evaluation, second epoch).
  """
  a, b = a_BxKxK, b_BxKxC
  k = a.shape[-1]
  rows = jnp.arange(k)
  for col in range(k):
    # Pivot: the largest remaining entry of this column moves to row `col`.
    cand = jnp.where(rows[None, :] >= col, jnp.abs(a[:, :, col]), -1.0)
    piv = jnp.argmax(cand, axis=1)                                      # B
    perm = jnp.where(rows[None, :] == col, piv[:, None],
                     jnp.where(rows[None, :] == piv[:, None], col, rows[None, :]))
    a = jnp.take_along_axis(a, perm[:, :, None], axis=1)
    b = jnp.take_along_axis(b, perm[:, :, None], axis=1)
    pivot_row = a[:, col, :] / a[:, col, col][:, None]                  # B x K
    pivot_b = b[:, col, :] / a[:, col, col][:, None]                    # B x C
    factor = a[:, :, col]                                               # B x K
    factor = jnp.where(rows[None, :] == col, 0.0, factor)
    a = a - factor[:, :, None] * pivot_row[:, None, :]
    b = b - factor[:, :, None] * pivot_b[:, None, :]
    a = a.at[:, col, :].set(pivot_row)
    b = b.at[:, col, :].set(pivot_b)
  return b


# --------------------------------------------------------------------------
# Berrut (ApproxIFER): training-free rational interpolation codes.
# --------------------------------------------------------------------------

def chebyshev_first(n: int) -> np.ndarray:
  """cos((2i+1) pi / 2n), i = 0..n-1 (descending): the data nodes."""
  return np.cos((2 * np.arange(n) + 1) * np.pi / (2 * n))


def chebyshev_second(n: int) -> np.ndarray:
  """cos(j pi / (n-1)), j = 0..n-1 (descending): the coded nodes."""
  return np.cos(np.arange(n) * np.pi / (n - 1))


def berrut_weights(nodes_M, avail_BxM, at_T):
  """W_BxTxM: Berrut's interpolant through the available nodes, evaluated at `at`.

  `nodes` must be sorted (descending); the weight signs alternate over the
  available nodes in that order. A point equal to an available node gets that
  node's value exactly.
  """
  nodes = jnp.asarray(nodes_M, jnp.float32)
  avail = jnp.asarray(avail_BxM, bool)
  rank = jnp.cumsum(avail, axis=-1) - 1
  sign = jnp.where(avail, jnp.where(rank % 2 == 0, 1.0, -1.0), 0.0)       # B x M
  diff = jnp.asarray(at_T, jnp.float32)[:, None] - nodes[None, :]           # T x M
  hit = (jnp.abs(diff) < 1e-7)[None] & avail[:, None, :]                    # B x T x M
  safe = jnp.where(jnp.abs(diff) < 1e-7, 1.0, diff)
  w = sign[:, None, :] / safe[None]                                         # B x T x M
  w = w / jnp.sum(w, axis=-1, keepdims=True)
  return jnp.where(jnp.any(hit, axis=-1, keepdims=True), hit.astype(w.dtype), w)


def _extra_nodes(k: int, s: int) -> np.ndarray:
  """S coded nodes for the systematic form: greedily, the second-kind nodes of a
  K+S grid farthest from the data nodes (and from each other)."""
  taken = list(chebyshev_first(k))
  cand = list(chebyshev_second(k + s))
  chosen = []
  for _ in range(s):
    best = max(cand, key=lambda c: min(abs(c - t) for t in taken))
    chosen.append(best)
    taken.append(best)
    cand.remove(best)
  return np.sort(np.asarray(chosen))[::-1]


def _berrut_code(k, s, image_shape, systematic):
  """Berrut codes (ApproxIFER). K queries sit at Chebyshev first-kind nodes.

  Non-systematic (as published): r = K + S coded queries, Berrut's interpolant
  of the queries at the K+S second-kind nodes; every answer is interpolated
  from any K of them (`decode` ignores the data slots: none is computed).
  Systematic: the K data workers answer their own queries; r = S extra workers
  answer the interpolant at S second-kind nodes away from the data nodes; only
  missing answers are interpolated, from every available output.
  `target` is the same Berrut combination of F's outputs (what an ideal F_P
  would return; the codes need no training).
  """
  alpha = chebyshev_first(k)
  beta = chebyshev_second(k + s) if not systematic else _extra_nodes(k, s)
  r = len(beta)
  enc_w = np.asarray(berrut_weights(alpha, np.ones((1, k), bool), beta))[0]   # r x k

  encode = _matrix_encoder(enc_w, k, image_shape)
  target = _matrix_target(enc_w, k)

  if systematic:
    nodes = np.concatenate([alpha, beta])
    order = np.argsort(-nodes, kind='stable')          # descending, as Berrut needs

  def decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR):
    check_decode_args(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR, k, r)
    avail, zavail = avail_BxK.astype(bool), zavail_BxR.astype(bool)
    if systematic:
      n_avail_B = jnp.sum(avail, 1) + jnp.sum(zavail, 1)
      values = jnp.concatenate([y_BxKxC, z_BxRxC], axis=1)[:, order]
      mask = jnp.concatenate([avail, zavail], axis=1)[:, order]
      w = berrut_weights(nodes[order], mask, alpha)
    else:
      n_avail_B = jnp.sum(zavail, 1)
      values, mask = z_BxRxC, zavail
      w = berrut_weights(beta, zavail, alpha)
    decodable_B = n_avail_B >= k
    raise_if_undecodable(decodable_B, (avail_BxK, zavail_BxR), lambda g: (
        f'{int(n_avail_B[g])} outputs available, the Berrut code (K={k}, S={s}) needs '
        f'any {k} of its {k + s}'))
    yhat = jnp.einsum('btm,bmc->btc', jnp.where(mask[:, None, :], w, 0.0),
                      jnp.where(mask[..., None], values, 0.0))
    yhat = jnp.where(decodable_B[:, None, None], yhat, jnp.nan)
    return jnp.where(avail[..., None], y_BxKxC, yhat)

  return Code('berrut', k, r, encode, target, decode, systematic=systematic, tolerates=s,
              answered_by='f')


# --------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------

_PARM_HINT = ("ParM codes tolerate one missing answer per group; use 'linear' for r >= 2")
for _name in ('sum', 'concat'):
  register_code(CodeSpec(_name, functools.partial(_parm_code, _name), r_hint=_PARM_HINT))
register_code(CodeSpec(
    'linear', lambda k, r, shape, parity_input, coefficients: _linear_code(
        k, r, shape, parity_input, coefficients),
    params=(Param('parity_input', 'concat', ('concat', 'sum'), 'parity_input', 'concat'),
            Param('coefficients', 'auto', ('auto', 'balanced', 'cauchy'),
                  'linear_coefficients', 'cauchy')),
    max_r=lambda k: k, r_rule='1 <= r <= k',
    describe=lambda r, parity_input, coefficients: (
        f"linear ({_resolve_coefficients(r, coefficients)}, {parity_input} query)")))
register_code(CodeSpec(
    'berrut', lambda k, r, shape, systematic: _berrut_code(k, r, shape, systematic),
    params=(Param('systematic', True, (True, False)),), max_r=lambda k: 1 << 30, r_rule='r >= 1',
    trained=False,
    exact=False))
register_code(CodeSpec(
    'learned', None, trained=True, max_r=lambda k: k, r_rule='1 <= r <= k', task='learned',
    params=(Param('loss', 'mse', ('mse', 'kl', 'ce'), 'learned_loss', 'mse'),
            Param('encoder', 'mlp', ('mlp', 'conv'), 'learned_encoder', 'mlp'),
            Param('train_parity', False, (True, False), 'learned_train_parity', False)),
    describe=lambda r, loss, encoder, train_parity: f'learned ({encoder} encoder, {loss} loss)',
    how_to_make="code 'learned' is made of trained networks: train it with "
                "`python -m pmjax.train ... code=learned` and load it with "
                "pmjax.workdir.load_code(WORKDIR) (or pmjax.learned.make_learned_code)"))
