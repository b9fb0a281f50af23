"""`berrut` (ApproxIFER, training-free, S stragglers): queries are interpolated
with Berrut's rational interpolant; every worker runs the unchanged F."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pmjax.codes.core import (Code, CodeSpec, Param, check_decode_args, matrix_encoder,
                              matrix_target, raise_if_undecodable, register_code)


def chebyshev_first(n: int) -> np.ndarray:
  """cos((2i+1) pi / 2n), i = 0..n-1 (descending): the data nodes."""
  return np.cos((2 * np.arange(n) + 1) * np.pi / (2 * n))


def chebyshev_second(n: int) -> np.ndarray:
  """cos(j pi / (n-1)), j = 0..n-1 (descending): Chebyshev points of the second kind."""
  return np.cos(np.arange(n) * np.pi / (n - 1))


def authors_nodes(n: int) -> np.ndarray:
  """cos(i pi / n), i = 0..n-1 (descending): the worker nodes of ApproxIFER's own
  accuracy scripts (Mahdi-Soleymani/Approxifer, WorkStation-MNIST.py and -CIFAR.py:
  `all_z[i] = np.cos((i*np.pi)/N)`, N = K + S)."""
  return np.cos(np.arange(n) * np.pi / n)


# The coded (worker) node sets of `config.code.nodes`: n -> n descending nodes.
WORKER_NODES = {'authors': authors_nodes, 'second_kind': chebyshev_second}


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


def _extra_nodes(k: int, s: int, grid) -> np.ndarray:
  """S coded nodes for the systematic form: greedily, the nodes of the K+S worker grid
  `grid` farthest from the data nodes (and from each other)."""
  taken = list(chebyshev_first(k))
  cand = list(grid(k + s))
  chosen = []
  for _ in range(s):
    best = max(cand, key=lambda c: min(abs(c - t) for t in taken))
    chosen.append(best)
    taken.append(best)
    cand.remove(best)
  return np.sort(np.asarray(chosen))[::-1]


def _berrut_code(k, s, image_shape, systematic, nodes='authors'):
  """Berrut codes (ApproxIFER). K queries sit at Chebyshev first-kind nodes
  cos((2j+1) pi / 2K); the N = K + S worker nodes are `nodes`: 'authors'
  (cos(i pi / N), i < N, as ApproxIFER's scripts) or 'second_kind'
  (cos(i pi / (N-1)), pmjax's choice before; for K=8, S=1 these sit exactly halfway
  in angle between the data nodes, and decode(encode(.)) of a linear F leaks about
  twice as much into other queries: 0.81 against 0.43, tests/test_codes.py).

  Non-systematic (as published): r = K + S coded queries, Berrut's interpolant
  of the queries at the K+S worker nodes; every answer is interpolated
  from any K of them (`decode` ignores the data slots: none is computed).
  Systematic: the K data workers answer their own queries; r = S extra workers
  answer the interpolant at S worker nodes away from the data nodes; only
  missing answers are interpolated, from every available output.
  `target` is the same Berrut combination of F's outputs (what an ideal F_P
  would return; the codes need no training).
  """
  if nodes not in WORKER_NODES:
    raise ValueError(f'berrut nodes={nodes!r} is unknown; choices: {sorted(WORKER_NODES)}')
  alpha = chebyshev_first(k)
  grid = WORKER_NODES[nodes]
  beta = grid(k + s) if not systematic else _extra_nodes(k, s, grid)
  r = len(beta)
  enc_w = np.asarray(berrut_weights(alpha, np.ones((1, k), bool), beta))[0]   # r x k

  encode = matrix_encoder(enc_w, k, image_shape)
  target = matrix_target(enc_w, k)

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


register_code(CodeSpec(
    'berrut', _berrut_code,
    params=(Param('systematic', True, (True, False)),
            Param('nodes', 'authors', tuple(WORKER_NODES))),
    max_r=lambda k: 1 << 30, r_rule='r >= 1', trained=False, exact=False))
