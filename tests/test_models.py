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
  with pytest.raises(ValueError, match="unknown prefix 'tile:'"):
    get_parity_model('tile:mlp', 10, k=3, image_shape=(28, 28, 1))
