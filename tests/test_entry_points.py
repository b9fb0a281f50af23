"""Every documented command runs to completion on a tiny run (not just --help).

`python -m pmjax.train` and `pmjax.evaluate` are run by tests/test_train.py and
tests/test_checkpoints.py, `launch/sweep.py` by tests/test_sweep.py and
`launch/local_multiprocess.py` by tests/test_multiprocess.py; the others are
here, run side by side (two at a time) on one small base + parity run.
`launch/torch_parity_step.py` needs PyTorch and runs only where it is installed.
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pmjax import metrics, runs, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(os.path.dirname(REPO), 'shared', 'reference', 'parm_pytorch_cpu.md')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, mnist_dir, tfds_dir):
  """W/base and W/parity (sum, k=2) of a stage=all smoke run, evaluated."""
  from tests.conftest import synthetic_config
  c = synthetic_config('code=sum', mnist_dir, tfds_dir, train_limit=256, test_limit=100)
  w = str(tmp_path_factory.mktemp('tiny'))
  train.train_and_evaluate(c, w)
  return w


@pytest.fixture(scope='module')
def tiny_collage(tiny_run, mnist_dir, tfds_dir):
  """A collage k=2, r=2 parity run (tiles:mlp) on tiny_run's F, evaluated."""
  from tests.conftest import synthetic_config
  from pmjax import evaluate
  c = synthetic_config('stage=parity,code=collage,k=2,r=2,parity_model=tiles:mlp', mnist_dir,
                       tfds_dir, train_limit=256, test_limit=100)
  c.base_workdir = os.path.join(tiny_run, 'base')
  w = os.path.join(tiny_run, 'collage')
  train.train_and_evaluate(c, w)
  evaluate.evaluate_workdir(w, verbose=False)
  return w


