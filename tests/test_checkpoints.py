"""Checkpoints and workdirs under kills, corruption, changed configs and bad input."""

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from pmjax import checkpoint, config_utils, evaluate, metrics, runs, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ('train_time_s', 'groups_per_s', 'input_wait_s')

# Runs a training in a fresh process and SIGKILLs it at one point of epoch EPOCH's
# checkpoint write (as `kill -9` would): inside the orbax write of best or latest
# (the step is in its temporary directory), or between the saves; or, for a streamed
# run, mid-epoch: after the epoch's first call of steps, its reader threads ahead.
KILLER = r'''
import asyncio, os, signal, sys
import jax
jax.config.update('jax_num_cpu_devices', 2)
jax.config.update('jax_platforms', 'cpu')
sys.path.insert(0, sys.argv[1])
from orbax.checkpoint._src.path import atomicity
from pmjax import checkpoint, config_utils, metrics, train
point, epoch, config_path, workdir = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]

def die():
  os.kill(os.getpid(), signal.SIGKILL)

for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
  def patch(orig):
    async def finalize(self, *a, **kw):
      final = str(self.get_final())
      if final.endswith(f'/{point.split("_")[0]}/{epoch}'):
        die()
      return await orig(self, *a, **kw)
    return finalize
  cls.finalize = patch(cls.finalize)

write_row, save = metrics.MetricWriter.write, checkpoint.Checkpoints.save
def row(self, e, m):
  if point == 'before_row' and e == epoch:
    die()
  return write_row(self, e, m)
def ckpt(self, which, tree):
  if point == 'before_latest' and which == 'latest' and int(tree['epoch']) == epoch:
    die()
  return save(self, which, tree)
metrics.MetricWriter.write, checkpoint.Checkpoints.save = row, ckpt

from pmjax.data import stream
epochs_read, next_chunk = [], stream.Prefetch.__next__
def chunk(self):
  if not epochs_read or epochs_read[-1][0] is not self:
    epochs_read.append([self, 0])
  epochs_read[-1][1] += 1
  if point == 'stream_mid_epoch' and len(epochs_read) == epoch and epochs_read[-1][1] == 2:
    die()
  return next_chunk(self)
stream.Prefetch.__next__ = chunk
with open(config_path) as f:
  config = config_utils.from_json(f.read())
train.train_and_evaluate(config, workdir)
'''


def _run_killed(config, workdir, point, epoch, tmp_path):
  path = tmp_path / 'config.json'
  path.write_text(config_utils.to_json(config))
  script = tmp_path / 'killer.py'
  script.write_text(KILLER)
  out = subprocess.run([sys.executable, str(script), REPO, point, str(epoch), str(path),
                        workdir], capture_output=True, text=True, timeout=300)
  assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]


def _tree(workdir, which):
  ck = checkpoint.Checkpoints(workdir, create=False)
  try:
    return ck.steps(which), ck.restore(which, None)
  finally:
    ck.close()


def _assert_same_run(a, b):
  """Bitwise-equal latest and best checkpoints and the same metrics rows."""
  for which in ('latest', 'best'):
    (steps_a, ta), (steps_b, tb) = _tree(a, which), _tree(b, which)
    assert steps_a == steps_b, which
    for key in ('params', 'batch_stats', 'opt_state', 'step', 'epoch', 'best_metric',
                'best_epoch'):
      for x, y in zip(_leaves(ta[key]), _leaves(tb[key])):
        np.testing.assert_array_equal(x, y)
  rows_a = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics.read_metrics(a)]
  rows_b = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics.read_metrics(b)]
  assert rows_a == rows_b


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _set(config, dotted, value):
  *parts, name = dotted.split('.')
  for part in parts:
    config = config[part]
  config[name] = value


def _base_config(mnist_dir, tfds_dir):
  from tests.conftest import synthetic_config
  c = synthetic_config('stage=base,base_epochs=3', mnist_dir, tfds_dir, train_limit=256)
  c.base.optim.lr = 1e-4  # slow enough that each epoch is a new best
  return c


@pytest.fixture
def base_config(mnist_dir, tfds_dir):
  return lambda: _base_config(mnist_dir, tfds_dir)


@pytest.fixture(scope='module')
def uninterrupted(mnist_dir, tfds_dir, tmp_path_factory):
  """The uninterrupted run the others are compared with (read only)."""
  w = str(tmp_path_factory.mktemp('full'))
  train.train_and_evaluate(_base_config(mnist_dir, tfds_dir), w)
  return w


