"""Codes: exact decoding with a linear F, concat layouts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmjax.codes import concat_grid, make_code


def linear_f(w_DxC):
  return lambda x_NxD: x_NxD.reshape(x_NxD.shape[0], -1) @ w_DxC


@pytest.mark.parametrize('k', [2, 3, 4, 5])
def test_sum_decodes_exactly_with_linear_f(k):
  """With F(x) = Wx and F_P = F, P = sum X => F_P(P) = sum F(X): decode is exact."""
  rng = np.random.default_rng(k)
  b, d, c = 6, 12, 5
  f = linear_f(jnp.asarray(rng.normal(size=(d, c)), jnp.float32))
  code = make_code('sum', k)
  x = jnp.asarray(rng.normal(size=(b, k, d)), jnp.float32)
  y = f(x.reshape(b * k, d)).reshape(b, k, c)
  p = code.encode(x)
  assert p.shape == (b, 1, d)
  z = f(p.reshape(b, d)).reshape(b, 1, c)
  np.testing.assert_allclose(code.target(y), z, rtol=1e-4, atol=1e-4)
  for j in range(k):
    avail = jnp.ones((b, k), bool).at[:, j].set(False)
    y_missing = y.at[:, j].set(123.0)  # garbage where the answer is missing
    yhat = jax.jit(code.decode)(y_missing, avail, z, jnp.ones((b, 1), bool))
    np.testing.assert_allclose(yhat, y, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.delete(yhat, j, 1), np.delete(y_missing, j, 1))


def test_decode_nothing_missing_returns_inputs():
  code = make_code('concat', 2)
  y = jnp.arange(12.0).reshape(2, 2, 3)
  out = code.decode(y, jnp.ones((2, 2), bool), jnp.zeros((2, 1, 3)), jnp.zeros((2, 1), bool))
  np.testing.assert_array_equal(out, y)


def test_decode_undecodable_raises_concrete_and_nan_under_jit():
  code = make_code('sum', 3)
  y = jnp.ones((2, 3, 4))
  z = jnp.ones((2, 1, 4))
  avail = jnp.array([[True, True, False], [True, False, False]])
  with pytest.raises(ValueError, match='cannot be decoded'):
    code.decode(y, avail, z, jnp.ones((2, 1), bool))
  out = jax.jit(code.decode)(y, avail, z, jnp.ones((2, 1), bool))
  assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1, 1:]))
  with pytest.raises(ValueError, match='parity available=False'):
    code.decode(y[:1], avail[:1], z[:1], jnp.zeros((1, 1), bool))


def _constant_images(b, k, h, w, c):
  """Image i of group g is the constant 10*g + i + 1 (resize keeps constants exact)."""
  vals = 10 * np.arange(b)[:, None] + np.arange(k)[None, :] + 1
  return jnp.asarray(np.broadcast_to(vals[:, :, None, None, None], (b, k, h, w, c)),
                     jnp.float32)


def test_concat_k2_layout_side_by_side():
  code = make_code('concat', 2, image_shape=(28, 28, 1))
  x = _constant_images(3, 2, 28, 28, 1)
  p = code.encode(x)
  expected = np.zeros((3, 1, 28, 28, 1), np.float32)
  for g in range(3):
    expected[g, 0, :, :14] = 10 * g + 1   # X1 resized to H x W/2, left
    expected[g, 0, :, 14:] = 10 * g + 2   # X2 right
  np.testing.assert_allclose(p, expected, atol=1e-5)


def test_concat_k4_layout_quadrants_rgb():
  code = make_code('concat', 4, image_shape=(32, 32, 3))
  x = _constant_images(2, 4, 32, 32, 3)
  x = x * jnp.asarray([1.0, 2.0, 3.0])  # channels stay aligned
  p = code.encode(x)
  expected = np.zeros((2, 1, 32, 32, 3), np.float32)
  for g in range(2):
    for i, (rs, cs) in enumerate([(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(16, 32)),
                                  (slice(16, 32), slice(0, 16)), (slice(16, 32), slice(16, 32))]):
      expected[g, 0, rs, cs] = (10 * g + i + 1) * np.array([1.0, 2.0, 3.0])
  np.testing.assert_allclose(p, expected, rtol=1e-5)


def test_concat_k2_equals_hand_built_resize():
  """Non-constant images: each tile is jax.image.resize(bilinear, antialias) of its image."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 2, 28, 28, 1)), jnp.float32)
  p = make_code('concat', 2).encode(x)
  left = jax.image.resize(x[:, 0], (2, 28, 14, 1), 'bilinear', antialias=True)
  right = jax.image.resize(x[:, 1], (2, 28, 14, 1), 'bilinear', antialias=True)
  np.testing.assert_allclose(p[:, 0], jnp.concatenate([left, right], axis=2), atol=1e-6)