def _run(cmd):
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_every_other_entry_point_runs(tiny_run, tiny_collage, tmp_path):
  base, parity = os.path.join(tiny_run, 'base'), os.path.join(tiny_run, 'parity')
  py = sys.executable
  commands = {
      'bench.train_throughput': [py, '-m', 'pmjax.bench.train_throughput', '--epochs=1',
                                 '--train_limit=1024'],
      'bench.codec_cost': [py, '-m', 'pmjax.bench.codec_cost', '--models=mlp', '--calls=5'],
      'bench.input_pipeline': [py, '-m', 'pmjax.bench.input_pipeline', '--dataset=mnist',
                               '--threads=1,2', '--examples=512', '--jpeg_examples=16',
                               '--train_limit=512', '--model=mlp', '--batch=64',
                               '--rss_gb=0.002', '--rss_examples=256',
                               f'--scratch={tmp_path}'],
      'bench.code_table': [py, '-m', 'pmjax.bench.code_table', f'--base_workdirs={base}', '--k=2',
                      '--s=1', f'--parity_workdirs={parity},{tiny_collage}',
                      f'--out={tmp_path / "codes"}'],
      'bench.goal_table': [py, '-m', 'pmjax.bench.goal_table', f'--base_workdirs={base}',
                           '--k=2', '--s=1,2', f'--parity_workdirs={tiny_collage},{parity}',
                           '--authors_groups=20', f'--out={tmp_path / "goal"}'],
      'bench.byzantine': [py, '-m', 'pmjax.bench.byzantine', f'--base_workdir={base}', '--k=2',
                          f'--parity_workdirs={tiny_collage}', '--groups=20',
                          '--false_alarm=0.1', f'--out={tmp_path / "byzantine"}'],
      'serving.bench (verify)': [py, '-m', 'pmjax.serving.bench', '--config=configs/serving.py:smoke',
                                 f'--config.workdir={tiny_collage}', '--config.modes=coded',
                                 '--config.policy.verify=True', '--config.false_alarm=0.1',
                                 '--config.faults.wrong_instances=base1',
                                 '--config.faults.wrong_prob=1.0',
                                 '--config.deadline_ms=2000',
                                 f'--config.out={tmp_path / "serving_verify"}'],
      'serving.bench': [py, '-m', 'pmjax.serving.bench', '--config=configs/serving.py:smoke',
                        f'--config.workdir={parity}', '--config.modes=coded,equal',
                        '--config.deadline_ms=2000', f'--config.out={tmp_path / "serving"}'],
      'serving.bench (sweep)': [py, '-m', 'pmjax.serving.bench',
                                '--config=configs/serving.py:smoke',
                                f'--config.workdir={parity}', '--config.modes=coded,equal',
                                '--config.rates=200,100', '--config.seconds_per_rate=0',
                                '--config.queries=30', '--config.warmup=5',
                                f'--config.out={tmp_path / "serving_sweep"}'],
      'serving.sim': [py, '-m', 'pmjax.serving.sim', '--config=configs/sim.py:smoke',
                      f'--config.out={tmp_path / "sim"}'],
      'launch/epoch_stats.py': [py, 'launch/epoch_stats.py', base, parity],
  }
  if os.path.exists(REFERENCE):
    commands['launch/compare_reference.py'] = [py, 'launch/compare_reference.py',
                                               f'A={parity}']
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = dict(zip(commands, pool.map(_run, commands.values())))
  for name, out in results.items():
    assert out.returncode == 0, f'{name} failed:\n{out.stderr[-3000:]}'
  assert json.loads(results['bench.train_throughput'].stdout.splitlines()[0])[
      'train_groups_per_s'] > 0
  assert os.path.exists(tmp_path / 'codes' / 'codes.md')
  byz = json.load(open(tmp_path / 'byzantine' / 'byzantine.json'))
  assert {r['adversary'] for r in byz} == {'none', 'noise', 'random', 'scaled'}
  assert {r['code'].split()[0].rstrip(',') for r in byz} == {'berrut', 'collage'}
  verify = json.load(open(tmp_path / 'serving_verify' / 'summary.json'))['results']['coded']
  assert verify['verified_groups'] > 0 and verify['flagged_groups'] > 0
  assert verify['lost'] == 0
  goal = json.load(open(tmp_path / 'goal' / 'goal.json'))
  assert os.path.getsize(tmp_path / 'goal' / 'goal_curves.png') > 1000
  # The collage run serves S = 1 (its first parity model) and S = 2; the sum run (r = 1)
  # S = 1 too (its own code at r = 1).
  ours = [(r['S'], r['code'].split()[0]) for r in goal if r.get('code')]
  assert sorted(ours) == [(1, 'collage'), (1, 'sum'), (2, 'collage')]
  assert all(0 < r['flops_ratio_per_extra_worker'] for r in goal if r.get('code'))
  assert all(r['query_size_ratio'] == 1.0 for r in goal if r.get('code'))  # 'fit' cells
  assert all(r['label_weight'] == 0.0 for r in goal if r.get('code'))   # MSE only
  from pmjax.bench import goal_table
  row = next(r for r in goal if r.get('code'))
  assert '; + 1 x label CE) |' in goal_table.markdown([dict(row, label_weight=1.0)])
  assert 'label CE' not in goal_table.markdown(goal)
  summary = json.load(open(tmp_path / 'serving' / 'summary.json'))
  assert summary['results']['coded']['lost'] == 0
  assert 'base_service_ms_samples' not in summary['results']['coded']  # raw samples apart
  assert summary['results']['coded']['gc_pauses_over_2ms'] >= 0   # the collector's stalls
  swept = json.load(open(tmp_path / 'serving_sweep' / 'curves.json'))
  assert [c['offered_qps'] for c in swept['coded']['curve']] == [100, 200]
  assert all(c['answered'] == 30 and c['lost'] == 0 and c['sent_qps'] > 0
             for m in ('coded', 'equal') for c in swept[m]['curve'])
  assert [r['offered_qps'] for r in swept['coded']['versus_equal']] == [100, 200]
  assert os.path.getsize(tmp_path / 'serving_sweep' / 'curves.png') > 1000
  again = _run([sys.executable, '-m', 'pmjax.serving.curves', str(tmp_path / 'serving_sweep')])
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'saturation coded' in again.stdout and '| coded / equal p99.9 |' in again.stdout
  from pmjax.serving import sim
  assert len(sim.service_samples_ms(str(tmp_path / 'serving' / 'summary.json'))) > 10
  assert os.path.exists(tmp_path / 'sim' / 'sim.json')
  assert 'parity' in results['launch/epoch_stats.py'].stdout
  rows = [json.loads(line) for line in results['bench.input_pipeline'].stdout.splitlines()
          if line.startswith('{')]
  assert {r['measure'] for r in rows} == {'read', 'train_wait', 'rss'}
  assert all(r['examples_per_s'] > 0 for r in rows if r['measure'] != 'train_wait')


