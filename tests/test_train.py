"""Training: device-count invariance, resume equality, NaN stop, end to end, bad input."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from functools import partial

from pmjax import checkpoint, codes, config_utils, evaluate, metrics, runs, tasks, train
from pmjax.models import get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir, which='latest'):
  return runs.load_variables(workdir, which)[2]['params']


def _assert_trees_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def _one_chunk(devices, n_steps=2, optim=None, calls=1, model_name='mlp', unroll=1):
  """Parity training of `model_name` for n_steps on a mesh over `devices` (in `calls`
  calls of n_steps / calls steps each; `unroll`: lax.scan's)."""
  rng = np.random.default_rng(0)
  data = {'train_x': rng.integers(0, 255, (256, 28, 28, 1)).astype(np.uint8),
          'targets': rng.normal(size=(256, 10)).astype(np.float32)}
  code = codes.make_code('concat', 2)
  model = get_model(model_name, 10)
  mesh = train.make_mesh(devices)
  tx = train.make_optimizer(optim or _adam(), 10)
  state = train.replicate(train.create_state(model, tx, tasks.init_variables(
      model, 0, (28, 28, 1))), mesh)
  batch_fn = partial(tasks.parity_batch, dataset='mnist', augment=False, code=code,
                     base_apply=None)
  run = train.make_train_chunk(mesh, tasks.parity_loss, batch_fn, 16, 2, unroll=unroll)
  perm = jnp.asarray(rng.permutation(256), jnp.int32)
  per_call = n_steps // calls
  for c in range(calls):
    state, m = run(state, train.replicate(data, mesh), {}, perm, jnp.int32(c * per_call),
                   jax.random.key(0), n_steps=per_call)
  return jax.device_get(state.params), float(m['loss'])


def _adam():
  import ml_collections
  return ml_collections.ConfigDict(dict(name='adam', lr=1e-3, weight_decay=1e-5,
                                        schedule='constant'))


def test_one_vs_two_devices_same_parameters():
  """SGD (linear in the gradient) must match tightly: pmean of shard means = global mean."""
  assert len(jax.devices()) == 2
  sgd = type(_adam())(dict(name='sgd', lr=0.01, momentum=0.9, schedule='constant'))
  p1, l1 = _one_chunk(jax.devices()[:1], optim=sgd)
  p2, l2 = _one_chunk(jax.devices(), optim=sgd)
  assert abs(l1 - l2) < 1e-5 * max(1.0, abs(l1))
  _assert_trees_close(p1, p2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('model_name,unroll', [('mlp', 1), ('lenet5', True)])
def test_one_step_calls_run_the_same_steps_as_a_scan(model_name, unroll):
  """A one-step call is straight-line code (no scan loop): two such calls give what one
  call of two scanned steps gives, the scan a loop (mlp) or unrolled (a conv model on CPU,
  `train.scan_unroll`; the conv smoke runs take one step per call)."""
  sgd = type(_adam())(dict(name='sgd', lr=0.01, momentum=0.9, schedule='constant'))
  p_scan, _ = _one_chunk(jax.devices()[:1], n_steps=2, optim=sgd, model_name=model_name,
                         unroll=unroll)
  p_steps, _ = _one_chunk(jax.devices()[:1], n_steps=2, optim=sgd, calls=2,
                          model_name=model_name)
  _assert_trees_close(p_scan, p_steps, rtol=1e-6, atol=1e-7)


def test_one_vs_two_devices_adam_within_rounding():
  """Adam divides by sqrt(v): for near-zero gradients rounding can move a weight by up to
  lr per step, so the bound is 2 steps x lr."""
  p1, _ = _one_chunk(jax.devices()[:1])
  p2, _ = _one_chunk(jax.devices())
  _assert_trees_close(p1, p2, rtol=0, atol=2 * 1e-3)


def test_batch_must_divide_devices():
  with pytest.raises(ValueError, match='does not divide by the 2 devices'):
    train.make_train_chunk(train.make_mesh(), tasks.parity_loss, None, 15, 2)


@pytest.fixture(scope='module')
def base_dir(tmp_path_factory, mnist_dir, tfds_dir):
  from tests.conftest import synthetic_config
  c = synthetic_config('stage=base,base_epochs=3', mnist_dir, tfds_dir)
  w = str(tmp_path_factory.mktemp('base'))
  last = train.train_and_evaluate(c, w)
  assert last['epoch'] == 3
  return w


def test_base_learns_and_writes_metrics(base_dir):
  rows = metrics.read_metrics(base_dir)
  assert [r['epoch'] for r in rows] == [1, 2, 3]
  assert rows[-1]['test_A_a'] > 0.5  # synthetic classes are easy; chance is 0.1
  assert os.listdir(os.path.join(base_dir, 'tb'))


def test_tensorboard_scalars_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports PyTorch wherever it is installed (~1.6 CPU-s per run); the metric
  writer imports it without, its event file holds the scalars, and torch still imports
  afterwards where it is installed."""
  code = f"""
import glob, importlib.util, sys
from pmjax import metrics
w = metrics.MetricWriter({str(tmp_path)!r})
w.write(1, {{'train_loss': 0.5, 'val_A_a': 0.25}})
w.close()
assert 'torch' not in sys.modules, 'torch was imported'
events = open(glob.glob({str(tmp_path / 'tb' / '*tfevents*')!r})[0], 'rb').read()
assert b'train_loss' in events and b'val_A_a' in events
if importlib.util.find_spec('torch'):
  import torch
  assert torch.tensor([1.0]).item() == 1.0
print('ok')
"""
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


def test_resume_equals_uninterrupted(smoke_config, base_dir, tmp_path):
  def cfg():
    c = smoke_config('stage=parity,epochs=3')
    c.base_workdir = base_dir
    return c
  full = str(tmp_path / 'full')
  train.train_and_evaluate(cfg(), full)
  parts = str(tmp_path / 'parts')
  c = cfg()
  c.stop_after_epochs = 1
  assert train.train_and_evaluate(c, parts)['epoch'] == 1
  c.stop_after_epochs = 1
  assert train.train_and_evaluate(c, parts)['epoch'] == 2
  assert train.train_and_evaluate(cfg(), parts)['epoch'] == 3
  _assert_trees_close(_params(full), _params(parts), rtol=1e-6, atol=1e-7)
  assert [r['epoch'] for r in metrics.read_metrics(parts)] == [1, 2, 3]
  a, b = metrics.read_metrics(full)[-1], metrics.read_metrics(parts)[-1]
  assert a['test_A_d_top1'] == b['test_A_d_top1']


def test_nan_loss_stops_and_keeps_last_good_checkpoint(smoke_config, base_dir, tmp_path):
  w = str(tmp_path / 'nan')
  c = smoke_config('stage=parity,epochs=3')
  c.base_workdir = base_dir
  c.stop_after_epochs = 1
  train.train_and_evaluate(c, w)
  good = _params(w)
  c.stop_after_epochs = 0
  c.parity.optim.lr = 1e30
  with pytest.raises(ValueError, match=r'parity.optim.lr=0.001 \(this config: 1e\+30\)'):
    train.train_and_evaluate(c, w)  # a changed learning rate is a different run
  with pytest.raises(FloatingPointError, match='last good checkpoint'):
    train.train_and_evaluate(c, w, allow_config_change=True)
  ck = checkpoint.Checkpoints(w, create=False)
  assert ck.latest.latest_step() == 1
  ck.close()
  _assert_trees_close(good, _params(w), rtol=0, atol=0)


@pytest.mark.slow
def test_end_to_end_all_stage_and_evaluate_cli(smoke_config, tmp_path):
  w = str(tmp_path / 'all')
  results = train.train_and_evaluate(smoke_config('code=sum,k=2'), w)
  assert os.path.exists(os.path.join(w, 'parity', 'results.json'))
  os.remove(os.path.join(w, 'results.json'))
  out = subprocess.run([sys.executable, '-m', 'pmjax.evaluate', f'--workdir={w}'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'A_d top-1' in out.stdout
  with open(os.path.join(w, 'results.json')) as f:
    res = json.load(f)
  for key in ('dataset', 'model', 'code', 'k', 'r', 'epochs', 'A_a', 'A_d_top1', 'A_d_top5',
              'recon_top1', 'A_d_by_position', 'A_o'):
    assert key in res, key
  assert len(res['A_d_by_position']) == 2
  assert set(res['A_o']) == {'0.01', '0.05', '0.1', '0.2', '0.5'}
  assert res['A_o']['0.1'] == pytest.approx(0.9 * res['A_a'] + 0.1 * res['A_d_top1'])
  assert res['A_d_top1'] == pytest.approx(results['A_d_top1'])
  # A base-only workdir gives A_a only.
  base = evaluate.evaluate_workdir(os.path.join(w, 'base'), verbose=False)
  assert 'A_a' in base and 'A_d_top1' not in base
  # The workdirs as the previous version wrote them (flat code fields, stage='all',
  # log_every_steps) load, evaluate the same and resume with today's config.
  for d in (w, os.path.join(w, 'base'), os.path.join(w, 'parity')):
    old = _flat_config(runs.read_config(d))
    old['log_every_steps'] = old.pop('steps_per_call')
    old['stage'] = {'base_and_parity': 'all'}.get(old['stage'], old['stage'])
    with open(os.path.join(d, 'config.json'), 'w') as f:
      json.dump(old, f)
  assert runs.read_config(w).stage == 'base_and_parity'
  assert runs.read_config(os.path.join(w, 'parity')).code.to_dict() == {'name': 'sum', 'k': 2,
                                                                        'r': 1}
  again = train.train_and_evaluate(smoke_config('code=sum,k=2'), w)
  assert again['A_d_top1'] == res['A_d_top1'] and again['A_a'] == res['A_a']


def test_bad_inputs(smoke_config, base_dir, tmp_path):
  c = smoke_config('stage=parity')
  with pytest.raises(ValueError, match='base_workdir is empty'):
    train.train_and_evaluate(c, str(tmp_path / 'a'))
  c.base_workdir = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='not a pmjax workdir'):
    train.train_and_evaluate(c, str(tmp_path / 'b'))
  # A workdir holding another run is never overwritten.
  c = smoke_config('stage=base')
  with pytest.raises(ValueError, match='holds a run with'):
    c.model = 'lenet5'
    train.train_and_evaluate(c, base_dir)
  with pytest.raises(ValueError, match="config.stage='nope'"):
    c = smoke_config()
    c.stage = 'nope'
    train.train_and_evaluate(c, str(tmp_path / 'c'))
  with pytest.raises(ValueError, match='unknown config argument'):
    smoke_config('kk=3')
  with pytest.raises(FileNotFoundError, match='not a pmjax workdir'):
    evaluate.evaluate_workdir(str(tmp_path / 'c'), verbose=False)
  runs.write_config(str(tmp_path / 'd'), smoke_config('stage=base'))
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoints'):
    evaluate.evaluate_workdir(str(tmp_path / 'd'), verbose=False)
  with pytest.raises(ValueError, match="optim.name='nadam'"):
    train.make_optimizer(type(_adam())(dict(name='nadam', lr=1.0)), 10)


def test_train_cli_requires_workdir():
  out = subprocess.run([sys.executable, '-m', 'pmjax.train', '--config=configs/mnist.py:smoke'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and '--workdir is required' in out.stderr


def test_corrupt_checkpoint_is_named_and_kept(smoke_config, base_dir, tmp_path):
  import shutil
  w = str(tmp_path / 'corrupt')
  shutil.copytree(base_dir, w)
  ckpt_dir = os.path.join(w, 'checkpoints', 'latest')
  files = [os.path.join(d, f) for d, _, fs in os.walk(ckpt_dir) for f in fs]
  for f in files:
    with open(f, 'wb') as fh:
      fh.write(b'garbage')
  c = smoke_config('stage=base,base_epochs=3')
  with pytest.raises(checkpoint.CheckpointError, match='cannot read the latest checkpoint'):
    train.train_and_evaluate(c, w)
  assert all(os.path.exists(f) for f in files)  # nothing deleted


@pytest.mark.slow
def test_linear_r2_trains_stacked_models_and_evaluates_every_pattern(smoke_config, base_dir,
                                                                     tmp_path):
  c = smoke_config('stage=parity,code=linear,k=4,r=2')
  c.base_workdir = base_dir
  w = str(tmp_path / 'lin')
  train.train_and_evaluate(c, w)
  _, model, variables, _ = runs.load_variables(w)
  kernel = variables['params']['base']['Dense_0']['kernel']
  assert kernel.shape[0] == 2 and not np.allclose(kernel[0], kernel[1])  # 2 distinct models
  res = evaluate.evaluate_workdir(w, verbose=False)
  by_missing = res['A_d_by_missing']
  assert by_missing['1']['patterns'] == 4 and by_missing['2']['patterns'] == 14
  assert by_missing['1']['undecodable_patterns'] == 0
  assert by_missing['2']['undecodable_patterns'] == 0
  assert 0.0 <= by_missing['2']['A_d_top1'] <= 1.0
  kinds = by_missing['2']['by_kind']
  assert set(kinds) == {'1 data missing, 1 of 2 parities in', '2 data missing, 2 of 2 parities in'}
  # 8 patterns with one decoded output, 6 with two: the mean over decoded outputs is the mix.
  mix = (8 * kinds['1 data missing, 1 of 2 parities in'] +
         12 * kinds['2 data missing, 2 of 2 parities in']) / 20
  assert by_missing['2']['A_d_top1'] == pytest.approx(mix)
  from pmjax.bench import code_table as bench_codes
  row = bench_codes.parity_row(w)
  assert row['A_d_by_missing'][2] == by_missing['2']['A_d_top1']
  assert row['encode_us_per_group'] > 0 and row['decode_us_per_group'] > 0


@pytest.mark.slow
def test_codes_bench_berrut_rows(base_dir):
  from pmjax.bench import code_table as bench_codes
  for systematic in (False, True):
    row = bench_codes.berrut_row(base_dir, 4, 1, systematic, batch=50)
    assert row['r'] == (5 if not systematic else 1) and row['groups'] == 50
    assert 0.0 <= row['A_d_by_missing'][1] <= 1.0 and row['extra_compute_per_query'] == 0.25
    if systematic:
      assert row['acc_none_missing'] == row['A_a']   # nothing missing: F's own answers
  assert '| berrut |' in bench_codes.markdown([bench_codes.berrut_row(base_dir, 4, 1, False, 50)])
  soft = bench_codes.berrut_row(base_dir, 4, 1, False, 50, outputs='softmax')
  assert soft['code'] == 'berrut (softmax)' and 0.0 <= soft['A_d_by_missing'][1] <= 1.0
  second = bench_codes.berrut_row(base_dir, 4, 1, False, 50, nodes='second_kind')
  assert second['code'] == 'berrut [second_kind nodes]'
  assert 0.0 <= second['A_d_by_missing'][1] <= 1.0
  # ApproxIFER's protocol: random groups, S random stragglers each (S = 2 of 6 here).
  auth = bench_codes.berrut_row(base_dir, 4, 2, False, 50, protocol='authors', groups=30)
  assert auth['groups'] == 30 and list(auth['A_d_by_missing']) == [2]
  assert auth['code'] == 'berrut, 30 random groups'
  again = bench_codes.berrut_row(base_dir, 4, 2, False, 50, protocol='authors', groups=30)
  assert again['A_d_by_missing'] == auth['A_d_by_missing']        # seeded
  table = bench_codes.markdown([auth])
  assert table.splitlines()[-1].count('|  |') >= 4                # no A_d(1), no A_o
  with pytest.raises(ValueError, match="scores the non-systematic code"):
    bench_codes.berrut_row(base_dir, 4, 1, True, 50, protocol='authors')
  with pytest.raises(ValueError, match='accepted'):
    bench_codes.berrut_row(base_dir, 4, 1, False, 50, outputs='probs')


@pytest.mark.slow
def test_learned_code_trains_through_frozen_f_and_evaluates(smoke_config, base_dir, tmp_path):
  from pmjax import learned
  c = smoke_config('stage=parity,code=learned,k=2')
  c.base_workdir = base_dir
  w = str(tmp_path / 'learned')
  last = train.train_and_evaluate(c, w)
  assert np.isfinite(last['train_loss'])
  res = evaluate.evaluate_workdir(w, verbose=False)
  assert res['code'] == 'learned' and len(res['A_d_by_position']) == 2
  assert res['A_d_top1'] == pytest.approx(metrics.read_metrics(w)[-1]['test_A_d_top1'], abs=0.02)
  coder = learned.make_coder(2, 1, 10, (28, 28, 1))
  v = learned.init_variables(coder, 0)
  code = learned.make_learned_code(coder, v)
  y = jnp.ones((3, 2, 10))
  out = code.decode(y, jnp.array([[True, False]] * 3), jnp.zeros((3, 1, 10)),
                    jnp.ones((3, 1), bool))
  np.testing.assert_array_equal(out[:, 0], y[:, 0])   # available rows unchanged
  with pytest.raises(ValueError, match='no parity target'):
    code.target(y)
  with pytest.raises(ValueError, match='k >= 2'):
    learned.make_coder(1, 1, 10, (28, 28, 1))


def test_learned_conv_encoder_shapes_and_bad_names():
  from pmjax import learned
  coder = learned.make_coder(3, 2, 10, (28, 28, 1), encoder='conv')
  v = learned.init_variables(coder, 0)
  p = coder.apply(v, jnp.ones((4, 3, 28, 28, 1)), method='encode')
  assert p.shape == (4, 2, 28, 28, 1)
  convs = [k for k in v['params']['conv_encoder'] if k.startswith('Conv')]
  assert len(convs) == 7   # six dilated 3x3 + the 1x1
  with pytest.raises(ValueError, match="accepted: \\['mlp', 'conv'\\]"):
    learned.make_coder(2, 1, 10, (28, 28, 1), encoder='transformer')


@pytest.mark.slow
def test_learned_code_with_trained_parity_model(smoke_config, base_dir, tmp_path):
  """learned_train_parity: a copy of F, started from F's parameters, is trained with the
  coder; F itself is untouched; resuming with the other setting is refused."""
  c = smoke_config('stage=parity,code=learned,k=2')
  c.base_workdir = base_dir
  c.code.train_parity = True
  w = str(tmp_path / 'learned_tp')
  train.train_and_evaluate(c, w)
  _, _, base_vars, _ = runs.load_variables(base_dir)
  _, _, trained, _ = runs.load_variables(w)
  assert set(trained['params']) == {'coder', 'parity'}
  f_kernel = base_vars['params']['Dense_0']['kernel']
  p_kernel = trained['params']['parity']['Dense_0']['kernel']
  assert p_kernel.shape == f_kernel.shape and not np.allclose(p_kernel, f_kernel)
  res = evaluate.evaluate_workdir(w, verbose=False)
  assert 'trained copy of F' in res['parity_model'] and 0.0 <= res['A_d_top1'] <= 1.0
  code = runs.load_code(w)           # the trained encoder/decoder, as a Code
  assert code.name == 'learned' and code.encode(jnp.zeros((2, 2, 28, 28, 1))).shape[:2] == (2, 1)
  from pmjax.bench import code_table as bench_codes
  row = bench_codes.parity_row(w)
  assert row['code'] == 'learned (mlp encoder, mse loss)' and row['decode_us_per_group'] > 0
  with pytest.raises(ValueError, match='load_code'):
    codes.make_code('learned', 2)
  assert res['A_d_top1'] == pytest.approx(metrics.read_metrics(w)[-1]['test_A_d_top1'], abs=0.02)
  # The serving loop runs it: parity instances run the trained copy on learned queries.
  from pmjax.serving import bench as serving_bench, loadgen
  from pmjax.serving.faults import FaultSpec
  parts = serving_bench.make_parts(w)
  np.testing.assert_array_equal(parts.parity_vars[0]['params']['Dense_0']['kernel'], p_kernel)
  fe = serving_bench.build_frontend('coded', 2, parts, {'base0': FaultSpec(fail_at_s=0.2)})
  fe.start()
  splits = parts.splits
  records = loadgen.run_poisson(fe, splits.test_x, splits.test_y, 200, 120, seed=0,
                                timeout_s=10)
  fe.close()
  summary = loadgen.summarize(records)
  assert summary['lost'] == 0 and summary['num_reconstructed'] >= 1
  c.code.train_parity = False
  with pytest.raises(ValueError, match='train_parity=True'):
    train.train_and_evaluate(c, w)
  c.code.train_parity, c.parity_model = True, 'lenet5'
  with pytest.raises(ValueError, match='leave parity_model empty'):
    train.train_and_evaluate(c, str(tmp_path / 'other'))


def _flat_config(config) -> dict:
  """A config as the version before `config.code` was nested wrote it (flat code fields)."""
  d = json.loads(config_utils.to_json(config))
  code = d.pop('code')
  d.update(code=code.pop('name'), k=code.pop('k'), r=code.pop('r'))
  for p in codes.get_code_spec(d['code']).params:
    if p.legacy_field:
      d[p.legacy_field] = code[p.name]
  return d


def test_linear_coefficients_are_part_of_a_runs_identity(tmp_path):
  """A linear run written before `linear_coefficients` existed used Cauchy: resuming it
  with today's default ('auto') is refused; with 'cauchy' it is accepted."""
  from configs import mnist
  c = mnist.get_config('stage=parity,code=linear,k=4,r=2')
  old = _flat_config(c)
  del old['linear_coefficients']
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(old, f)
  assert runs.read_config(str(tmp_path)).code.coefficients == 'cauchy'
  from pmjax.codes import coefficient_matrix
  y = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 10)), jnp.float32)
  cauchy = jnp.einsum('ri,bic->brc', coefficient_matrix(4, 2, 'cauchy'), y)
  np.testing.assert_allclose(runs.make_code(runs.read_config(str(tmp_path))).target(y), cauchy,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="code.coefficients='cauchy'"):
    runs.write_config(str(tmp_path), c)
  c.code.coefficients = 'cauchy'
  runs.write_config(str(tmp_path), c)


