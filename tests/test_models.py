"""Models: output shapes for every model, unknown names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmjax.models import MODELS, get_model


@pytest.mark.parametrize('name', sorted(MODELS))
def test_output_shapes(name):
  shape = (2, 28, 28, 1) if name in ('mlp', 'lenet5') else (2, 32, 32, 3)
  model = get_model(name, 7)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False), variables)
  assert out.shape == (2, 7)
  has_bn = 'batch_stats' in variables
  assert has_bn == (name.startswith(('resnet', 'vgg')))


def test_resnet_depths():
  def n_convs(name):
    v = jax.eval_shape(lambda: get_model(name, 10).init(jax.random.key(0),
                                                        jnp.zeros((1, 32, 32, 3))))
    return sum(1 for p in jax.tree_util.tree_leaves_with_path(v['params'])
               if 'Conv' in jax.tree_util.keystr(p[0]) and p[1].ndim == 4
               and p[1].shape[0] == 3)
  assert n_convs('resnet18') == 17          # stem + 2 per block, 8 blocks
  assert n_convs('resnet152') == 1 + 2 * (3 + 8 + 36 + 3)


def test_mlp_is_base_mlp():
  v = get_model('mlp', 10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  shapes = [p.shape for p in jax.tree.leaves(v['params']) if p.ndim == 2]
  assert shapes == [(784, 200), (200, 100), (100, 10)]


def test_unknown_model():
  with pytest.raises(ValueError, match="choices: .*'resnet18'"):
    get_model('resnet50', 10)
  with pytest.raises(ValueError, match='num_classes'):
    get_model('mlp', 0)


def test_tilesum_parity_model_sums_a_shared_network_over_tiles():
  from pmjax.codes import make_code
  from pmjax.models import get_parity_model
  model = get_parity_model('tilesum:mlp', 10, k=3, image_shape=(28, 28, 1))
  assert (model.rows, model.cols) == (2, 2)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 3, 28, 28, 1)), jnp.float32)
  p = make_code('concat', 3).encode(x)[:, 0]
  v = model.init(jax.random.key(0), p)
  out = model.apply(v, p)
  inner = model.inner
  tiles = [p[:, :14, :14], p[:, :14, 14:], p[:, 14:, :14]]   # the empty 4th tile is left out
  expected = sum(inner.apply({'params': v['params']['inner']}, t) for t in tiles)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='needs k and image_shape'):
    get_parity_model('tilesum:mlp', 10)


def test_tiles_parity_model_answers_every_cell_on_its_own():
  """`tiles:NAME` (the collage code's parity model): NAME on each cell, answers side by
  side; changing one image changes only its own cell's answer."""
  from pmjax.codes import make_code
  from pmjax.models import get_parity_model
  model = get_parity_model('tiles:tilecnn', 10, k=3, image_shape=(28, 28, 1))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, 3, 28, 28, 1)), jnp.float32)
  code = make_code('collage', 3, image_shape=(28, 28, 1))
  p = code.encode(x)[:, 0]
  v = model.init(jax.random.key(0), p)
  out = model.apply(v, p)
  assert out.shape == (2, 30)
  tiles = [p[:, :14, :14], p[:, :14, 14:], p[:, 14:, :14]]
  expected = jnp.concatenate(
      [model.inner.apply({'params': v['params']['inner']}, t) for t in tiles], axis=1)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  out2 = model.apply(v, code.encode(x.at[:, 1].set(0.0))[:, 0]).reshape(2, 3, 10)
  changed = np.abs(np.asarray(out2) - np.asarray(out).reshape(2, 3, 10)).max(axis=(0, 2))
  assert changed[1] > 0 and changed[0] == 0 and changed[2] == 0
  with pytest.raises(ValueError, match="'tile:' was meant as a parity model prefix: unknown prefix"):
    get_parity_model('tile:mlp', 10, k=3, image_shape=(28, 28, 1))
  # The collage's half-size cells (a 2x4 grid of 16x16 on a 32x64 query): the same grid,
  # so the same model splits the larger query into its 16x16 cells.
  half = make_code('collage', 8, image_shape=(32, 32, 3), cell='half')
  model = get_parity_model('tiles:tilecnn', 10, k=8, image_shape=(32, 32, 3))
  x = jnp.asarray(rng.uniform(size=(2, 8, 32, 32, 3)), jnp.float32)
  p = half.encode(x)[:, 0]
  v = model.init(jax.random.key(0), p)
  out = np.asarray(model.apply(v, p)).reshape(2, 8, 10)
  np.testing.assert_allclose(out[:, 5], model.inner.apply({'params': v['params']['inner']},
                                                          p[:, 16:, 16:32]), rtol=1e-5, atol=1e-5)


def test_resnet8_narrow_on_eight_half_cells_costs_at_most_one_resnet8():
  """The K=8 half-cell collage's parity model (`tiles:resnet8_narrow` on a 32x64 query)
  stays within the goal's budget, 1.0 of F's (resnet8 on 32x32) FLOPs, and near it
  (XLA's cost analysis, as the goal table counts)."""
  from pmjax.bench.codec_cost import forward_flops
  from pmjax.codes import coded_query_shape, make_code
  from pmjax.models import get_model, get_parity_model
  from pmjax.tasks import init_variables
  image = (32, 32, 3)
  f = get_model('resnet8', 10)
  parity = get_parity_model('tiles:resnet8_narrow', 10, k=8, image_shape=image)
  query = coded_query_shape(make_code('collage', 8, image_shape=image, cell='half'), image)
  assert query == (32, 64, 3)
  ratio = (forward_flops(parity, init_variables(parity, 0, query), query) /
           forward_flops(f, init_variables(f, 0, image), image))
  assert 0.95 <= ratio <= 1.0, ratio


