"""ParM's codes (r = 1): `sum` (P = X1 + .. + Xk) and `concat` (the k images
downsampled and tiled into one image of the original size). Both train F_P
towards the sum of the k outputs and decode by subtraction."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pmjax.codes.core import (Code, CodeSpec, check_decode_args, check_x, matrix_encoder,
                              raise_if_undecodable, register_code)


def _parm_code(name, k, r, image_shape):
  del r  # 1
  if name == 'sum':
    encode = _sum_encoder(k, image_shape)
  else:
    encode = _concat_encoder(k, image_shape)
  return Code(name, k, 1, encode, _sum_target(k), _subtraction_decoder(k))


def _sum_encoder(k, image_shape):
  """P = X1 + .. + Xk: x_BxKx... -> p_Bx1x...

  A product with a row of ones: XLA's CPU backend runs the equivalent
  reduce over the group axis ~8x slower (57 vs 7 us for k=8 MNIST images).
  """
  return matrix_encoder(np.ones((1, k), np.float32), k, image_shape)


def concat_grid(k: int, image_shape) -> tuple:
  """(rows, cols) of the `concat` layout: the near-square grid that divides the image.

  Among grids with rows <= cols <= k, at least k cells and no empty row, whose
  rows divide H and cols divide W, the one with the fewest empty cells, then
  the squarest. k=2 -> 1x2 (each image H x W/2, side by side); k=3 and k=4 ->
  2x2 (H/2 x W/2 quadrants TL, TR, BL, BR; k=3 leaves BR zero); on 28x28,
  k=5..8 -> 2x4; on 36x36, k=5 -> 2x3, k=9 -> 3x3. Cells fill row-major. When
  no such grid divides the image (a 161x101 spectrogram), the same choice among
  all grids: cells are floor(H/rows) x floor(W/cols) and the rows and columns
  left over (at the bottom and right) are zero.
  """
  if len(image_shape) != 3:
    raise ValueError(f'image_shape={tuple(image_shape)} must be (H, W, C) for code concat')
  h, w, _ = image_shape
  grids = [(rows, cols) for cols in range(1, k + 1) for rows in range(1, cols + 1)
           if rows * cols >= k and (rows - 1) * cols < k and rows <= h and cols <= w]
  dividing = [(rows, cols) for rows, cols in grids if h % rows == 0 and w % cols == 0]
  if not grids:
    raise ValueError(
        f'code concat with k={k} has no grid of at most k columns for '
        f'image_shape={tuple(image_shape)}. Choose a smaller k.')
  return min(dividing or grids, key=lambda g: (g[0] * g[1] - k, g[1] - g[0]))


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


# How the `collage` code sizes each image's cell (`cell_shape`).
CELLS = ('fit', 'half')


def cell_shape(k: int, image_shape, cell: str = 'fit') -> tuple:
  """(rows, cols, cell_h, cell_w) of a tiled query of k images of `image_shape`: the grid
  is `concat_grid`'s; `cell='fit'` (ParM's concat) downsamples each image to fit the
  grid inside one query's size (16x8 cells for k = 8 on 32x32), `cell='half'` halves each
  image's height and width whatever the grid (16x16 cells on 32x32), so the tiled query
  holds rows*cols/4 queries' pixels (twice one query's for k = 8, one for k = 4)."""
  if cell not in CELLS:
    raise ValueError(f'cell={cell!r} is unknown; accepted values: {list(CELLS)}')
  rows, cols = concat_grid(k, image_shape)
  h, w = image_shape[:2]
  if cell == 'half':
    if h < 2 or w < 2:
      raise ValueError(f"cell='half' needs images of at least 2x2; got {tuple(image_shape)}")
    return rows, cols, h // 2, w // 2
  return rows, cols, h // rows, w // cols


def _concat_encoder(k, image_shape, cell='fit'):
  if image_shape is not None:
    cell_shape(k, image_shape, cell)   # fail at construction, not at first call

  def encode(x_BxKxHxWxC):
    """k images -> one tiled query: each resized to a grid cell (`cell_shape`); with
    cell='fit' the query has one image's size."""
    check_x(x_BxKxHxWxC, k, image_shape, min_rank=5)
    b, _, h, w, c = x_BxKxHxWxC.shape
    rows, cols, ch, cw = cell_shape(k, (h, w, c), cell)
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
    grid = grid.reshape(b, 1, rows * ch, cols * cw, c)
    if cell == 'fit' and (rows * ch, cols * cw) != (h, w):   # a grid that does not divide
      grid = jnp.pad(grid, ((0, 0), (0, 0), (0, h - rows * ch), (0, w - cols * cw), (0, 0)))
    return grid.astype(x_BxKxHxWxC.dtype)
  return encode


def concat_copies(k, r, image_shape, cell='fit'):
  """The concat tiling, one copy per parity model: x_BxKx... -> p_BxRx... (`linear` and
  `collage` with r parity models on the same tiled query; `cell`: `cell_shape`)."""
  tile = _concat_encoder(k, image_shape, cell)

  def encode(x_BxKx):
    p = tile(x_BxKx)
    return jnp.broadcast_to(p, (p.shape[0], r, *p.shape[2:]))
  return encode


def _sum_target(k):
  def target(y_BxKxC):
    """What F_P must output: the sum of the k outputs."""
    check_x(y_BxKxC, k, None)
    return jnp.sum(y_BxKxC, axis=1, keepdims=True)
  return target


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


_PARM_HINT = ("ParM codes tolerate one missing answer per group; use 'linear' for r >= 2")
for _name in ('sum', 'concat'):
  register_code(CodeSpec(_name, functools.partial(_parm_code, _name), r_hint=_PARM_HINT))