def test_concat_k3_grid_with_empty_cell():
  assert concat_grid(3, (28, 28, 1)) == (2, 2)
  x = _constant_images(2, 3, 28, 28, 1)
  p = jax.jit(make_code('concat', 3).encode)(x)
  assert p.shape == (2, 1, 28, 28, 1)
  np.testing.assert_allclose(p[0, 0, :14, :14], 1.0, atol=1e-5)
  np.testing.assert_allclose(p[0, 0, :14, 14:], 2.0, atol=1e-5)
  np.testing.assert_allclose(p[0, 0, 14:, :14], 3.0, atol=1e-5)
  np.testing.assert_array_equal(p[0, 0, 14:, 14:], 0.0)


@pytest.mark.parametrize('k,grid', [(2, (1, 2)), (4, (2, 2)), (5, (2, 3)), (9, (3, 3))])
def test_concat_grids(k, grid):
  assert concat_grid(k, (36, 36, 3)) == grid


@pytest.mark.parametrize('k,grid', [(2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 4)),
                                    (8, (2, 4))])
def test_concat_grids_mnist(k, grid):
  assert concat_grid(k, (28, 28, 1)) == grid
  assert concat_grid(k, (32, 32, 3)) == grid


@pytest.mark.parametrize('kwargs,match', [
    (dict(name='nope', k=2), 'accepted values'),
    (dict(name='sum', k=1), 'k=1 is invalid'),
    (dict(name='sum', k=2, r=0), 'r=0 is invalid'),
    (dict(name='concat', k=2, r=2), 'r=2 is not supported'),
    (dict(name='concat', k=2, image_shape=(1, 1, 1)), 'no grid'),   # 29x29: zero-padded
    (dict(name='concat', k=2, image_shape=(28, 28)), r'must be \(H, W, C\)'),
])
def test_make_code_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_code(**kwargs)


def test_encode_bad_shapes():
  code = make_code('concat', 2, image_shape=(28, 28, 1))
  with pytest.raises(ValueError, match='axis 1 must be the group size k=2'):
    code.encode(jnp.zeros((4, 3, 28, 28, 1)))
  with pytest.raises(ValueError, match='image_shape'):
    code.encode(jnp.zeros((4, 2, 32, 32, 1)))
  with pytest.raises(ValueError, match='rank'):
    make_code('sum', 2).encode(jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match='expected y_BxKxC'):
    code.decode(jnp.zeros((4, 2, 10)), jnp.ones((4, 3), bool), jnp.zeros((4, 1, 10)),
                jnp.ones((4, 1), bool))


# ----------------------------------------------------------------------------- linear code


@pytest.mark.parametrize('k,r,coefficients', [
    (2, 1, 'auto'), (2, 2, 'balanced'), (3, 2, 'balanced'), (4, 2, 'balanced'), (8, 2, 'balanced'),
    (4, 2, 'cauchy'), (4, 3, 'auto'), (5, 3, 'cauchy')])
