"""Learned codes ("Learning a Code", 2018): a learned encoder and decoder around a frozen F.

The encoder maps the k queries of a group to r parity queries; the frozen F
(the deployed model) computes on them; the decoder maps the k + r outputs,
with the missing ones zeroed, to the k answers. Encoder and decoder are
trained jointly through F, with the loss on the erased position only:
`mse` to F's output, `kl` to F's softmax, or `ce` to the true label. Once
trained they are a `Code` like any other (`make_learned_code`): `encode`,
`decode` (available rows returned unchanged), no `target` (nothing trains
towards it). Used by `pmjax.train` when `config.code.name == 'learned'` and by
`pmjax.evaluate`.

`config.code.train_parity=True` trains a parity model too: a copy of F
(its architecture, initialised from F's trained parameters, batch-norm
statistics kept at F's) computes on the parity queries and is trained jointly
with the encoder and decoder; the variables are then {'coder': ..., 'parity':
...}. Without it F itself computes on the parity queries, frozen (the 2018
paper's setting).

Encoder (`config.code.encoder`): 'mlp', Linear(kD, kD) - ReLU -
Linear(kD, rD) on the flattened, normalised queries; or 'conv', 3x3
convolutions with 20k channels and dilations 1, 1, 2, 4, 8, 1, then a 1x1
convolution to r images. Decoder (MLP): (k+r)C -> (k+r)C -> kC -> kC with ReLUs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pmjax import codes, inference
from pmjax.data import pipeline

LOSSES = ('mse', 'kl', 'ce')


class ConvEncoder(nn.Module):
  """3x3 convolutions with 20k channels and dilations 1, 1, 2, 4, 8, 1, then a 1x1
  convolution to r images (of C channels each), on the k images stacked by channel."""
  k: int
  r: int

  @nn.compact
  def __call__(self, x_BxKxHxWxC):
    b, k, h, w, c = x_BxKxHxWxC.shape
    x = x_BxKxHxWxC.transpose(0, 2, 3, 1, 4).reshape(b, h, w, k * c)
    for dilation in (1, 1, 2, 4, 8, 1):
      x = nn.relu(nn.Conv(20 * self.k, (3, 3), kernel_dilation=dilation, padding='SAME')(x))
    x = nn.Conv(self.r * c, (1, 1))(x)
    return x.reshape(b, h, w, self.r, c).transpose(0, 3, 1, 2, 4)


class LearnedCoder(nn.Module):
  k: int
  r: int
  num_classes: int
  image_shape: tuple
  encoder: str = 'mlp'

  def setup(self):
    d = int(np.prod(self.image_shape))
    k, r, c = self.k, self.r, self.num_classes
    if self.encoder == 'conv':
      self.conv_encoder = ConvEncoder(k, r)
    else:
      self.enc_0, self.enc_1 = nn.Dense(k * d), nn.Dense(r * d)
    self.dec_0, self.dec_1, self.dec_2 = nn.Dense((k + r) * c), nn.Dense(k * c), nn.Dense(k * c)

  def __call__(self, x_BxKx, y_BxKxC, z_BxRxC):
    """Initialises both halves; returns (parity queries, decoded outputs)."""
    return self.encode(x_BxKx), self.decode_logits(y_BxKxC, z_BxRxC)

  def encode(self, x_BxKx):
    if self.encoder == 'conv':
      return self.conv_encoder(x_BxKx)
    b = x_BxKx.shape[0]
    h = nn.relu(self.enc_0(x_BxKx.reshape(b, -1)))
    return self.enc_1(h).reshape(b, self.r, *self.image_shape)

  def decode_logits(self, y_BxKxC, z_BxRxC):
    b, k, c = y_BxKxC.shape
    h = jnp.concatenate([y_BxKxC, z_BxRxC], axis=1).reshape(b, -1)
    h = nn.relu(self.dec_0(h))
    h = nn.relu(self.dec_1(h))
    return self.dec_2(h).reshape(b, k, c)


ENCODERS = ('mlp', 'conv')


def make_coder(k: int, r: int, num_classes: int, image_shape,
               encoder: str = 'mlp') -> LearnedCoder:
  if r < 1 or k < 2:
    raise ValueError(f'learned code needs k >= 2 and r >= 1; got k={k}, r={r}')
  if encoder not in ENCODERS:
    raise ValueError(f'learned encoder={encoder!r} is unknown; accepted: {list(ENCODERS)}')
  return LearnedCoder(k, r, num_classes, tuple(image_shape), encoder)


def init_variables(coder: LearnedCoder, seed: int, base_vars=None,
                   train_parity: bool = False) -> dict:
  """The trained variables: the coder's, and with `train_parity` a copy of F's."""
  k, r, c = coder.k, coder.r, coder.num_classes
  v = jax.jit(coder.init)(jax.random.key(seed), jnp.zeros((1, k, *coder.image_shape)),
                          jnp.zeros((1, k, c)), jnp.zeros((1, r, c)))
  params = v['params']
  if train_parity:
    params = {'coder': params, 'parity': jax.tree.map(jnp.array, base_vars['params'])}
  return {'params': params, 'batch_stats': {}}


def split_variables(params, f_vars, train_parity: bool) -> tuple:
  """(coder variables, variables of the network that computes on the parity queries)."""
  if train_parity:
    return {'params': params['coder']}, {**f_vars, 'params': params['parity']}
  return {'params': params}, jax.lax.stop_gradient(f_vars)


def make_learned_code(coder: LearnedCoder, variables) -> codes.Code:
  """A `Code` from a trained coder (encode / decode with the parameters bound)."""
  k, r = coder.k, coder.r

  def encode(x_BxKx):
    return coder.apply(variables, x_BxKx.astype(jnp.float32), method='encode')

  def target(y_BxKxC):
    raise ValueError('the learned code has no parity target: its encoder and decoder are '
                     'trained through F (see pmjax.learned)')

  def decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR):
    codes.check_decode_args(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR, k, r)
    avail, zavail = avail_BxK.astype(bool), zavail_BxR.astype(bool)
    decodable_B = codes.one_parity_per_missing(avail_BxK, zavail_BxR, 'learned')
    y_in = jnp.where(avail[..., None], y_BxKxC, 0.0)
    z_in = jnp.where(zavail[..., None], z_BxRxC, 0.0)
    yhat = coder.apply(variables, y_in, z_in, method='decode_logits')
    yhat = jnp.where(decodable_B[:, None, None], yhat, jnp.nan)
    return jnp.where(avail[..., None], y_BxKxC, yhat)

  return codes.Code('learned', k, r, encode, target, decode, tolerates=r)


def learned_batch(data, idx_BxK, keys_BxK, dataset):
  """Queries, F's outputs, labels and one erased position per group."""
  b, k = idx_BxK.shape
  x = pipeline.normalize(data['train_x'][idx_BxK], dataset)
  erased = jax.vmap(lambda key: jax.random.randint(key, (), 0, k))(keys_BxK[:, 0])
  return {'x': x, 'y': data['targets'][idx_BxK], 'label': data['train_y'][idx_BxK],
          'erased': erased, 'f_vars': data['base_vars']}


