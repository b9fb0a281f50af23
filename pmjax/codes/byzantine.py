"""Wrong answers, not only missing ones: decoders that locate an adversarial output.

Two decoders for a group in which some output arrives but is wrong (a Byzantine worker):

- ApproxIFER's error-locating decoder for the (non-systematic) Berrut code, a port of
  `welch_decoder` / `decoder` in Mahdi-Soleymani/Approxifer's
  `Workstation-MNIST-Approximate-error-locator.py`: a rational Berlekamp-Welch step per
  class (the null vector of [A1, A2, -A3 * y] over the returned worker nodes gives an
  error-locator function, evaluated at every worker node; its `n_errors` smallest values
  are that class's suspects), a vote over classes, the `e_max` most voted workers left
  out, and Berrut's interpolant through the rest. Their experiment (`Plot_K`): e_max = 2,
  N = 2K + 2 e_max + S + 1 workers, S = 0.
- A parity-consistency check for the `collage` code: every parity model answers every
  cell, so each available data answer can be compared with the parity answers for its
  cell. Distances above a threshold (calibrated on clean validation groups for a chosen
  false-alarm rate: `calibrate_threshold`) flag the group; when the disagreement is in
  one cell only (with every parity), that data output is blamed and rebuilt from the
  parities; when it is in one parity only while another agrees (r >= 2), or in most
  cells of the only parity, the parity is blamed and dropped; otherwise the group stays
  flagged, unresolved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pmjax.codes.berrut import authors_nodes, berrut_weights, chebyshev_first


# --------------------------------------------------------------------------
# ApproxIFER: rational Berlekamp-Welch error location, then Berrut decoding.
# --------------------------------------------------------------------------

def approxifer_workers(k: int, e_max: int = 2, s: int = 0) -> int:
  """N of ApproxIFER's error experiment (`Plot_K`): 2K + 2 e_max + S + 1."""
  return 2 * k + 2 * e_max + s + 1


def _locator_nodes(e_max):
  """beta_i = cos((2i+1) pi / (2 (e_max+1))), i <= e_max (their `parameters.beta`)."""
  return chebyshev_first(e_max + 1)


def _alternating_sum(x, nodes):
  """sum_i (-1)^i / (x - nodes_i), for each x (their `gt` and `gk`)."""
  sign = (-1.0) ** np.arange(len(nodes))
  return np.sum(sign / (np.asarray(x)[..., None] - nodes), axis=-1)


def welch_locate(y_GxMxC, returned_M, k: int, n: int, e_max: int = 2, n_errors: int = 1):
  """Worker indices (of 0..n-1) to leave out, G x e_max: ApproxIFER's `welch_decoder` for
  every class, then its vote (`decoder`: bincount over the classes' suspects, the
  e_max most frequent). `y_GxMxC`: the outputs of the M returned workers, whose node
  indices are `returned_M` (ascending)."""
  alpha, z_all, beta = chebyshev_first(k), authors_nodes(n), _locator_nodes(e_max)
  z = z_all[np.asarray(returned_M)]
  gt = lambda x: _alternating_sum(x, beta)
  gk = lambda x: _alternating_sum(x, alpha)
  sa, sb = (-1.0) ** np.arange(k), (-1.0) ** np.arange(e_max + 1)
  big_g = (np.sum(gt(alpha) * sa / (z[:, None] - alpha), -1)
           + np.sum(gk(beta) * sb / (z[:, None] - beta), -1))                   # M
  a1 = 1.0 / ((z[:, None] - alpha) * big_g[:, None])                            # M x K
  a2 = 1.0 / ((z[:, None] - beta) * big_g[:, None])                             # M x E+1
  a3 = sb / ((z[:, None] - beta) * gt(z)[:, None])                              # M x E+1
  g, m, c = y_GxMxC.shape
  y = np.transpose(np.asarray(y_GxMxC, np.float64), (0, 2, 1))[..., None]       # G x C x M x 1
  a = np.concatenate([np.broadcast_to(a1, (g, c, m, k)),
                      np.broadcast_to(a2, (g, c, m, e_max + 1)), -a3 * y], axis=-1)
  vh = np.linalg.svd(a)[2]
  b = vh[..., -1, -(e_max + 1):]                                                # G x C x E+1
  lam = np.einsum('gce,ne->gcn', b, sb / ((z_all[:, None] - beta) * gt(z_all)[:, None]))
  suspects = np.argpartition(np.abs(lam), n_errors, axis=-1)[..., :n_errors]    # G x C x n_err
  out = np.zeros((g, e_max), np.int64)
  for i in range(g):   # their vote: np.bincount, then the e_max largest counts
    out[i] = np.argsort(np.bincount(suspects[i].reshape(-1)))[-e_max:]
  return out