@pytest.mark.slow
def test_linear_decodes_exactly_every_erasure_pattern(k, r, coefficients):
  """Linear F, F_P = F on p_j = sum_i C[j,i] X_i: every pattern of <= r erasures among
  the k + r outputs (data or parity) decodes to F's outputs."""
  import itertools
  rng = np.random.default_rng(10 * k + r)
  b, d, c = 5, 12, 6
  f = linear_f(jnp.asarray(rng.normal(size=(d, c)), jnp.float32))
  code = make_code('linear', k, r, parity_input='sum', coefficients=coefficients)
  x = jnp.asarray(rng.normal(size=(b, k, d)), jnp.float32)
  y = f(x.reshape(b * k, d)).reshape(b, k, c)
  p = code.encode(x)
  assert p.shape == (b, r, d)
  z = f(p.reshape(b * r, d)).reshape(b, r, c)
  np.testing.assert_allclose(code.target(y), z, rtol=1e-4, atol=1e-4)
  decode = jax.jit(code.decode)
  for m in range(1, r + 1):
    for erased in itertools.combinations(range(k + r), m):
      avail = np.ones((b, k), bool)
      zavail = np.ones((b, r), bool)
      for i in erased:
        (avail[:, i] if i < k else zavail[:, i - k])[...] = False
      yhat = decode(jnp.where(avail[..., None], y, 1e3), avail, z, zavail)
      np.testing.assert_allclose(yhat, y, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('k', range(2, 9))
def test_coefficient_matrices(k):
  """Rows of norm sqrt(k); every square submatrix invertible; balanced rows keep every
  entry (the divisor of a single-parity decode) away from zero, unlike Cauchy's."""
  import itertools
  from pmjax.codes import coefficient_matrix
  for kind, r in [('balanced', 2), ('cauchy', 2), ('cauchy', min(3, k))]:
    c = coefficient_matrix(k, r, kind).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), np.sqrt(k), rtol=1e-5)
    for m in range(1, r + 1):
      for rows in itertools.combinations(range(r), m):
        for cols in itertools.combinations(range(k), m):
          assert np.linalg.svd(c[np.ix_(rows, cols)], compute_uv=False)[-1] > 1e-3
  balanced, cauchy = coefficient_matrix(k, 2, 'balanced'), coefficient_matrix(k, 2, 'cauchy')
  np.testing.assert_array_equal(balanced[0], np.ones(k))
  assert np.abs(balanced).min() >= 0.55 and np.abs(balanced).min() > np.abs(cauchy).min()
  if k >= 4:   # the figures coefficient_matrix's docstring quotes
    assert 0.60 <= np.abs(balanced).min() <= 0.65 and 0.12 <= np.abs(cauchy).min() <= 0.28
  smallest_2x2 = lambda c: min(np.linalg.svd(c[:, list(cols)], compute_uv=False)[-1]
                               for cols in itertools.combinations(range(k), 2))
  if k in (4, 8):
    assert smallest_2x2(balanced.astype(np.float64)) == pytest.approx(
        {4: 0.32, 8: 0.098}[k], abs=0.005)
    assert smallest_2x2(cauchy.astype(np.float64)) == pytest.approx(
        {4: 0.513, 8: 0.094}[k], abs=0.005)
  np.testing.assert_array_equal(coefficient_matrix(k, 2), balanced)           # auto, r = 2
  if k >= 3:
    np.testing.assert_array_equal(coefficient_matrix(k, 3), coefficient_matrix(k, 3, 'cauchy'))
  with pytest.raises(ValueError, match="'balanced' is defined for r <= 2"):
    coefficient_matrix(4, 3, 'balanced')
  with pytest.raises(ValueError, match="coefficients='vandermonde' is unknown"):
    make_code('linear', 4, 2, coefficients='vandermonde')


def test_linear_r1_is_parm():
  from pmjax.codes import coefficient_matrix
  np.testing.assert_array_equal(coefficient_matrix(4, 1), np.ones((1, 4)))
  lin, parm = make_code('linear', 3, 1), make_code('concat', 3)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 3, 28, 28, 1)), jnp.float32)
  np.testing.assert_allclose(lin.encode(x), parm.encode(x), atol=1e-6)
  y = jnp.asarray(rng.normal(size=(2, 3, 10)), jnp.float32)
  z = parm.target(y) + 0.1
  avail = jnp.array([[True, False, True]] * 2)
  np.testing.assert_allclose(lin.decode(y, avail, z, jnp.ones((2, 1), bool)),
                             parm.decode(y, avail, z, jnp.ones((2, 1), bool)), atol=1e-4)