def learned_loss(apply_fn, params, batch_stats, batch, f_apply, loss: str = 'mse',
                 train_parity: bool = False):
  """Loss at the erased position of each group, through the frozen F (or the trained
  parity model)."""
  del batch_stats
  variables, f_vars = split_variables(params, batch['f_vars'], train_parity)
  x, y = batch['x'], batch['y']
  b, k, c = y.shape
  p = apply_fn(variables, x, method='encode')
  r = p.shape[1]
  z = f_apply(f_vars, p.reshape(b * r, *p.shape[2:]), train=False).reshape(b, r, c)
  avail = jnp.arange(k)[None, :] != batch['erased'][:, None]
  yhat = apply_fn(variables, jnp.where(avail[..., None], y, 0.0), z, method='decode_logits')
  rows = jnp.arange(b)
  pred, true = yhat[rows, batch['erased']], y[rows, batch['erased']]
  if loss == 'mse':
    value = jnp.mean((pred - true) ** 2)
  elif loss == 'kl':
    value = jnp.mean(jnp.sum(jax.nn.softmax(true) * (jax.nn.log_softmax(true) -
                                                     jax.nn.log_softmax(pred)), -1))
  else:
    value = optax.softmax_cross_entropy_with_integer_labels(
        pred, batch['label'][rows, batch['erased']]).mean()
  return value, {}


def make_parity_outputs(coder, base_model, base_vars, dataset: str, batch_size: int,
                        train_parity: bool = False):
  """(trained variables, x_uint8_GxKx...) -> (code, z_GxRxC): F (or the trained parity
  model) on the learned parity queries.

  Compiled once; the trained variables are an argument, not a constant.
  """
  apply_f = base_model.apply

  @jax.jit
  def z_of(variables, x_chunk):
    trained, f_vars = variables
    coder_vars, f_vars = split_variables(trained['params'], f_vars, train_parity)
    p = coder.apply(coder_vars, pipeline.normalize(x_chunk, dataset), method='encode')
    g, r = p.shape[:2]
    return apply_f(f_vars, p.reshape(g * r, *p.shape[2:]), train=False).reshape(g, r, -1)

  def parity_outputs(variables, x_GxK):
    coder_vars, _ = split_variables(variables['params'], base_vars, train_parity)
    code = make_learned_code(coder, coder_vars)
    return code, inference.batched(z_of, (variables, base_vars), x_GxK, batch_size)

  return parity_outputs
