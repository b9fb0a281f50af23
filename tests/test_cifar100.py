"""CIFAR-100: configs/cifar100.py streams the training set; a smoke run of base, parity and
evaluation on a tiny synthetic cifar-100-python.tar.gz; bad archives are named."""

import json
import os
import tarfile

import numpy as np
import pytest

from pmjax import metrics, train
from pmjax.data import builders, pipeline, stream
from tests.conftest import make_synthetic_cifar


@pytest.fixture(scope='module')
def c100_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp('c100_raw')
  make_synthetic_cifar(str(raw / 'cifar-100-python.tar.gz'), 100, 400)
  return str(raw)


def _config(raw, tfds_dir, arg='smoke'):
  from configs import cifar100
  c = cifar100.get_config(arg)
  c.data.update(dict(manual_dir=raw, data_dir=tfds_dir, download=False, test_limit=128))
  c.progress_bar = False
  return c


def test_config_streams_the_original_deep_resnet():
  from configs import cifar100
  c = cifar100.get_config()
  assert (c.model, c.data.name, c.data.pipeline, c.data.augment) == (
      'resnet152', 'cifar100', 'stream', True)
  assert cifar100.get_config('smoke').model == 'resnet8'
  assert cifar100.get_config('smoke,model=vgg11').model == 'vgg11'


def test_canonical_archive_reads_fine_labels(c100_raw, tmp_path):
  c = _config(c100_raw, str(tmp_path / 'tfds'))
  splits = pipeline.load_splits(c.data)
  assert isinstance(splits.train_x, stream.SourceArray)     # streamed, not on device
  assert splits.train_x.shape == (400 - 128, 32, 32, 3) and splits.test_x.shape[0] == 128
  with tarfile.open(os.path.join(c100_raw, 'cifar-100-python.tar.gz')) as tar:
    names = sorted(m.name for m in tar.getmembers())
  assert names == ['cifar-100-python/meta', 'cifar-100-python/test', 'cifar-100-python/train']
  raw = builders.read_raw('cifar100', c100_raw, download=False)
  np.testing.assert_array_equal(splits.test_y, raw['test'][1][:128])
  assert raw['train'][1].max() > 20      # fine (100-class) labels, not the 20 coarse ones


@pytest.mark.slow
def test_cifar100_smoke_base_parity_evaluate_streamed(c100_raw, tmp_path):
  """base -> concat k=2 parity -> evaluation, both stages streamed, 100 classes (an mlp F:
  the CIFAR conv path is launch/gpu_check.sh's CPU mode in tests/test_entry_points.py)."""
  w = str(tmp_path / 'w')
  res = train.train_and_evaluate(_config(c100_raw, str(tmp_path / 'tfds'),
                                        'smoke,model=mlp,base_epochs=1,epochs=1'), w)
  for stage in ('base', 'parity'):
    rows = metrics.read_metrics(os.path.join(w, stage))
    assert len(rows) == 1
    assert np.isfinite(rows[0]['train_loss']) and rows[0]['input_wait_s'] >= 0   # streamed
  with open(os.path.join(w, 'results.json')) as f:
    saved = json.load(f)
  assert saved['A_d_top1'] == res['A_d_top1'] and len(saved['A_d_by_position']) == 2
  assert 0.0 <= saved['A_d_top1'] <= saved['A_d_top5'] <= 1.0


def test_truncated_or_incomplete_archive_is_named(tmp_path):
  full = make_synthetic_cifar(str(tmp_path / 'full.tar.gz'), 100, 50)
  data = open(full, 'rb').read()
  (tmp_path / 'cut').mkdir()
  (tmp_path / 'cut' / 'cifar-100-python.tar.gz').write_bytes(data[:len(data) // 2])
  with pytest.raises(builders.RawFileError, match='cifar-100-python.tar.gz is corrupt'):
    builders.read_raw('cifar100', str(tmp_path / 'cut'), download=False)
  (tmp_path / 'no_test').mkdir()
  with tarfile.open(full) as src, \
      tarfile.open(tmp_path / 'no_test' / 'cifar-100-python.tar.gz', 'w:gz') as dst:
    for m in src.getmembers():
      if not m.name.endswith('/test'):
        dst.addfile(m, src.extractfile(m))
  with pytest.raises(builders.RawFileError, match="archive has no member 'test'"):
    builders.read_raw('cifar100', str(tmp_path / 'no_test'), download=False)