def test_a_parity_model_that_cannot_answer_the_code_is_refused_before_training(
    smoke_config, base_dir, tmp_path):
  """collage needs k answers per coded query: a copy of F (C outputs) is refused with
  the fix named, before anything is trained; tiles:mlp trains."""
  from pmjax.config_utils import ConfigError
  c = smoke_config('stage=parity,code=collage,k=2,r=2,epochs=1')
  c.base_workdir = base_dir
  w = str(tmp_path / 'collage')
  with pytest.raises(ConfigError, match=r"outputs 10 numbers per coded query; code "
                     r"'collage' with k=2 trains it towards 20 .*parity_model=tiles:mlp"):
    train.train_and_evaluate(c, w)
  assert not os.path.exists(os.path.join(w, 'checkpoints'))
  c = smoke_config('stage=parity,code=collage,k=2,r=2,epochs=1,parity_model=tiles:mlp')
  c.base_workdir = base_dir
  c.parity.label_weight = 0.5   # collage answers each cell: a true-label term applies
  assert train.train_and_evaluate(c, str(tmp_path / 'tiles'))['epoch'] == 1
  # evaluate names the variant and the label term, so two collage runs are told apart
  res = evaluate.evaluate_workdir(str(tmp_path / 'tiles'), verbose=False)
  assert (res['code_description'], res['label_weight']) == (
      'collage (concat query, per-cell answers)', 0.5)
  assert re.search(r'parity loss +MSE \+ 0.5 x label CE', evaluate.format_table(res))
  c = smoke_config('stage=parity,code=concat,k=2,epochs=1')
  c.base_workdir, c.parity.label_weight = base_dir, 0.5
  with pytest.raises(ConfigError, match=r"label_weight=0.5 .*code 'concat' on 'mnist' does "
                     r"not: set --config.parity.label_weight=0"):
    train.train_and_evaluate(c, str(tmp_path / 'concat'))
  c.parity.label_weight = float('nan')
  with pytest.raises(ConfigError, match='must be a finite number >= 0'):
    train.train_and_evaluate(c, str(tmp_path / 'nan'))
  c = smoke_config('stage=parity,code=learned,k=2,epochs=1')
  c.base_workdir, c.parity.label_weight = base_dir, 1.0
  with pytest.raises(ConfigError, match=r"code 'learned' has its own .*label_weight=0"):
    train.train_and_evaluate(c, str(tmp_path / 'learned'))


