"""Two JAX processes on this machine (gloo, loopback) train to the same parameters as one."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pmjax import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_args(workdir, mnist_dir, tfds_dir):
  return [sys.executable, '-m', 'pmjax.train', '--config=configs/mnist.py:smoke,stage=base',
          f'--workdir={workdir}', '--config.progress_bar=False',
          f'--config.data.manual_dir={mnist_dir}', f'--config.data.data_dir={tfds_dir}',
          '--config.data.download=False', '--config.data.verify_md5=False',
          '--config.data.num_val=100', '--config.data.train_limit=512',
          '--config.data.test_limit=200',
          # SGD is linear in the gradient, so the comparison can be tight.
          '--config.base.optim.name=sgd', '--config.base.optim.lr=0.05']


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, mnist_dir, tfds_dir):
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  env = {k: v for k, v in os.environ.items() if not k.startswith('PMJAX_')}
  r1 = subprocess.run(_train_args(one, mnist_dir, tfds_dir), cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=300)
  assert r1.returncode == 0, r1.stderr[-3000:]
  r2 = subprocess.run([sys.executable, 'launch/local_multiprocess.py', '--num_processes=2',
                       '--timeout_s=240', '--'] + _train_args(two, mnist_dir, tfds_dir),
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert 'peer ranks' in r2.stdout + r2.stderr  # gloo connected: really two processes
  p1 = runs.load_variables(one, 'latest')[2]['params']
  p2 = runs.load_variables(two, 'latest')[2]['params']
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # One process wrote the metrics: one row per epoch.
  with open(os.path.join(two, 'metrics.jsonl')) as f:
    assert len(f.readlines()) == 2
  # Streamed (pmjax.data.stream): each process reads only its own device's examples.
  streamed = str(tmp_path / 'two_streamed')
  r3 = subprocess.run([sys.executable, 'launch/local_multiprocess.py', '--num_processes=2',
                       '--timeout_s=240', '--'] + _train_args(streamed, mnist_dir, tfds_dir) +
                      ['--config.data.pipeline=stream'],
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r3.returncode == 0, r3.stderr[-3000:]
  p3 = runs.load_variables(streamed, 'latest')[2]['params']
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