@pytest.mark.parametrize('point', ['best_write', 'before_row', 'before_latest',
                                   'latest_write'])
@pytest.mark.slow
def test_kill_during_checkpoint_write_resumes_bitwise(point, base_config, uninterrupted,
                                                      tmp_path, capsys):
  best_epoch = int(_tree(uninterrupted, 'best')[1]['epoch'])
  val = [r['val_A_a'] for r in metrics.read_metrics(uninterrupted)]
  assert val[1] > val[0] and best_epoch == 3  # epoch 2 writes best: a kill can hit it
  epoch = 2
  w = str(tmp_path / 'w')
  _run_killed(base_config(), w, point, epoch, tmp_path)
  if point.endswith('_write'):
    assert glob.glob(os.path.join(w, 'checkpoints', '*', f'*{checkpoint.TMP_MARKER}*'))
  train.train_and_evaluate(base_config(), w)   # the same command again
  if point.endswith('_write'):
    assert 'left by an interrupted checkpoint save' in capsys.readouterr().out
  assert not glob.glob(os.path.join(w, 'checkpoints', '*', f'*{checkpoint.TMP_MARKER}*'))
  assert [r['epoch'] for r in metrics.read_metrics(w)] == [1, 2, 3]
  _assert_same_run(uninterrupted, w)
  assert evaluate.evaluate_workdir(w, verbose=False)['best_epoch'] == best_epoch


@pytest.mark.slow
def test_streamed_run_killed_mid_epoch_resumes_bitwise(base_config, tmp_path):
  """kill -9 after the first of epoch 2's two calls of a streamed run: the same command
  resumes from epoch 1's checkpoint, re-reads epoch 2 from its start and ends bitwise
  equal to an uninterrupted streamed run."""
  c = base_config()
  c.data.pipeline, c.steps_per_call = 'stream', 2    # 4 steps per epoch: 2 calls
  full = str(tmp_path / 'full')
  train.train_and_evaluate(c, full)
  assert all('input_wait_s' in r for r in metrics.read_metrics(full))   # streamed
  w = str(tmp_path / 'w')
  _run_killed(c, w, 'stream_mid_epoch', 2, tmp_path)
  assert [r['epoch'] for r in metrics.read_metrics(w)] == [1]
  assert train.train_and_evaluate(c, w)['epoch'] == 3
  _assert_same_run(full, w)


def _flip(step_dir):
  """Inverts 4 KiB in the middle of the step's largest data file."""
  files = [f for f in glob.glob(os.path.join(step_dir, '**', '*'), recursive=True)
           if os.path.isfile(f) and '/d/' in f]
  path = max(files, key=os.path.getsize)
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    lo = max(0, len(data) // 2 - 2048)
    for i in range(lo, min(len(data), lo + 4096)):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


@pytest.mark.slow
def test_corrupt_checkpoint_is_detected_and_latest_falls_back(base_config, uninterrupted,
                                                              tmp_path, capsys):
  import shutil
  w = str(tmp_path / 'w')
  c = base_config()
  c.stop_after_epochs = 2
  train.train_and_evaluate(c, w)
  shutil.copytree(w, str(tmp_path / 'copy'))
  # A flipped best: evaluate refuses in one clear line instead of reporting wrong numbers.
  best_step = _tree(w, 'best')[0][-1]
  _flip(os.path.join(w, 'checkpoints', 'best', str(best_step)))
  with pytest.raises(checkpoint.CheckpointError, match=f'best checkpoint .*/best/{best_step}'
                     r'.*(corrupt|cannot read)'):
    evaluate.evaluate_workdir(w, verbose=False)
  # The command line: one line, exit 1.
  out = subprocess.run([sys.executable, '-m', 'pmjax.evaluate', f'--workdir={w}'], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'Traceback' not in out.stderr
  # A flipped latest: the resumed run says so, falls back to the previous latest and
  # ends exactly as an uninterrupted run (the best is re-saved by the re-run epoch).
  w = str(tmp_path / 'copy')
  _flip(os.path.join(w, 'checkpoints', 'latest', '2'))
  train.train_and_evaluate(base_config(), w)
  out = capsys.readouterr().out
  assert 'latest checkpoint' in out and 'using the latest checkpoint of epoch 1' in out
  assert os.listdir(os.path.join(w, 'checkpoints', 'corrupt'))  # kept, not deleted
  _assert_same_run(uninterrupted, w)


def test_checksum_covers_every_array():
  tree = {'params': {'w': np.arange(4, dtype=np.float32)}, 'epoch': np.int64(3)}
  a = checkpoint.tree_checksum(tree)
  tree['params']['w'][2] = np.nextafter(np.float32(2), np.float32(3))
  assert not np.array_equal(a, checkpoint.tree_checksum(tree))
  tree['params']['w'][2] = 2
  assert np.array_equal(a, checkpoint.tree_checksum({**tree, 'checksum': a}))


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_tmp(base_config, tmp_path,
                                                                  monkeypatch):
  import errno
  import orbax.checkpoint as ocp
  w = str(tmp_path / 'w')
  c = base_config()
  c.stop_after_epochs = 1
  train.train_and_evaluate(c, w)
  real = ocp.CheckpointManager.save

  def disk_full(self, step, *a, **kw):
    os.makedirs(os.path.join(str(self.directory), f'{step}{checkpoint.TMP_MARKER}-1'))
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full)
  with pytest.raises(checkpoint.CheckpointError,
                     match='No space left on device.*previous checkpoints are kept'):
    train.train_and_evaluate(base_config(), w)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real)
  assert not glob.glob(os.path.join(w, 'checkpoints', '*', f'*{checkpoint.TMP_MARKER}*'))
  assert _tree(w, 'latest')[0] == [1]