def test_parity_loss_label_term_is_the_cross_entropy_of_each_cell():
  """parity_loss with label_weight w: the MSE to the target plus w x the mean
  cross-entropy of every parity model's answer for every cell with that cell's label;
  w = 0 is the MSE alone (and needs no labels)."""
  import optax
  rng = np.random.default_rng(0)
  b, r, k, c = 3, 2, 4, 5
  out = jnp.asarray(rng.normal(size=(b * r, k * c)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(b, r, k * c)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, c, (b, k)), jnp.int32)
  apply_fn = lambda v, x, train: out   # the model's answer, whatever the input
  batch = {'p': jnp.zeros((b, r, 2, 2, 1)), 't': t}
  mse = float(jnp.mean((out.reshape(b, r, -1) - t) ** 2))
  assert float(tasks.parity_loss(apply_fn, {}, {}, batch)[0]) == pytest.approx(mse, rel=1e-6)
  logits = np.asarray(out).reshape(b, r, k, c)
  ce = np.mean([float(optax.softmax_cross_entropy_with_integer_labels(
      logits[i, j, m], labels[i, m])) for i in range(b) for j in range(r) for m in range(k)])
  got = tasks.parity_loss(apply_fn, {}, {}, {**batch, 'label_BxK': labels}, label_weight=0.3)
  assert float(got[0]) == pytest.approx(mse + 0.3 * ce, rel=1e-5)


