"""One contract for every registered code; a new code inherits it by registering.

`check_code_contract(code, exact)` holds for any `Code`: jitted encode / target /
decode with the documented shapes and dtypes; a systematic code returns the
available outputs unchanged; every erasure pattern of up to `code.tolerates`
missing outputs decodes (exactly from `target(y)` when the code is exact);
one more missing data output is an error with concrete masks and NaN under
jit; malformed masks are refused.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmjax import codes, learned

IMAGE = (8, 8, 1)
B, C = 3, 5


def _variants():
  """(name, k, r, params) for every registered code: k = 3 with r = 1, k = 4 with the
  largest r <= 2 it accepts, and there each other choice of each of its parameters
  (k = 2 is the mean code's, below, and tests/test_codes.py's)."""
  for name, spec in sorted(codes.CODE_SPECS.items()):
    yield name, 3, 1, {}
    r = min(spec.max_r(4), 2)
    yield name, 4, r, {}
    for p in spec.params:
      for v in p.choices:
        if v != p.default:
          yield name, 4, r, {p.name: v}


def build(name, k, r, params):
  if codes.CODE_SPECS[name].build is None:   # trained codes: built untrained here
    coder = learned.make_coder(k, r, C, IMAGE, params.get('encoder', 'mlp'))
    variables = learned.init_variables(coder, 0)
    return learned.make_learned_code(coder, {'params': variables['params']})
  return codes.make_code(name, k, r, image_shape=IMAGE, **params)


def check_code_contract(code: codes.Code, exact: bool):
  k, r = code.k, code.r
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (B, k, *IMAGE)), jnp.float32)
  p = jax.jit(code.encode)(x)
  assert p.shape == (B, r, *IMAGE) and p.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(p)))
  y = jnp.asarray(rng.normal(size=(B, k, C)), jnp.float32)
  width = code.parity_width * C   # C numbers per coded output (collage: k * C)
  z = jnp.tile(y[:, :1], (1, r, code.parity_width)) if not exact else jax.jit(code.target)(y)
  assert z.shape == (B, r, width)
  decode = jax.jit(code.decode)
  ones_k, ones_r = np.ones((B, k), bool), np.ones((B, r), bool)
  if code.systematic:
    np.testing.assert_array_equal(decode(y, ones_k, z, ones_r), y)
  # Every pattern of up to `tolerates` missing outputs (data or coded) that misses a
  # data output (non-systematic codes: no data output is ever computed).
  slots = range(k + r) if code.systematic else range(k, k + r)
  for m in range(1, code.tolerates + 1):
    for erased in itertools.combinations(slots, m):
      avail = ones_k.copy() if code.systematic else np.zeros((B, k), bool)
      zavail = ones_r.copy()
      for i in erased:
        (avail if i < k else zavail)[:, i if i < k else i - k] = False
      if avail.all():
        continue
      out = np.asarray(decode(y, avail, z, zavail))
      assert np.all(np.isfinite(out)), (code.name, erased)
      np.testing.assert_array_equal(out[avail], np.asarray(y)[avail])
      if exact:
        np.testing.assert_allclose(out, y, rtol=1e-3, atol=1e-3)
      code.decode(y, avail, z, zavail)  # concrete masks: no error either
  # One missing output too many: an error outside jit, NaN rows under it. A code that
  # rebuilds every missing output from one parity fails only without any parity.
  if code.systematic and code.tolerates < k:
    avail, zavail = ones_k.copy(), ones_r.copy()
    if code.rebuilds_all:
      avail[:, :k] = False
      np.testing.assert_allclose(decode(y, avail, z, ones_r[:, :r] & (np.arange(r) == 0)),
                                 y if exact else decode(y, avail, z, ones_r), atol=1e-5)
      avail, zavail = ones_k.copy(), np.zeros((B, r), bool)
      avail[:, 0] = False
    else:
      avail[:, :code.tolerates + 1] = False
    with pytest.raises(ValueError):
      code.decode(y, avail, z, zavail)
    assert np.all(np.isnan(np.asarray(decode(y, avail, z, zavail))[:, 0]))
  with pytest.raises(ValueError):
    code.decode(y, ones_k[:, :1], z, ones_r)


@pytest.mark.parametrize('name,k,r,params', list(_variants()))
def test_every_registered_code_keeps_the_contract(name, k, r, params):
  spec = codes.CODE_SPECS[name]
  code = build(name, k, r, params)
  assert code.name == name and code.k == k and code.tolerates == r
  check_code_contract(code, spec.exact and spec.build is not None)


def test_a_new_code_is_one_registration(monkeypatch):
  """A code written and registered here, with no other file changed, is built by name
  and keeps the contract: P = the mean of the queries, F_P ~ the mean of the outputs."""
  monkeypatch.setattr(codes.core, 'CODE_SPECS', dict(codes.CODE_SPECS))

  def mean_code(k, r, image_shape, scale):
    def encode(x_BxKx):
      return scale * jnp.mean(x_BxKx.astype(jnp.float32), axis=1, keepdims=True)

    def target(y_BxKxC):
      return scale * jnp.mean(y_BxKxC, axis=1, keepdims=True)

    def decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR):
      if avail_BxK.shape != y_BxKxC.shape[:2]:
        raise ValueError(f'avail has shape {avail_BxK.shape}, expected {y_BxKxC.shape[:2]}')
      avail = avail_BxK.astype(bool)
      n_missing = jnp.sum(~avail, 1)
      ok = (n_missing <= 1) & zavail_BxR[:, 0]
      if not isinstance(avail, jax.core.Tracer) and not bool(np.all(np.asarray(ok))):
        raise ValueError('the mean code rebuilds one missing output from its parity')
      rest = jnp.sum(jnp.where(avail[..., None], y_BxKxC, 0.0), 1, keepdims=True)
      missing = k * z_BxRxC / scale - rest
      yhat = jnp.where(avail[..., None], y_BxKxC, missing)
      return jnp.where(ok[:, None, None], yhat, jnp.nan)

    return codes.Code('mean', k, 1, encode, target, decode)

  codes.register_code(codes.CodeSpec('mean', mean_code,
                                     params=(codes.Param('scale', 1.0, (1.0, 2.0)),)))
  for k in (2, 3):
    for scale in (1.0, 2.0):
      check_code_contract(codes.make_code('mean', k, scale=scale), exact=True)
  with pytest.raises(ValueError, match="no parameter 'size'"):
    codes.make_code('mean', 2, size=3)
  # A run config carries it as config.code (name, k, r, its parameters), built in one
  # call, checked, and turned into the code by the run factory.
  from configs import mnist
  from pmjax import runs
  config = mnist.get_config('stage=parity,code=mean,k=3')
  assert config.code.to_dict() == {'name': 'mean', 'k': 3, 'r': 1, 'scale': 1.0}
  config.code.scale = 2.0
  code = runs.make_code(config)
  assert code.name == 'mean' and code.k == 3
  check_code_contract(code, exact=True)
  config.code.scale = 3.0
  with pytest.raises(ValueError, match=r"scale=3.0 is unknown for code 'mean'"):
    codes.code_params(config.code)


def test_flat_configs_of_earlier_versions_migrate_to_config_code():
  """Configs written before `config.code` was nested keep their meaning: a linear run
  without `linear_coefficients` used Cauchy coefficients."""
  flat = {'stage': 'parity', 'code': 'linear', 'k': 4, 'r': 2, 'parity_input': 'sum',
          'learned_loss': 'mse', 'model': 'mlp'}
  assert codes.migrate_code_config(flat) == {
      'stage': 'parity', 'model': 'mlp',
      'code': {'name': 'linear', 'k': 4, 'r': 2, 'parity_input': 'sum',
               'coefficients': 'cauchy'}}
  assert codes.migrate_code_config({'code': 'sum', 'k': 2})['code'] == {
      'name': 'sum', 'k': 2, 'r': 1}
  nested = {'code': {'name': 'sum', 'k': 2, 'r': 1}}
  assert codes.migrate_code_config(nested) is nested