def test_parity_run_is_not_accepted_as_base_model(smoke_config, base_config, tmp_path):
  base = str(tmp_path / 'base')
  c = base_config()
  c.base.num_epochs = 1
  train.train_and_evaluate(c, base)
  parity = str(tmp_path / 'parity')
  c = smoke_config('stage=parity,epochs=1')
  c.base_workdir = base
  train.train_and_evaluate(c, parity)
  c = smoke_config('stage=parity,epochs=1')
  c.base_workdir = parity
  with pytest.raises(ValueError, match="holds a 'parity' run, not a trained base model"):
    train.train_and_evaluate(c, str(tmp_path / 'p2'))
  assert not os.path.exists(tmp_path / 'p2' / 'config.json')  # the fixed command may run
  c.base_workdir = base
  assert train.train_and_evaluate(c, str(tmp_path / 'p2'))['epoch'] == 1


def test_changed_config_is_refused_or_recorded(base_config, tmp_path, capsys):
  w = str(tmp_path / 'w')
  c = base_config()
  c.stop_after_epochs = 1
  train.train_and_evaluate(c, w)
  for field, value in (('base.optim.lr', 0.01), ('base.batch_size', 16),
                       ('data.num_val', 50), ('data.train_limit', 128),
                       ('base.num_epochs', 5)):  # cosine schedule: epochs change the run
    c = base_config()
    _set(c, field, value)
    with pytest.raises(runs.ConfigMismatchError, match=f'{field}=.*this config: {value}'):
      train.train_and_evaluate(c, w)
  c = base_config()
  c.seed, c.base.optim.lr = 1, 0.01
  with pytest.raises(runs.ConfigMismatchError, match=r'base.optim.lr=.*, seed=0'):
    train.train_and_evaluate(c, w)
  # Fields that cannot change the result may differ; the change is said and recorded.
  c = base_config()
  c.progress_bar, c.eval_batch_size, c.stop_after_epochs = True, 64, 1
  train.train_and_evaluate(c, w)
  assert 'cannot change the result' in capsys.readouterr().out
  # The explicit override continues the run and records what changed.
  c = base_config()
  c.base.optim.lr = 0.002
  train.train_and_evaluate(c, w, allow_config_change=True)
  history = [json.loads(l) for l in open(os.path.join(w, 'config_history.jsonl'))]
  assert history[-1]['changed']['base.optim.lr'] == [1e-4, 0.002]
  assert history[-1]['result_changing'] == ['base.optim.lr']
  assert runs.read_config(w).base.optim.lr == 0.002


def test_more_epochs_at_a_constant_rate_is_the_same_run(smoke_config, tmp_path):
  old = smoke_config('stage=base')
  old.base.optim.schedule = 'constant'
  new = old.copy_and_resolve_references()
  new.base.num_epochs = 10
  changing, neutral = runs.config_differences(old, new)
  assert not changing and 'base.num_epochs' in neutral
  # Fields a stage does not read never block it: a base run ignores the parity recipe.
  new.parity.optim.lr, new.code.k = 0.5, 3
  assert runs.config_differences(old, new)[0] == {}