def berrut_robust_decode(y_GxMxC, returned_M, k: int, n: int, e_max: int = 2,
                         n_errors: int = 1):
  """(yhat_GxKxC, left_out_GxE): ApproxIFER's decoder: the located workers left out,
  Berrut's interpolant at the data nodes through the other returned outputs."""
  left_out = welch_locate(y_GxMxC, returned_M, k, n, e_max, n_errors)
  returned = np.asarray(returned_M)
  keep_GxM = ~np.any(returned[None, :, None] == left_out[:, None, :], axis=-1)
  nodes = authors_nodes(n)[returned]
  w = np.asarray(berrut_weights(nodes, keep_GxM, chebyshev_first(k)))          # G x K x M
  return np.einsum('gkm,gmc->gkc', w * keep_GxM[:, None, :], y_GxMxC), left_out


# --------------------------------------------------------------------------
# The collage code's parity-consistency check.
# --------------------------------------------------------------------------

def collage_distances(y_BxKxC, z_BxRxKC):
  """d_BxRxK: Euclidean distance between data output i and parity j's answer for cell i."""
  b, k, c = y_BxKxC.shape
  z = z_BxRxKC.reshape(b, -1, k, c)
  return jnp.sqrt(jnp.sum((z - y_BxKxC[:, None]) ** 2, axis=-1))


def calibrate_threshold(y_GxKxC, z_GxRxKC, false_alarm: float) -> float:
  """The distance above which a clean group is flagged in a `false_alarm` fraction of
  the groups given (every output in: the largest distance per group, its quantile)."""
  if not 0.0 < false_alarm < 1.0:
    raise ValueError(f'false_alarm={false_alarm!r} must be in (0, 1)')
  worst_G = np.asarray(jnp.max(collage_distances(jnp.asarray(y_GxKxC), jnp.asarray(z_GxRxKC)),
                               axis=(1, 2)))
  return float(np.quantile(worst_G, 1.0 - false_alarm))


@jax.jit
def collage_check(y_BxKxC, avail_BxK, z_BxRxKC, zavail_BxR, threshold):
  """Flags groups whose available outputs disagree, blames one output where the pattern
  allows, and rebuilds: returns dict(yhat_BxKxC: the blamed data output replaced by the
  mean answer of the parities that agree, missing ones rebuilt from those parities;
  flagged_B; blamed_data_B (cell index or -1); blamed_parity_B (index or -1)).

  Available data outputs not blamed are returned unchanged (the code stays systematic).
  """
  b, k, c = y_BxKxC.shape
  r = zavail_BxR.shape[1]
  avail, zavail = avail_BxK.astype(bool), zavail_BxR.astype(bool)
  over = (collage_distances(y_BxKxC, z_BxRxKC) > threshold) & avail[:, None, :] \
      & zavail[:, :, None]                                                      # B x R x K
  flagged = jnp.any(over, axis=(1, 2))
  bad_cells = jnp.any(over, axis=1)                                            # B x K
  bad_rows = jnp.any(over, axis=2)                                             # B x R
  one_cell = jnp.sum(bad_cells, 1) == 1
  one_row = jnp.sum(bad_rows, 1) == 1
  n_parity = jnp.sum(zavail, 1)
  # One cell disagrees (with every parity that sees it): that data output is wrong.
  # Otherwise one parity that disagrees while another agrees, or the only parity
  # disagreeing with most of the cells, is wrong; anything else stays unresolved.
  data_bad = flagged & one_cell & (jnp.sum(bad_rows, 1) == n_parity)
  most_cells = 2 * jnp.sum(bad_cells, 1) > jnp.sum(avail, 1)
  parity_bad = flagged & ~data_bad & one_row & ((n_parity >= 2) | most_cells)
  blamed_data = jnp.where(data_bad, jnp.argmax(bad_cells, 1), -1)
  blamed_parity = jnp.where(parity_bad, jnp.argmax(bad_rows, 1), -1)
  use_parity = zavail & ~(jnp.arange(r)[None] == blamed_parity[:, None])       # B x R
  n_use = jnp.sum(use_parity, 1)
  w = use_parity.astype(y_BxKxC.dtype) / jnp.maximum(n_use, 1)[:, None]
  mean = jnp.einsum('br,brkc->bkc', w, z_BxRxKC.reshape(b, r, k, c))
  keep = avail & ~(jnp.arange(k)[None] == blamed_data[:, None])
  mean = jnp.where((n_use > 0)[:, None, None], mean, jnp.nan)
  return {'yhat': jnp.where(keep[..., None], y_BxKxC, mean), 'flagged': flagged,
          'blamed_data': blamed_data, 'blamed_parity': blamed_parity}


# --------------------------------------------------------------------------
# Adversaries.
# --------------------------------------------------------------------------

ADVERSARIES = ('noise', 'random', 'scaled')


def corrupt(values_BxC, kind: str, rng, scale: float = 10.0, logit_std: float = 1.0):
  """A wrong output in place of `values`: 'noise' (ApproxIFER's experiment: + N(0, 100^2)
  on every class), 'random' (fresh logits N(0, logit_std^2), the spread of F's clean
  logits), 'scaled' (the right logits times `scale`)."""
  if kind == 'noise':
    return values_BxC + rng.normal(0, 100.0, values_BxC.shape)
  if kind == 'random':
    return rng.normal(0, logit_std, values_BxC.shape)
  if kind == 'scaled':
    return values_BxC * scale
  raise ValueError(f'adversary {kind!r} is unknown; accepted: {list(ADVERSARIES)}')
