"""The streaming input path computes what the in-memory path computes, and resumes exactly."""

import jax
import numpy as np
import pytest

from pmjax import checkpoint, metrics, train
from pmjax.data import pipeline, stream


def _params(workdir):
  ck = checkpoint.Checkpoints(workdir, create=False)
  tree = ck.restore('latest', None)
  ck.close()
  return jax.device_get(tree['params'])


def _assert_equal_trees(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def runs_by_pipeline(tmp_path_factory, mnist_dir, tfds_dir):
  """A base run and a parity run on it, each trained in memory and streamed (2 devices)."""
  root = tmp_path_factory.mktemp('stream')
  out = {'epochs_streamed': []}
  read_epoch = stream.ChunkReader.epoch

  def counted(self, perm, plan):
    out['epochs_streamed'].append(len(plan))
    yield from read_epoch(self, perm, plan)

  stream.ChunkReader.epoch = counted
  try:
    _train_both(out, root, mnist_dir, tfds_dir)
  finally:
    stream.ChunkReader.epoch = read_epoch
  return out


def _train_both(out, root, mnist_dir, tfds_dir):
  from tests.conftest import synthetic_config
  for pipe in ('device', 'stream'):
    c = synthetic_config('stage=base,base_epochs=2', mnist_dir, tfds_dir)
    c.data.pipeline = pipe
    base = str(root / f'base_{pipe}')
    train.train_and_evaluate(c, base)
    c = synthetic_config('stage=parity,code=concat,k=2,epochs=2', mnist_dir, tfds_dir)
    c.data.pipeline, c.base_workdir = pipe, str(root / 'base_device')
    parity = str(root / f'parity_{pipe}')
    train.train_and_evaluate(c, parity)
    out[pipe] = (base, parity)


@pytest.mark.slow
def test_streamed_training_equals_in_memory_training(runs_by_pipeline):
  assert len(jax.devices()) == 2   # each device reads only its own slices
  assert len(runs_by_pipeline['epochs_streamed']) == 4   # 2 base + 2 parity epochs read
  for d, s in zip(runs_by_pipeline['device'], runs_by_pipeline['stream']):
    _assert_equal_trees(_params(d), _params(s))
    a, b = metrics.read_metrics(d), metrics.read_metrics(s)
    for ra, rb in zip(a, b):
      assert ra['train_loss'] == rb['train_loss']
      assert {k: v for k, v in ra.items() if k.startswith(('val_', 'test_'))} == \
          {k: v for k, v in rb.items() if k.startswith(('val_', 'test_'))}


@pytest.mark.slow
def test_streamed_run_resumes_exactly_and_may_switch_pipelines(runs_by_pipeline, smoke_config,
                                                               tmp_path):
  """Stopped after epoch 1 (as a kill mid-epoch 2 would leave it), resumed streamed: the
  same parameters as the uninterrupted runs; the pipeline is not part of the identity."""
  c = smoke_config('stage=parity,code=concat,k=2,epochs=2')
  c.base_workdir = runs_by_pipeline['device'][0]
  c.data.pipeline, c.stop_after_epochs = 'device', 1
  w = str(tmp_path / 'resumed')
  assert train.train_and_evaluate(c, w)['epoch'] == 1
  c.data.pipeline, c.stop_after_epochs = 'stream', 0
  assert train.train_and_evaluate(c, w)['epoch'] == 2
  _assert_equal_trees(_params(w), _params(runs_by_pipeline['stream'][1]))


def test_stream_choice_and_lazy_training_set(smoke_config):
  c = smoke_config('stage=base')
  c.data.pipeline = 'auto'
  c.data.device_limit_mb = 0          # anything is above the limit: streamed
  splits = pipeline.load_splits(c.data)
  assert isinstance(splits.train_x, stream.SourceArray)
  assert splits.train_x.shape == (512, 28, 28, 1) and splits.train_y.shape == (512,)
  c.data.pipeline = 'device'
  whole = pipeline.load_splits(c.data)
  np.testing.assert_array_equal(splits.train_x[10:20], whole.train_x[10:20])
  np.testing.assert_array_equal(splits.train_y[[3, 1, 2]], whole.train_y[[3, 1, 2]])
  np.testing.assert_array_equal(splits.val_x, whole.val_x)
  with pytest.raises(TypeError, match='not loaded whole'):
    np.asarray(splits.train_x)
  with pytest.raises(IndexError, match=r'\[0, 512\)'):
    splits.train_x[[512]]
  c.data.pipeline = 'disk'
  with pytest.raises(ValueError, match="data.pipeline='disk' is unknown"):
    pipeline.load_splits(c.data)
