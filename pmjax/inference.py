"""Jitted inference: F on raw images, F_P on encoded groups, batched over a split.

These are the compiled predict functions that training (per-epoch
evaluation, frozen-F targets), `pmjax.evaluate` and the serving loop share.
Inputs are raw uint8 images; normalisation runs inside the jitted function.
"""

from __future__ import annotations

import jax
import numpy as np

from pmjax.data import pipeline


def make_predict(model, dataset: str):
  """jit(variables, x_uint8_BxHxWxC) -> logits_BxC (eval mode)."""

  @jax.jit
  def predict(variables, x_uint8_BxHxWxC):
    x = pipeline.normalize(x_uint8_BxHxWxC, dataset)
    return model.apply(variables, x, train=False)

  return predict


def make_apply(model):
  """jit(variables, x_BxHxWxC) -> logits_BxC on already-normalised inputs (F_P serving)."""

  @jax.jit
  def apply(variables, x):
    return model.apply(variables, x, train=False)

  return apply


def encode_raw(code, dataset: str, x_uint8_GxKxHxWxC):
  """Raw images of k queries -> normalised parity queries p_GxRxHxWxC."""
  return code.encode(pipeline.normalize(x_uint8_GxKxHxWxC, dataset))


def parity_model_input(p_GxRx):
  """What the parity model(s) take: r = 1, one model on G queries (p_Gx...); r > 1,
  `models.Stacked` takes p_GxRx... whole."""
  g, r = p_GxRx.shape[:2]
  return p_GxRx.reshape(g, *p_GxRx.shape[2:]) if r == 1 else p_GxRx


def apply_parity(parity_model, variables, p_GxRx):
  """F_P on parity queries p_GxRx... -> z_GxRxC (eval mode)."""
  z = parity_model.apply(variables, parity_model_input(p_GxRx), train=False)
  return z.reshape(p_GxRx.shape[0], p_GxRx.shape[1], -1)


def make_parity_predict(parity_model, code, dataset: str):
  """jit(variables, x_uint8_GxKxHxWxC) -> parity outputs z_GxRxC (encode, then F_P)."""

  @jax.jit
  def parity_predict(variables, x_uint8_GxKxHxWxC):
    return apply_parity(parity_model, variables, encode_raw(code, dataset, x_uint8_GxKxHxWxC))

  return parity_predict


def make_parity_outputs(parity_model, code, dataset: str, batch_size: int):
  """(variables, x_uint8_GxKx...) -> (code, z_GxRxC): a trained parity model's outputs."""
  predict = make_parity_predict(parity_model, code, dataset)
  return lambda variables, x_GxK: (code, batched(predict, variables, x_GxK, batch_size))


def batched(fn, variables, x_Nx, batch_size: int) -> np.ndarray:
  """Applies `fn(variables, chunk)` over x in fixed-size chunks (the last one padded,
  so there is one compilation) and concatenates the outputs on the host."""
  n = x_Nx.shape[0]
  if n == 0:
    raise ValueError('batched() got an empty input')
  batch_size = min(batch_size, n)
  outs = []
  for start in range(0, n, batch_size):
    chunk = x_Nx[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    outs.append(fn(variables, chunk))
  out = np.concatenate([np.asarray(o) for o in outs])
  return out[:n]


def group_outputs(predict, variables, x_GxKx, batch_size: int) -> np.ndarray:
  """`predict` on every query of the groups x_GxKx... (batched): y_GxKxC."""
  g, k = x_GxKx.shape[:2]
  return batched(predict, variables, x_GxKx.reshape(g * k, *x_GxKx.shape[2:]),
                 batch_size).reshape(g, k, -1)


def make_f_on_coded(model, code, dataset: str):
  """(variables, x_uint8_GxKx...) -> z_GxRxC: F itself on the code's coded queries (the
  training-free codes, e.g. Berrut, whose workers all run F)."""
  encode = jax.jit(lambda x: encode_raw(code, dataset, x))
  apply = make_apply(model)

  def f_on_coded(variables, x_GxKx):
    p = encode(x_GxKx)
    return apply(variables, p.reshape(-1, *p.shape[2:])).reshape(p.shape[0], p.shape[1], -1)
  return f_on_coded


def fixed_groups(x_Nx, labels_N, k: int):
  """Consecutive groups of k (the tail that does not fill a group is dropped)."""
  g = x_Nx.shape[0] // k
  if g == 0:
    raise ValueError(f'{x_Nx.shape[0]} examples cannot form one group of k={k}')
  return (x_Nx[:g * k].reshape(g, k, *x_Nx.shape[1:]),
          labels_N[:g * k].reshape(g, k, *labels_N.shape[1:]))