def test_flip_targets_flip_the_image_and_take_fs_output_on_it():
  """config.data.flip_targets: each example is flipped at random, and its target is the
  precomputed F(flipped image); unflipped ones keep F(image)."""
  import types
  import jax
  import jax.numpy as jnp
  from pmjax import tasks
  from pmjax.data import pipeline
  rng = np.random.default_rng(0)
  n, k = 64, 2
  raw = rng.integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)
  data = {'train_x': jnp.asarray(raw), 'targets': jnp.arange(n, dtype=jnp.float32)[:, None],
          'targets_flip': -jnp.arange(n, dtype=jnp.float32)[:, None] - 1}
  identity = types.SimpleNamespace(encode=lambda x: x, target=lambda y: y)
  idx = jnp.arange(n).reshape(n // k, k)
  keys = jax.random.split(jax.random.key(3), n).reshape(n // k, k)
  batch = tasks.parity_batch(data, idx, keys, 'mnist', False, identity, None)
  x, t = np.asarray(batch['p']).reshape(n, 28, 28, 1), np.asarray(batch['t']).reshape(n)
  plain = np.asarray(pipeline.normalize(jnp.asarray(raw), 'mnist'))
  flipped = t < 0
  assert 0.25 < flipped.mean() < 0.75
  np.testing.assert_array_equal(t, np.where(flipped, -np.arange(n) - 1, np.arange(n)))
  np.testing.assert_allclose(x[flipped], plain[flipped][:, :, ::-1])
  np.testing.assert_allclose(x[~flipped], plain[~flipped])