def _stacked_loss(model, variables, x, train=True):
  # (x and the statistics are arguments, not constants: the r separate models' programs
  # are then one program, compiled once)
  def loss(params, stats, x):
    out, upd = model.apply({'params': params, 'batch_stats': stats}, x, train=train,
                           mutable=['batch_stats'])
    return jnp.sum(jnp.sin(out)), (out, upd['batch_stats'])
  (_, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables['params'], variables['batch_stats'], x)
  return out, stats, grads


@pytest.mark.slow
def test_stacked_layouts_equal_r_separate_models():
  """Stacked's unrolled layout (the default), its vmapped one and r separate models:
  the same outputs, new batch statistics and gradients (a conv net with batch norm)."""
  from pmjax.models import ResNet, Stacked
  r = 3
  base = ResNet(4, blocks=(1, 1), widths=(4, 8))   # conv, batch norm, a strided shortcut
  x = jax.random.normal(jax.random.key(1), (4, r, 16, 8, 3))
  unroll, vmapped = Stacked(base, r), Stacked(base, r, layout='vmap')
  variables = unroll.init(jax.random.key(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(
      vmapped.init(jax.random.key(0), x))
  got = {name: _stacked_loss(m, variables, x) for name, m in
         (('unroll', unroll), ('vmap', vmapped))}
  for j in range(r):   # copy j alone, as a model of its own
    v_j = Stacked.copy_variables(variables, j)
    out_j, stats_j, grads_j = _stacked_loss(base, v_j, x[:, j])
    for name, (out, stats, grads) in got.items():
      np.testing.assert_allclose(out[:, j], out_j, rtol=1e-5, atol=1e-5, err_msg=name)
      for a, b in zip(jax.tree.leaves(Stacked.copy_variables(
          {'params': grads, 'batch_stats': stats}, j)), jax.tree.leaves(
              {'params': grads_j, 'batch_stats': stats_j})):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
  # Evaluation mode (running statistics) agrees too, and a wrong R is named.
  np.testing.assert_allclose(unroll.apply(variables, x), vmapped.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='R = r = 3'):
    unroll.apply(variables, x[:, :2])


@pytest.mark.parametrize('hw,kernel,stride,padding', [
    ((4, 2), (3, 3), 1, 1), ((4, 2), (3, 3), 2, 1), ((2, 1), (3, 3), 1, 1),
    ((4, 4), (1, 1), 2, 0), ((2, 3), (5, 5), 1, 'SAME'), ((6, 6), (3, 3), 1, 'VALID')])
@pytest.mark.slow
def test_small_convolutions_as_matmul_equal_xla(hw, kernel, stride, padding):
  """models.Conv runs a convolution with a small output as im2col + matmul on CPU: the
  same outputs and gradients as flax's own nn.Conv, and the same parameter tree."""
  import flax.linen as nn
  from pmjax import models
  x = jax.random.normal(jax.random.key(0), (5, *hw, 6))
  ours, theirs = models.Conv(7, kernel, stride, padding=padding), nn.Conv(
      7, kernel, stride, padding=padding)
  v = theirs.init(jax.random.key(1), x)
  assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(v)
  def f(m):
    return jax.value_and_grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))),
                              argnums=(0, 1))(v, x)
  (a, ga), (b, gb) = f(ours), f(theirs)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours.apply(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-5)
  for p, q in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4)
  out_hw = ours.apply(v, x).shape[1:3]
  assert (out_hw[0] * out_hw[1] <= models.IM2COL_MAX_PIXELS) == (hw != (6, 6))


@pytest.mark.slow
@pytest.mark.parametrize('hw', [(28, 28), (14, 7), (10, 10)])
def test_max_pool_by_reshape_equals_flax(hw):
  """models.max_pool (a non-overlapping window as reshape + max): nn.max_pool's values,
  and its gradients after a ReLU (the place every model pools), odd sizes cropped."""
  import flax.linen as nn
  from pmjax import models
  x = jax.random.normal(jax.random.key(0), (3, *hw, 4))
  def f(pool):
    return jax.value_and_grad(lambda x: jnp.sum(jnp.sin(pool(nn.relu(x)))))(x)
  ours = lambda x: models.max_pool(x, (2, 2), (2, 2))
  theirs = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(ours(x), theirs(x))
  (a, ga), (b, gb) = f(ours), f(theirs)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_array_equal(ga, gb)


def test_train_throughput_counts_a_steps_flops_on_every_device(monkeypatch):
  """XLA's cost analysis of a step partitioned over the mesh counts one device's share:
  the bench's GFLOP/step is about the same on 1 and on 2 devices (it was half on two)."""
  from pmjax import train
  from pmjax.bench import train_throughput
  from pmjax.mesh import make_mesh
  assert len(jax.devices()) == 2   # the suite's two virtual CPU devices
  gflop = {}
  for n in (1, 2):
    monkeypatch.setattr(train, 'make_mesh', lambda n=n: make_mesh(jax.devices()[:n]))
    gflop[n] = train_throughput.run_steps('lenet5', 'mnist', 'base', batch=8,
                                          steps_per_call=1, calls=1)['step_gflop']
  # (the partitioned program counts ~5% more here: its own extra ops)
  assert gflop[1] > 0 and gflop[2] == pytest.approx(gflop[1], rel=0.1), gflop
