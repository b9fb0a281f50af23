"""`linear` (any r >= 1, systematic): parity model j answers a parity query (by
default the `concat` tiling; `parity_input='sum'` gives sum_i C[j,i] X_i) and is
trained towards t_j = sum_i C[j,i] F(X_i), where C (r x k, `coefficient_matrix`)
has every square submatrix invertible; decoding solves the small (masked,
batched, least-squares when over-determined) system for up to r missing
outputs. With r = 1, C = ones: exactly ParM."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pmjax.codes.core import (Code, CodeSpec, Param, check_decode_args, matrix_encoder,
                              matrix_target, one_parity_per_missing, register_code)
from pmjax.codes.parm import concat_copies

PARITY_INPUTS = ('concat', 'sum')   # the parity query


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
    encode = concat_copies(k, r, image_shape)
  else:
    encode = matrix_encoder(c_rxk, k, image_shape)
  target = matrix_target(c_rxk, k)

  def decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR):
    """Solves C[avail parities, missing] u = z - C[:, avail] y for the missing rows."""
    check_decode_args(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR, k, r)
    avail = avail_BxK.astype(bool)
    zavail = zavail_BxR.astype(bool)
    decodable_B = one_parity_per_missing(avail_BxK, zavail_BxR, 'linear')
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


register_code(CodeSpec(
    'linear', lambda k, r, shape, parity_input, coefficients: _linear_code(
        k, r, shape, parity_input, coefficients),
    params=(Param('parity_input', 'concat', ('concat', 'sum'), 'parity_input', 'concat'),
            Param('coefficients', 'auto', ('auto', 'balanced', 'cauchy'),
                  'linear_coefficients', 'cauchy')),
    max_r=lambda k: k, r_rule='1 <= r <= k',
    describe=lambda r, parity_input, coefficients: (
        f"linear ({_resolve_coefficients(r, coefficients)}, {parity_input} query)")))