def test_linear_concat_parity_queries_and_errors():
  code = make_code('linear', 4, 2, image_shape=(28, 28, 1))
  x = _constant_images(2, 4, 28, 28, 1)
  p = code.encode(x)
  assert p.shape == (2, 2, 28, 28, 1)
  np.testing.assert_array_equal(p[:, 0], p[:, 1])   # each parity model sees the tiling
  np.testing.assert_allclose(p[:, :1], make_code('concat', 4).encode(x), atol=1e-6)
  y, z = jnp.ones((1, 4, 3)), jnp.ones((1, 2, 3))
  three_missing = jnp.array([[True, False, False, False]])
  with pytest.raises(ValueError, match='3 of k=4 outputs missing but only 2'):
    code.decode(y, three_missing, z, jnp.ones((1, 2), bool))
  out = jax.jit(code.decode)(y, three_missing, z, jnp.ones((1, 2), bool))
  assert np.all(np.isnan(out[0, 1:])) and np.all(out[0, 0] == 1)
  with pytest.raises(ValueError, match='1 <= r <= k'):
    make_code('linear', 2, 3)
  with pytest.raises(ValueError, match='parity_input'):
    make_code('linear', 2, 2, parity_input='mean')
  with pytest.raises(ValueError, match="use 'linear' for r >= 2"):
    make_code('sum', 4, 2)


def test_solve_small_matches_numpy():
  from pmjax.codes import solve_small
  rng = np.random.default_rng(0)
  a = rng.normal(size=(64, 5, 5))
  b = rng.normal(size=(64, 5, 3))
  x = jax.jit(solve_small)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- berrut code


def _smooth(x):
  return np.stack([np.sin(2 * x), np.cos(x), x ** 2, 1 / (1.5 + x)], -1)


def test_berrut_interpolant_passes_through_the_nodes():
  from pmjax.codes import berrut_weights, chebyshev_first
  nodes = chebyshev_first(6)
  w = np.asarray(berrut_weights(nodes, np.ones((1, 6), bool), nodes))[0]
  np.testing.assert_allclose(w, np.eye(6), atol=1e-6)
  # Between the nodes the weights form an affine combination.
  w = np.asarray(berrut_weights(nodes, np.ones((1, 6), bool), np.array([0.1, -0.33])))[0]
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize('systematic,nodes', [(False, 'second_kind'), (False, 'authors'),
                                              (True, 'authors')])
def test_berrut_reproduces_a_smooth_function_and_degrades_gracefully(systematic, nodes):
  """F = identity on X_i = g(alpha_i) for a smooth g: decoding returns g at the data
  nodes up to the interpolation error, for every pattern of S = 1 straggler. The
  authors' nodes (not symmetric: cos(0) = 1 is one, -1 is not) interpolate better with
  every worker in (0.09 vs 0.19) and worse without the one nearest -1 (0.51 vs 0.17),
  where this g is steepest."""
  from pmjax.codes import chebyshev_first
  k = 8
  code = make_code('berrut', k, 1, systematic=systematic, nodes=nodes)
  assert code.r == (9 if not systematic else 1)
  x = jnp.asarray(_smooth(chebyshev_first(k))[None], jnp.float32)     # 1 x K x 4
  z = code.encode(x)                                                    # F = identity
  np.testing.assert_allclose(code.target(x), z, atol=1e-5)
  decode = jax.jit(code.decode)
  if systematic:
    errors = []
    for i in range(k):
      avail = np.ones((1, k), bool)
      avail[0, i] = False
      out = decode(x, avail, z, np.ones((1, 1), bool))
      np.testing.assert_array_equal(np.delete(out, i, 1), np.delete(x, i, 1))  # exact
      errors.append(float(jnp.abs(out - x).max()))
    assert max(errors) < 0.3
  else:
    none_missing = float(jnp.abs(decode(x * 0, np.zeros((1, k), bool), z,
                                        np.ones((1, 9), bool)) - x).max())
    assert none_missing < {'second_kind': 0.25, 'authors': 0.1}[nodes]
    for j in range(9):
      zavail = np.ones((1, 9), bool)
      zavail[0, j] = False
      err = float(jnp.abs(decode(x * 0, np.zeros((1, k), bool), z, zavail) - x).max())
      # graceful: no blow-up with a straggler
      assert err < {'second_kind': 1.5 * none_missing + 0.05, 'authors': 0.55}[nodes]