@pytest.mark.slow
def test_torch_reference_step_where_torch_is_installed():
  pytest.importorskip('torch')
  out = subprocess.run([sys.executable, 'launch/torch_parity_step.py', '--epochs=1',
                        '--examples=4096'], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and 'bare_step_groups_per_s' in out.stdout


@pytest.mark.slow
def test_gpu_check_tiny_mode_on_cpu(tmp_path):
  """launch/gpu_check.sh's CPU mode (TINY=1): the same stages and final line as on a GPU.
  Its runs are also the suite's CIFAR path: a resnet8 F (conv + batch norm) and a concat
  k=2 parity model trained with the on-device crop/flip, F computed inside the step."""
  from tests.conftest import make_synthetic_cifar
  raw = tmp_path / 'raw'
  raw.mkdir()
  make_synthetic_cifar(str(raw / 'cifar-10-python.tar.gz'), 10, 64)
  env = {**os.environ, 'TINY': '1', 'DATA_DIR': str(raw), 'TFDS_DIR': str(tmp_path / 'tfds')}
  out = subprocess.run(['bash', 'launch/gpu_check.sh', str(tmp_path / 'run')], cwd=REPO,
                       capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  last = out.stdout.strip().splitlines()[-1]
  assert last.startswith('GPU check on cpu') and 'TFLOP/s' in last and 'A_d' in last, last
  assert 'nan' not in last
  parity = str(tmp_path / 'run' / 'concat_k2')
  assert runs.read_config(parity).data.augment
  res = json.load(open(os.path.join(parity, 'results.json')))
  assert res['A_d_by_position'] and 0.0 <= res['A_d_top1'] <= 1.0
  for w in (str(tmp_path / 'run' / 'base'), parity):
    variables = runs.load_variables(w)[2]
    assert any(np.size(v) for v in jax.tree.leaves(variables['batch_stats']))  # saved
    assert all(np.isfinite(r['train_loss']) for r in metrics.read_metrics(w))


@pytest.mark.slow
def test_side_by_side_table(tmp_path):
  """launch/throughput_side_by_side.sh: pmjax's rows always; PyTorch's where installed."""
  # One row: the parity steps' pmjax bench runs in the GPU check's CPU mode above, their
  # PyTorch twin in test_torch_twin_of_the_collage_step_where_torch_is_installed.
  rows = 'lenet5 F (MNIST)'
  out = subprocess.run(['bash', 'launch/throughput_side_by_side.sh', f'--rows={rows}',
                        '--steps_per_call=1', '--calls=1', f'--json={tmp_path / "t.json"}'],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'SKIP_MLP': '1'})
  assert out.returncode == 0, out.stderr[-3000:]
  table = json.load(open(tmp_path / 't.json'))['rows']
  assert {r['name'] for r in table} == set(rows.split(','))
  assert all(r['per_s'] > 0 and r['gflops_per_s'] > 0 for r in table)
  has_torch = any(r['impl'].startswith('PyTorch') for r in table)
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    assert has_torch and '| pmjax |' in out.stdout and 'x |' in out.stdout
  except ImportError:
    assert not has_torch and 'PyTorch columns are skipped' in out.stdout


@pytest.mark.slow
def test_torch_twin_of_the_collage_step_where_torch_is_installed():
  pytest.importorskip('torch')
  out = subprocess.run([sys.executable, 'launch/torch_train_step.py', '--stage=parity',
                        '--code=collage', '--k=8', '--r=3', '--parity_model=tiles:resnet8', '--grid=2x4',
                        '--batch=4', '--steps=1', '--repeats=1'], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout)['per_s'] > 0


def test_every_launch_shell_script_parses():
  """launch/*.sh and *.sbatch that no test runs (hours-long sweeps, cluster jobs) at least
  parse: a syntax slip in one is found here, not by the user who launches it."""
  launch = os.path.join(REPO, 'launch')
  scripts = sorted(f for f in os.listdir(launch) if f.endswith(('.sh', '.sbatch')))
  assert 'serving_curves_inprocess.sh' in scripts
  for name in scripts:
    out = subprocess.run(['bash', '-n', os.path.join(launch, name)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f'{name}: {out.stderr}'
