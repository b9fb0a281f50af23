"""Wrong outputs: ApproxIFER's error locator (a port) and the collage consistency check."""

import jax
import numpy as np
import pytest

from pmjax.codes import berrut, byzantine as bz, make_code


def test_welch_locator_finds_one_wrong_worker_of_a_smooth_function():
  """ApproxIFER's setting (K=8, e_max=2, N = 2K + 2 e_max + 1 = 21): values of a smooth
  function of the node at the worker nodes, one worker's values + N(0, 100^2): the
  located workers include it in every group, and the decoder then interpolates the data
  nodes about as well as with no error at all."""
  k, e = 8, 2
  n = bz.approxifer_workers(k, e)
  assert n == 21
  z = berrut.authors_nodes(n)
  rng = np.random.default_rng(0)
  g = 40
  coef = rng.normal(size=(g, 3, 10))
  f = lambda x: coef[:, 0] + coef[:, 1] * x + coef[:, 2] * x ** 2
  y = np.stack([f(t) for t in z], 1)
  bad = rng.integers(0, n, g)
  noisy = y.copy()
  noisy[np.arange(g), bad] += rng.normal(0, 100, (g, 10))
  located = bz.welch_locate(noisy, np.arange(n), k, n, e, n_errors=1)
  assert located.shape == (g, e)
  assert all(bad[i] in located[i] for i in range(g))
  truth = np.stack([f(t) for t in berrut.chebyshev_first(k)], 1)
  robust, _ = bz.berrut_robust_decode(noisy, np.arange(n), k, n, e, n_errors=1)
  clean, _ = bz.berrut_robust_decode(y, np.arange(n), k, n, e, n_errors=1)
  assert np.abs(robust - truth).max() < 1.0
  assert np.abs(robust - truth).max() < 2 * np.abs(clean - truth).max() + 0.1
  plain = np.asarray(make_code('berrut', k, n - k, systematic=False).decode(
      np.zeros((g, k, 10), np.float32), np.zeros((g, k), bool), noisy.astype(np.float32),
      np.ones((g, n), bool)))
  assert np.abs(plain - truth).max() > 5.0       # the plain decoder is thrown off


def _collage_group(k=4, r=2, g=6, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=(g, k, 5)).astype(np.float32)
  code = make_code('collage', k, r)
  z = np.asarray(code.target(y)) + 0.01 * rng.normal(size=(g, r, k * 5)).astype(np.float32)
  return y, z.astype(np.float32)


@pytest.mark.parametrize('r', [1, 2])
def test_collage_check_blames_a_wrong_data_output_and_rebuilds_it(r):
  y, z = _collage_group(r=r)
  g, k = y.shape[:2]
  tau = bz.calibrate_threshold(y, z, 0.2)
  ones_k, ones_r = np.ones((g, k), bool), np.ones((g, r), bool)
  clean = jax.device_get(bz.collage_check(y, ones_k, z, ones_r, 1.0))
  assert not clean['flagged'].any()
  np.testing.assert_array_equal(clean['yhat'], y)          # nothing flagged: y unchanged
  wrong = y.copy()
  wrong[:, 2] = 10 * y[:, 2]
  res = jax.device_get(bz.collage_check(wrong, ones_k, z, ones_r, 1.0))
  assert res['flagged'].all() and (res['blamed_data'] == 2).all()
  assert (res['blamed_parity'] == -1).all()
  np.testing.assert_allclose(res['yhat'][:, 2], y[:, 2], atol=0.05)   # rebuilt
  np.testing.assert_array_equal(res['yhat'][:, [0, 1, 3]], y[:, [0, 1, 3]])
  assert 0 < tau < 1.0


def test_collage_check_blames_a_wrong_parity_and_keeps_every_data_output():
  y, z = _collage_group(r=2)
  g, k = y.shape[:2]
  bad = z.copy()
  bad[:, 1] = np.random.default_rng(1).normal(0, 3, bad[:, 1].shape)
  res = jax.device_get(bz.collage_check(y, np.ones((g, k), bool), bad, np.ones((g, 2), bool),
                                        1.0))
  assert res['flagged'].all() and (res['blamed_parity'] == 1).all()
  assert (res['blamed_data'] == -1).all()
  np.testing.assert_array_equal(res['yhat'], y)
  # A missing data output is rebuilt from the parity that was not blamed.
  avail = np.ones((g, k), bool)
  avail[:, 0] = False
  res = jax.device_get(bz.collage_check(y, avail, bad, np.ones((g, 2), bool), 1.0))
  np.testing.assert_allclose(res['yhat'][:, 0], y[:, 0], atol=0.05)


def test_adversaries_and_bad_arguments():
  rng = np.random.default_rng(0)
  v = np.ones((3, 10))
  np.testing.assert_array_equal(bz.corrupt(v, 'scaled', rng, scale=10.0), 10 * v)
  assert np.std(bz.corrupt(v, 'noise', rng)) > 10
  assert bz.corrupt(v, 'random', rng, logit_std=2.0).shape == (3, 10)
  with pytest.raises(ValueError, match="adversary 'flip' is unknown"):
    bz.corrupt(v, 'flip', rng)
  with pytest.raises(ValueError, match='false_alarm'):
    bz.calibrate_threshold(np.zeros((2, 2, 3)), np.zeros((2, 1, 6)), 0.0)