def _leakage(code):
  """Mean over single-straggler patterns and queries of sum_j!=i |M_ij|, where
  M = decode(encode(.)) for the linear F = identity (the identity matrix if exact)."""
  k, n = code.k, code.r
  eye = jnp.eye(k, dtype=jnp.float32)[None]                          # 1 x K x K: query i = e_i
  z = code.encode(eye)                                                # 1 x N x K
  out = []
  for miss in range(n):
    zavail = np.ones((1, n), bool)
    zavail[0, miss] = False
    m = np.asarray(code.decode(eye * 0, np.zeros((1, k), bool), z, zavail))[0]   # K x K
    out.append(np.abs(m - np.diag(np.diag(m))).sum(1).mean())
  return float(np.mean(out))


def test_berrut_authors_nodes_leak_half_as_much_at_k8_s1():
  """K=8, S=1: the second-kind worker nodes cos(i pi/8) sit halfway (in angle) between
  the data nodes cos((2j+1) pi/16); ApproxIFER's own cos(i pi/9) do not."""
  from pmjax.codes import authors_nodes, chebyshev_second
  np.testing.assert_allclose(authors_nodes(9), np.cos(np.arange(9) * np.pi / 9))
  assert make_code('berrut', 8, 1, systematic=False).r == 9
  authors = _leakage(make_code('berrut', 8, 1, systematic=False))     # the default
  second = _leakage(make_code('berrut', 8, 1, systematic=False, nodes='second_kind'))
  assert authors < 0.45 and second > 0.8, (authors, second)
  # In units of pi/16 the data nodes' angles are odd (2j+1) and the second-kind worker
  # nodes' even: each inner worker node sits halfway between two data nodes.
  angles = np.arccos(chebyshev_second(9))[1:-1] * 16 / np.pi
  np.testing.assert_allclose(angles, np.arange(2, 16, 2), atol=1e-6)
  with pytest.raises(ValueError, match=r"nodes='chebyshev3' is unknown.*'authors', 'second_kind'"):
    make_code('berrut', 8, 1, nodes='chebyshev3')


def test_berrut_bad_arguments():
  with pytest.raises(ValueError, match='k=1 is invalid'):
    make_code('berrut', 1, 1)
  with pytest.raises(ValueError, match='r=0 is invalid'):
    make_code('berrut', 4, 0)
  code = make_code('berrut', 4, 1, systematic=False)
  zavail = np.ones((1, 5), bool)
  zavail[0, :2] = False
  with pytest.raises(ValueError, match='needs any 4 of its 5'):
    code.decode(jnp.zeros((1, 4, 3)), np.zeros((1, 4), bool), jnp.zeros((1, 5, 3)), zavail)


def test_unknown_code_lists_learned_too():
  with pytest.raises(ValueError, match=r"accepted values: \['sum', 'concat', 'linear', "
                     r"'collage', 'berrut'\], and 'learned'"):
    make_code('foo', 2)


def test_metrics_take_a_tasks_own_score():
  """A regression-style score (correct within 0.5 of the target) goes through A_a, A_d,
  reconstruction and A_d by missing with no branch for it."""
  from pmjax import metrics

  class Close:
    keys = ('close',)

    def correct(self, outputs_NxC, labels_N):
      return {'close': jnp.abs(outputs_NxC[:, 0] - labels_N) < 0.5}

    def agree(self, outputs_NxC, reference_NxC):
      return jnp.abs(outputs_NxC[:, 0] - reference_NxC[:, 0]) < 0.5

  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(8, 2, 1)) * 3, jnp.float32)
  labels = y[..., 0] + jnp.asarray(rng.choice([0.0, 1.0], size=(8, 2)), jnp.float32)
  code = make_code('sum', 2)
  z = code.target(y)
  m = metrics.degraded_metrics(code, y, z, labels, Close())
  expected = float(np.mean(np.asarray(labels) == np.asarray(y[..., 0])))
  assert m['A_d_close'] == pytest.approx(expected) and m['recon_close'] == 1.0
  assert metrics.accuracy_metrics(y.reshape(-1, 1), labels.reshape(-1), Close()) == {
      'A_a': pytest.approx(expected)}
  linear = make_code('linear', 2, 2)
  by = metrics.degraded_by_missing(linear, y, linear.target(y), labels, Close())
  assert by['1']['A_d_close'] == pytest.approx(expected)