def test_two_trainings_on_one_workdir(base_config, tmp_path):
  w = str(tmp_path / 'w')
  with runs.WorkdirLock(w):
    with pytest.raises(runs.WorkdirBusyError, match=f'pid {os.getpid()}.*another --workdir'):
      train.train_and_evaluate(base_config(), w)


def test_torn_metrics_line_is_skipped_with_a_warning(base_config, uninterrupted, tmp_path,
                                                     capsys):
  import shutil
  w = str(tmp_path / 'w')
  c = base_config()
  c.stop_after_epochs = 2
  train.train_and_evaluate(c, w)
  with open(os.path.join(w, 'metrics.jsonl'), 'a') as f:
    f.write('{"epoch": 3, "train_lo')
  assert [r['epoch'] for r in metrics.read_metrics(w)] == [1, 2]
  assert 'skipped line 3' in capsys.readouterr().out
  train.train_and_evaluate(base_config(), w)
  assert [r['epoch'] for r in metrics.read_metrics(w)] == [1, 2, 3]
  shutil.rmtree(os.path.join(w, 'tb'))


@pytest.mark.parametrize('field,value,message', [
    ('base.num_epochs', -1, 'base.num_epochs=-1 must be an integer >= 1'),
    ('base.batch_size', -8, 'base.batch_size=-8 must be'),
    ('base.optim.lr', 0.0, 'base.optim.lr=0.0 must be > 0'),
    ('data.train_limit', -1, 'data.train_limit=-1 must be'),
])
def test_invalid_config_is_refused_up_front(base_config, tmp_path, field, value, message):
  c = base_config()
  _set(c, field, value)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(c, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # refused before anything is written


def test_evaluate_read_only_workdir_prints_the_table(uninterrupted, monkeypatch, capsys):
  real_open = open

  def ro_open(path, mode='r', *a, **kw):
    if str(path).endswith('results.json.tmp'):
      raise PermissionError(13, 'Permission denied', str(path))
    return real_open(path, mode, *a, **kw)

  monkeypatch.setattr('builtins.open', ro_open)
  with pytest.raises(evaluate.ResultsNotWrittenError, match='results are printed above'):
    evaluate.evaluate_workdir(uninterrupted)
  assert 'A_a' in capsys.readouterr().out


def test_missing_best_is_restored_from_latest(base_config, uninterrupted, tmp_path, capsys):
  import shutil
  w = str(tmp_path / 'w')
  shutil.copytree(uninterrupted, w)
  shutil.rmtree(os.path.join(w, 'checkpoints', 'best', '3'))
  train.train_and_evaluate(base_config(), w)   # nothing left to train: only the repair
  assert 'best/3 was missing' in capsys.readouterr().out
  _assert_same_run(uninterrupted, w)


def test_checkpoint_from_before_checksums_is_read_with_a_note(tmp_path, capsys):
  """A checkpoint written by an older pmjax (no checksum, no best_epoch) still resumes."""
  import orbax.checkpoint as ocp
  old = {'params': {'w': np.arange(6, dtype=np.float32)}, 'step': np.int32(4),
         'epoch': np.int64(1), 'best_metric': np.float64(0.5)}
  path = tmp_path / 'w' / 'checkpoints' / 'latest'
  path.mkdir(parents=True)
  with ocp.CheckpointManager(str(path), item_handlers=ocp.StandardCheckpointHandler()) as m:
    m.save(1, args=ocp.args.StandardSave(old))
    m.wait_until_finished()
  ck = checkpoint.Checkpoints(str(tmp_path / 'w'))
  abstract = {**old, 'best_epoch': np.int64(0), 'checksum': np.zeros(32, np.uint8)}
  tree = ck.restore('latest', abstract)
  ck.close()
  assert 'best_epoch' not in tree and 'checksum' not in tree
  np.testing.assert_array_equal(tree['params']['w'], old['params']['w'])
  assert 'written before checkpoints carried a checksum' in capsys.readouterr().out


def test_config_written_by_an_earlier_version_is_migrated(base_config, tmp_path):
  """A config.json with a field's old name (log_every_steps) is the same run."""
  c = base_config()
  old = json.loads(config_utils.to_json(c))
  old['log_every_steps'] = old.pop('steps_per_call')
  (tmp_path / 'config.json').write_text(json.dumps(old))
  assert runs.read_config(str(tmp_path)).steps_per_call == c.steps_per_call
  runs.write_config(str(tmp_path), c)   # no mismatch
  c.steps_per_call += 1
  with pytest.raises(runs.ConfigMismatchError, match='steps_per_call'):
    runs.write_config(str(tmp_path), c)
