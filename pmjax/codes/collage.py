"""`collage` (any r >= 1, systematic): the parity query is the `concat` tiling of the k
queries (each downsampled into one cell of a grid the size of one query), and each of
the r parity models answers every cell: its output is k answers, z_BxRx(K*C), trained
towards F's own k outputs (distillation). A missing answer is the mean of the
available parity models' answers for its cell, so one available parity output
rebuilds every missing data output, and the error of one answer does not spread to
the others (a `sum`-target code's does: its decoded answer carries the errors of all
k cells). The idea is Collage inference (Narra et al., 2019: a collage-CNN classifies
a tiled collage of images as a backup for stragglers); here it is a registered code
like the others, with ParM's tiling and F's outputs as targets.

The price: each coded output is k times larger (k*C numbers), and the parity model
must classify downsampled images (14x7 cells for k = 8 on 28x28). Its compute is that
of its architecture on every cell (`tiles:NAME` runs NAME on each: `models.TileSum` with
reduce='stack'). `cell` (`parm.cell_shape`) sizes the cells: 'fit' (default) keeps the
coded query one query's size, as ParM's concat; 'half' halves each image's sides (16x16
cells for k = 8 on 32x32, where 'fit' gives 16x8), a coded query of twice one query's
pixels at k = 8, for a narrower cell network at the same compute.
"""

from __future__ import annotations

import jax.numpy as jnp

from pmjax.codes.core import (Code, CodeSpec, Param, check_decode_args, check_x,
                              raise_if_undecodable, register_code)
from pmjax.codes.parm import CELLS, concat_copies


def _collage_code(k, r, image_shape, cell='fit'):
  encode = concat_copies(k, r, image_shape, cell)

  def target(y_BxKxC):
    """Each parity model answers every cell: t_BxRx(K*C), F's k outputs in cell order."""
    check_x(y_BxKxC, k, None)
    b = y_BxKxC.shape[0]
    flat = y_BxKxC.reshape(b, 1, -1)
    return jnp.broadcast_to(flat, (b, r, flat.shape[-1]))

  def decode(y_BxKxC, avail_BxK, z_BxRxKC, zavail_BxR):
    """Missing row i = mean over the available parity outputs of their answer for cell i."""
    check_decode_args(y_BxKxC, avail_BxK, z_BxRxKC, zavail_BxR, k, r, width=k)
    avail, zavail = avail_BxK.astype(bool), zavail_BxR.astype(bool)
    b, _, c = y_BxKxC.shape
    n_parity_B = jnp.sum(zavail, axis=1)
    decodable_B = jnp.all(avail, axis=1) | (n_parity_B > 0)
    raise_if_undecodable(decodable_B, (avail_BxK, zavail_BxR), lambda g: (
        f'{int(k - avail[g].sum())} of k={k} outputs missing and none of the r={r} '
        f'parity outputs available; the collage code rebuilds missing outputs from any '
        f'one parity output'))
    w_BxR = zavail.astype(y_BxKxC.dtype) / jnp.maximum(n_parity_B, 1)[:, None]
    z = jnp.where(zavail[:, :, None], z_BxRxKC, 0.0).reshape(b, r, k, c)
    mean_BxKxC = jnp.einsum('br,brkc->bkc', w_BxR, z)
    mean_BxKxC = jnp.where(decodable_B[:, None, None], mean_BxKxC, jnp.nan)
    return jnp.where(avail[..., None], y_BxKxC, mean_BxKxC)

  return Code('collage', k, r, encode, target, decode, tolerates=r, parity_width=k,
              rebuilds_all=True)


register_code(CodeSpec(
    'collage', _collage_code, params=(Param('cell', 'fit', CELLS),), max_r=lambda k: k,
    r_rule='1 <= r <= k',
    describe=lambda r, cell='fit': 'collage (concat query, per-cell answers)' if cell == 'fit'
    else f'collage ({cell}-size cells, per-cell answers)'))