def test_collage_rebuilds_any_missing_answer_from_the_mean_of_available_parities():
  code = make_code('collage', 4, 2, image_shape=(8, 8, 1))
  assert (code.r, code.parity_width, code.tolerates, code.rebuilds_all) == (2, 4, 2, True)
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(3, 2, 20)), jnp.float32)
  avail = np.ones((3, 4), bool)
  avail[:, [0, 2, 3]] = False                         # three missing, more than r
  out = np.asarray(jax.jit(code.decode)(y, avail, z, np.ones((3, 2), bool)))
  mean = np.asarray(z).reshape(3, 2, 4, 5).mean(1)
  np.testing.assert_allclose(out[:, [0, 2, 3]], mean[:, [0, 2, 3]], rtol=1e-6)
  np.testing.assert_array_equal(out[:, 1], np.asarray(y)[:, 1])
  only_second = np.array([[False, True]] * 3)
  out = np.asarray(code.decode(y, avail, z, only_second))
  np.testing.assert_allclose(out[:, 0], np.asarray(z).reshape(3, 2, 4, 5)[:, 1, 0])
  with pytest.raises(ValueError, match='none of the r=2 parity outputs available'):
    code.decode(y, avail, z, np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match=r'z_BxRx\(4C\)'):
    code.decode(y, avail, z[:, :, :5], np.ones((3, 2), bool))
  # The target: each parity model answers every cell with F's own output.
  np.testing.assert_array_equal(np.asarray(code.target(y))[:, 1].reshape(3, 4, 5), y)


def test_collage_half_cells_tile_each_image_halved_in_a_larger_query():
  """cell='half': each image's sides halved (16x16 on 32x32, where 'fit' gives 16x8),
  tiled in concat's grid; the coded query is rows*cols/4 queries' size."""
  from pmjax import codes
  from pmjax.codes import cell_shape, coded_query_shape, resize_matrix
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 8, 32, 32, 3)), jnp.float32)
  half = make_code('collage', 8, 3, image_shape=(32, 32, 3), cell='half')
  fit = make_code('collage', 8, 3, image_shape=(32, 32, 3))
  assert cell_shape(8, (32, 32, 3), 'half') == (2, 4, 16, 16)
  assert cell_shape(8, (32, 32, 3)) == (2, 4, 16, 8)
  p = np.asarray(half.encode(x))
  assert p.shape == (2, 3, 32, 64, 3) and coded_query_shape(half, (32, 32, 3)) == (32, 64, 3)
  assert coded_query_shape(fit, (32, 32, 3)) == (32, 32, 3)
  for name in ('sum', 'concat'):   # every other code's coded query is one query's size
    assert coded_query_shape(make_code(name, 8), (28, 28, 1)) == (28, 28, 1)
  m = resize_matrix(32, 16)
  for i in range(8):   # image i in row i // 4, column i % 4, in every parity's copy
    want = np.einsum('hH,bHWc,wW->bhwc', m, np.asarray(x[:, i]), m)
    cell = p[:, :, 16 * (i // 4):16 * (i // 4 + 1), 16 * (i % 4):16 * (i % 4 + 1)]
    np.testing.assert_allclose(cell, np.broadcast_to(want[:, None], cell.shape), atol=1e-5)
  # k = 3 leaves the fourth cell of the 2x2 grid zero; 'fit' and 'half' agree at k <= 4.
  p3 = make_code('collage', 3, 1, image_shape=(32, 32, 3), cell='half').encode(x[:, :3])
  np.testing.assert_array_equal(np.asarray(p3)[:, 0, 16:, 16:], 0.0)
  np.testing.assert_allclose(p3, make_code('collage', 3, 1, image_shape=(32, 32, 3)).encode(
      x[:, :3]), atol=1e-6)
  assert codes.describe_code('collage', 3, {'cell': 'half'}) == \
      'collage (half-size cells, per-cell answers)'
  with pytest.raises(ValueError, match=r"cell='quarter' is unknown for code 'collage'; "
                                       r"accepted values: \['fit', 'half'\]"):
    make_code('collage', 8, 3, cell='quarter')
