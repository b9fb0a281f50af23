"""launch/sweep.py: base once, parity on it, skip complete runs, summary table and plots."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sweep_runs_skips_and_summarises(tmp_path, mnist_dir, tfds_dir):
  root = str(tmp_path / 'grid')
  cmd = [sys.executable, 'launch/sweep.py', f'--root={root}', '--datasets=mnist',
         '--models=mlp', '--ks=2', '--codes=sum', '--epochs=2', '--base_epochs=2', '--',
         '--config.smoke=True', f'--config.data.manual_dir={mnist_dir}',
         f'--config.data.data_dir={tfds_dir}', '--config.data.download=False',
         '--config.data.verify_md5=False', '--config.data.num_val=100',
         '--config.data.train_limit=256', '--config.data.test_limit=100',
         '--config.base.batch_size=32', '--config.parity.batch_size=16',
         '--config.steps_per_call=4', '--config.eval_batch_size=100']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'run: ' in out.stdout
  with open(os.path.join(root, 'summary.json')) as f:
    rows = json.load(f)
  assert sorted(r['workdir'] for r in rows) == ['mnist/mlp/base', 'mnist/mlp/sum_k2']
  assert '| mnist | mlp | sum | 2 | 2 |' in open(os.path.join(root, 'summary.md')).read()
  for name in ('ad_vs_k.png', 'ao_vs_fu.png', 'training_curves.png'):
    assert os.path.getsize(os.path.join(root, 'plots', name)) > 1000
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and again.stdout.count('skip (complete)') == 2
