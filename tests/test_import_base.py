"""Input scaling as a config field, an F trained elsewhere imported as a base workdir
(the original artifact's PyTorch base-mlp among them), and the ablation launcher."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmjax import config_utils, evaluate, import_base, inference, metrics, runs, train
from pmjax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unit_scaling_is_to_tensor_and_inputs_act_as_the_name():
  x = np.arange(0, 256, 8, dtype=np.uint8).reshape(1, 4, 8, 1)
  unit = pipeline.Inputs('mnist', 'unit')
  np.testing.assert_allclose(pipeline.normalize(x, unit), x / 255.0, rtol=1e-6)
  std = pipeline.normalize(x, 'mnist')
  np.testing.assert_allclose(std, (x / 255.0 - 0.1307) / 0.3081, atol=1e-3)
  assert unit == 'mnist' and runs.builders.get_spec(unit).num_classes == 10
  with pytest.raises(ValueError, match=r"data.scaling='zscore' is unknown.*'unit'"):
    pipeline.Inputs('mnist', 'zscore')
  old = {'stage': 'base', 'data': {'name': 'mnist'}}   # a config.json from before the field
  assert runs.migrate_config(old)['data']['scaling'] == 'standardize'


def _random_mlp_params(seed=3):
  from pmjax import models
  m = models.get_model('mlp', 10)
  return m, m.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))['params']


def test_imported_f_is_a_finished_base_run_parity_models_build_on(smoke_config, tmp_path):
  model, params = _random_mlp_params()
  params = jax.tree.map(lambda a: a * 3.0, params)  # not what an init would give
  c = smoke_config('stage=base')
  c.data.scaling = 'unit'
  w = str(tmp_path / 'f')
  row = import_base.import_base_variables(c, w, {'params': params})
  splits = pipeline.load_splits(c.data)
  logits = inference.batched(inference.make_predict(model, pipeline.Inputs('mnist', 'unit')),
                             {'params': params}, splits.test_x, 128)
  assert row['test_A_a'] == pytest.approx(float(np.mean(logits.argmax(-1) == splits.test_y)))
  assert evaluate.evaluate_workdir(w, verbose=False)['A_a'] == pytest.approx(row['test_A_a'])
  train.train_and_evaluate(c, w)                      # the same command: nothing retrained
  assert [(r['epoch'], r['imported']) for r in metrics.read_metrics(w)] == [
      (c.base.num_epochs, True)]
  _, _, restored, _ = runs.load_variables(w)
  for a, b in zip(jax.tree.leaves(restored['params']), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  p = smoke_config('stage=parity,code=sum,k=2,epochs=1')
  p.base_workdir = w
  with pytest.raises(config_utils.ConfigError, match="scaling='unit' inputs.*"
                     "--config.data.scaling=unit"):
    train.train_and_evaluate(p, str(tmp_path / 'p_std'))
  p.data.scaling = 'unit'
  train.train_and_evaluate(p, str(tmp_path / 'p'))
  res = evaluate.evaluate_workdir(str(tmp_path / 'p'), verbose=False)
  assert 0.0 <= res['A_d_top1'] <= 1.0 and res['A_a'] == pytest.approx(row['test_A_a'])


def test_import_refuses_wrong_trees_nan_and_used_workdirs(smoke_config, tmp_path):
  _, params = _random_mlp_params()
  c = smoke_config('stage=base')
  bad = jax.tree.map(lambda a: a, params)
  bad['Dense_1'] = {'kernel': np.zeros((200, 99), np.float32), 'bias': bad['Dense_1']['bias']}
  del bad['Dense_2']
  with pytest.raises(ValueError, match=r"(?s)\['Dense_2'\]\['kernel'\]: missing.*"
                     r"\['Dense_1'\]\['kernel'\]: shape \(200, 99\), expected \(200, 100\)"):
    import_base.import_base_variables(c, str(tmp_path / 'a'), {'params': bad})
  nan = jax.tree.map(lambda a: np.array(a), params)
  nan['Dense_0']['bias'][0] = np.nan
  with pytest.raises(ValueError, match=r"\['Dense_0'\]\['bias'\] holds NaN"):
    import_base.import_base_variables(c, str(tmp_path / 'b'), {'params': nan})
  assert not os.path.exists(tmp_path / 'a' / 'config.json')   # nothing written
  import_base.import_base_variables(c, str(tmp_path / 'c'), {'params': params})
  with pytest.raises(FileExistsError, match='already holds a run'):
    import_base.import_base_variables(c, str(tmp_path / 'c'), {'params': params})
  with pytest.raises(config_utils.ConfigError, match="stage='base'"):
    import_base.import_base_variables(smoke_config('stage=parity'), str(tmp_path / 'd'),
                                      {'params': params})


def _data_overrides(mnist_dir, tfds_dir):
  return [f'--config_override=data.manual_dir={mnist_dir}',
          f'--config_override=data.data_dir={tfds_dir}', '--config_override=data.download=false',
          '--config_override=data.verify_md5=false', '--config_override=data.num_val=100',
          '--config_override=data.train_limit=256', '--config_override=data.test_limit=100']


def _write_base_mlp_t7(torch, directory):
  """A random BaseMLP saved as the original's model.t7 files are (legacy format)."""
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Linear(784, 200), torch.nn.ReLU(),
                            torch.nn.Linear(200, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
  holder = torch.nn.Module()
  holder.nn = net                     # BaseMLP's attribute name: keys nn.0.weight, ...
  t7 = str(directory / 'model.t7')
  torch.save(holder.state_dict(), t7, _use_new_zipfile_serialization=False)
  return net, t7


@pytest.mark.slow
def test_original_base_mlp_t7_imports_with_the_same_outputs(mnist_dir, tfds_dir, tmp_path):
  """A BaseMLP state dict saved by PyTorch in the legacy .t7 format (as the original's
  model.t7 files): the imported F gives PyTorch's logits on [0, 1] inputs."""
  torch = pytest.importorskip('torch')
  net, t7 = _write_base_mlp_t7(torch, tmp_path)
  w = str(tmp_path / 'f')
  out = subprocess.run([sys.executable, 'launch/import_original_base_mlp.py', f'--t7={t7}',
                        f'--workdir={w}'] + _data_overrides(mnist_dir, tfds_dir),
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  config, model, variables, _ = runs.load_variables(w)
  assert config.data.scaling == 'unit' and 0.0 <= row['test_A_a'] <= 1.0
  x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
  ours = inference.make_predict(model, runs.load_run(w).dataset)(variables, x)
  theirs = net(torch.from_numpy(x.reshape(5, -1).astype(np.float32) / 255.0)).detach().numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ablation_launcher_smoke(mnist_dir, tfds_dir, tmp_path):
  """The two pmjax F's, and the original's F too where PyTorch can write a .t7 file."""
  root = tmp_path / 'ablation'
  cmd = [sys.executable, 'launch/ablate_original_differences.py', f'--root={root}', '--smoke',
         '--epochs=1', f'--manual_dir={mnist_dir}', f'--data_dir={tfds_dir}']
  try:
    import torch  # pylint: disable=import-outside-toplevel
    cmd.append(f'--t7={_write_base_mlp_t7(torch, tmp_path)[1]}')
  except ImportError:
    torch = None
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.load(open(root / 'ablation.json'))
  inits = ['Flax (LeCun normal)', 'original (N(0, 0.01))']
  fs = [('pmjax F (standardize inputs)', 'standardize'), ('pmjax F (unit inputs)', 'unit')]
  if torch is not None:
    fs.append(('original F (unit inputs)', 'unit'))
  assert [(r['F'], r['inputs'], r['F_P init']) for r in rows] == [
      (f, scaling, init) for f, scaling in fs for init in inits]
  assert all(0.0 <= r['test_A_d_by_epoch']['1'] <= 1.0 for r in rows)
  assert 'A_d epoch 1' in (root / 'ablation.md').read_text()
  # The differently initialised F_P started elsewhere: another run with the same seed.
  a, b = (metrics.read_metrics(r['workdir'])[0]['train_loss'] for r in rows[:2])
  assert a != b
