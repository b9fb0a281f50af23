"""The user's own network: a Flax module by import path (`config.model=pkg.mod:Class`
with `config.model_kwargs`), and examples/own_model/ run from its own directory."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from pmjax import models, runs, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, 'examples', 'own_model')

USER_MODULE = '''
import flax.linen as nn

class Net(nn.Module):
  num_classes: int
  width: int = 8

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(self.width, (3, 3))(x)).mean(axis=(1, 2))
    return nn.Dense(self.num_classes)(x)

def make_net(num_classes, width=8):      # a function returning a module is accepted too
  return Net(num_classes, width)

class NoTrain(nn.Module):                # called without `train`: refused when traced
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))

class WrongWidth(nn.Module):             # returns 3 logits whatever num_classes says
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))

NOT_A_MODEL = 3
'''


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
  """A package `userpkg.nets` outside pmjax, importable as a user's would be."""
  pkg = tmp_path / 'userpkg'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('')
  (pkg / 'nets.py').write_text(textwrap.dedent(USER_MODULE))
  monkeypatch.syspath_prepend(str(tmp_path))
  yield 'userpkg.nets'
  for name in ('userpkg', 'userpkg.nets'):
    sys.modules.pop(name, None)


def test_a_module_by_import_path_is_built_with_its_kwargs(user_pkg):
  model = models.get_model(f'{user_pkg}:Net', 10, {'width': 4})
  assert type(model).__name__ == 'Net' and model.width == 4 and model.num_classes == 10
  v = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  assert v['params']['Conv_0']['kernel'].shape == (3, 3, 1, 4)
  assert models.get_model(f'{user_pkg}:make_net', 7, {'width': 5}).width == 5
  # As F (checked on the dataset's shape), as r stacked parity models, and on collage cells.
  models.check_model(model, f'{user_pkg}:Net', (28, 28, 1), 10)
  stacked = models.get_parity_model(f'{user_pkg}:Net', 10, r=2, model_kwargs={'width': 4})
  assert isinstance(stacked, models.Stacked) and stacked.base.width == 4
  tiles = models.get_parity_model(f'tiles:{user_pkg}:Net', 10, k=2, image_shape=(28, 28, 1),
                                  model_kwargs={'width': 4})
  out = tiles.apply(tiles.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))),
                    jnp.zeros((3, 28, 28, 1)))
  assert out.shape == (3, 20)


def test_a_model_that_cannot_be_built_or_run_is_refused_naming_the_fix(user_pkg):
  cases = [
      ('nosuchpkg.nets:Net', {}, r"cannot import module 'nosuchpkg.nets'.*PYTHONPATH"),
      (f'{user_pkg}:Nett', {}, r"has no attribute 'Nett'; check the name after the colon"),
      (f'{user_pkg}:NOT_A_MODEL', {}, r'is a int, not a flax.linen Module'),
      (f'{user_pkg}:Net', {'depth': 3}, r"could not be built.*'depth': 3.*model_kwargs"),
      ('mlpp', {}, r"unknown model 'mlpp'.*import path 'package.module:ClassName'"),
  ]
  for name, kwargs, match in cases:
    with pytest.raises(models.ModelError, match=match):
      models.get_model(name, 10, kwargs)
  for name, match in ((f'{user_pkg}:NoTrain', r"failed on an input of shape \(1, 28, 28, 1\)"),
                      (f'{user_pkg}:WrongWidth', r'returned \(1, 3\).*expected logits of '
                                                 r'shape \(1, 10\)')):
    with pytest.raises(models.ModelError, match=match):
      runs.build_model(name, 'mnist')
  with pytest.raises(models.ModelError, match="'tile:' was meant as a parity model prefix"):
    models.get_parity_model('tile:mlp', 10, k=2, image_shape=(28, 28, 1))


@pytest.mark.slow
def test_kwargs_are_part_of_the_run_and_f_must_match(user_pkg, smoke_config, tmp_path):
  """model_kwargs reach F and the parity model, survive config.json, and a parity run
  on an F built with other kwargs is refused."""
  c = smoke_config('stage=base,base_epochs=1')
  c.model, c.model_kwargs = f'{user_pkg}:Net', {'width': 4}
  w = str(tmp_path / 'f')
  train.train_and_evaluate(c, w)
  config, model, variables, _ = runs.load_variables(w)
  assert dict(config.model_kwargs) == {'width': 4} and model.width == 4
  assert variables['params']['Conv_0']['kernel'].shape[-1] == 4
  p = smoke_config('stage=parity,code=sum,epochs=1')
  p.model, p.base_workdir, p.model_kwargs = f'{user_pkg}:Net', w, {'width': 4}
  p.parity_model_kwargs = {'width': 6}
  assert runs.model_kwargs(p) == ({'width': 4}, {'width': 6})
  train.train_and_evaluate(p, str(tmp_path / 'p'))
  run = runs.load_run(str(tmp_path / 'p'))
  assert run.parity_model.width == 6 and run.base_model.width == 4
  # Tuples come back from config.json as lists: still the same kwargs.
  t = ml_collections.ConfigDict({'model': 'm', 'parity_model': '', 'parity_model_kwargs': {},
                                 'model_kwargs': {'widths': (8, 16)}})
  back = ml_collections.ConfigDict(json.loads(t.to_json()))
  assert runs.model_kwargs(back) == runs.model_kwargs(t) == ({'widths': (8, 16)},) * 2
  p.model_kwargs = {'width': 5}
  with pytest.raises(runs.config_utils.ConfigError, match=r"model_kwargs=\{'width': 4\}"):
    train.train_and_evaluate(p, str(tmp_path / 'p2'))


@pytest.mark.slow
def test_the_example_trains_and_evaluates_from_its_own_directory(mnist_dir, tfds_dir, tmp_path):
  """examples/own_model: `python -m pmjax.train --config=config.py` from that directory
  (its nets.py found there), evaluated there and from elsewhere with PYTHONPATH; without
  it, a one-line error names the import path and the fix."""
  w = str(tmp_path / 'run')
  data = [f'--config.data.manual_dir={mnist_dir}', f'--config.data.data_dir={tfds_dir}',
          '--config.data.download=false', '--config.data.verify_md5=false',
          '--config.data.num_val=100', '--config.progress_bar=false']
  out = subprocess.run([sys.executable, '-m', 'pmjax.train', '--config=config.py:smoke,base_epochs=1,epochs=1',
                        f'--workdir={w}'] + data, cwd=EXAMPLE, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.load(open(os.path.join(w, 'results.json')))
  assert results['model'] == results['parity_model'] == 'nets:SmallCNN'
  assert 0.0 <= results['A_d_top1'] <= 1.0 and 0.0 <= results['A_a'] <= 1.0
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  out = subprocess.run([sys.executable, '-m', 'pmjax.evaluate', f'--workdir={w}'],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith(
      "error: model 'nets:SmallCNN': cannot import module 'nets'"), out.stderr[-2000:]
  out = subprocess.run([sys.executable, '-m', 'pmjax.evaluate', f'--workdir={w}'],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                       env={**env, 'PYTHONPATH': EXAMPLE})
  assert out.returncode == 0, out.stderr[-3000:]
  again = json.load(open(os.path.join(w, 'results.json')))
  assert again['A_d_top1'] == results['A_d_top1']
