"""Builders read synthetic canonical raw files; pipeline splits; clear errors."""

import gzip
import os
import shutil

import jax
import numpy as np
import pytest

from pmjax.data import builders, pipeline
from tests.conftest import make_synthetic_cifar


def _read(builder, split):
  ds = builder.as_data_source()[split]
  return ds.__getitems__(list(range(len(ds))))


def test_mnist_builder_round_trip(mnist_dir, tmp_path):
  raw = builders.read_raw('mnist', mnist_dir, download=False, verify_md5=False)
  b = builders.get_builder('mnist', str(tmp_path), mnist_dir, download_raw=False,
                           verify_md5=False)
  records = _read(b, 'train')
  assert len(records) == raw['train'][0].shape[0] == 700
  # Order is kept (validation = the last examples of the canonical order).
  for i in (0, 1, 699):
    np.testing.assert_array_equal(records[i]['image'], raw['train'][0][i])
    assert records[i]['label'] == raw['train'][1][i]
  assert records[0]['image'].shape == (28, 28, 1) and records[0]['image'].dtype == np.uint8


@pytest.mark.parametrize('name,num_classes', [('cifar10', 10), ('cifar100', 100)])
def test_cifar_builders_round_trip(name, num_classes, tmp_path):
  manual = tmp_path / 'raw'
  manual.mkdir()
  archive = builders.get_spec(name).files['archive'].name
  make_synthetic_cifar(str(manual / archive), num_classes)
  b = builders.get_builder(name, str(tmp_path / 'tfds'), str(manual), download_raw=False)
  train, test = _read(b, 'train'), _read(b, 'test')
  assert len(train) == (100 if num_classes == 10 else 20) and len(test) == 20
  raw = builders.read_raw(name, str(manual), download=False)
  np.testing.assert_array_equal(train[5]['image'], raw['train'][0][5])
  assert train[5]['image'].shape == (32, 32, 3)
  # Channel-planar R,G,B rows -> HxWxC: pixel (0, 0) of image 5 is bytes 0, 1024, 2048.
  import pickle, tarfile
  with tarfile.open(manual / archive) as tar:
    member = [m for m in tar.getmembers() if m.name.endswith(('data_batch_1', '/train'))][0]
    d = pickle.load(tar.extractfile(member), encoding='bytes')
  np.testing.assert_array_equal(raw['train'][0][5, 0, 0], d[b'data'][5][[0, 1024, 2048]])


def test_load_splits_validation_is_last(smoke_config, mnist_dir):
  c = smoke_config()
  c.data.train_limit = 0
  s = pipeline.load_splits(c.data)
  raw = builders.read_raw('mnist', mnist_dir, download=False, verify_md5=False)
  assert s.train_x.shape == (600, 28, 28, 1) and s.val_x.shape == (100, 28, 28, 1)
  np.testing.assert_array_equal(s.val_x, raw['train'][0][-100:])
  np.testing.assert_array_equal(s.train_y, raw['train'][1][:600])
  assert s.test_x.shape[0] == 200


def test_download_from_canonical_url(tmp_path, monkeypatch, mnist_dir):
  """A missing raw file is fetched from its URL (a file:// URL stands in for the web)."""
  spec = builders.get_spec('mnist')
  files = {role: raw._replace(urls=('file://' + os.path.join(mnist_dir, raw.name),))
           for role, raw in spec.files.items()}
  monkeypatch.setitem(builders.SPECS, 'mnist', spec._replace(files=files))
  target = tmp_path / 'downloads'
  path = builders.fetch_raw_file(builders.SPECS['mnist'], 'train_labels', str(target))
  assert os.path.exists(path) and open(path, 'rb').read() == open(
      os.path.join(mnist_dir, 'train-labels-idx1-ubyte.gz'), 'rb').read()


def test_missing_file_error_names_file_place_and_fix(tmp_path):
  with pytest.raises(builders.RawFileError) as e:
    builders.read_raw('mnist', str(tmp_path), download=False)
  msg = str(e.value)
  assert 'train-images-idx3-ubyte.gz' in msg and str(tmp_path) in msg and 'To fix' in msg
  with pytest.raises(builders.RawFileError, match='dataset-fashion-mnist'):
    builders.read_raw('fashion_mnist', str(tmp_path), download=False)
  with pytest.raises(builders.RawFileError, match='cifar-100-python.tar.gz'):
    builders.read_raw('cifar100', str(tmp_path), download=False)


def test_corrupt_files_are_named(tmp_path, mnist_dir):
  bad = tmp_path / 'bad'
  shutil.copytree(mnist_dir, bad)
  # Canonical md5 check: the synthetic file is not the real MNIST.
  with pytest.raises(builders.RawFileError, match='md5'):
    builders.read_raw('mnist', str(bad), download=False, verify_md5=True)
  (bad / 'train-images-idx3-ubyte.gz').write_bytes(b'not gzip at all')
  with pytest.raises(builders.RawFileError, match='train-images-idx3-ubyte.gz.*corrupt'):
    builders.read_raw('mnist', str(bad), download=False, verify_md5=False)
  with gzip.open(bad / 'train-images-idx3-ubyte.gz', 'wb') as f:
    f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2 + b'x')
  with pytest.raises(builders.RawFileError, match='header says shape'):
    builders.read_raw('mnist', str(bad), download=False, verify_md5=False)
  (tmp_path / 'c10').mkdir()
  (tmp_path / 'c10' / 'cifar-10-python.tar.gz').write_bytes(b'truncated')
  with pytest.raises(builders.RawFileError, match='corrupt'):
    builders.read_raw('cifar10', str(tmp_path / 'c10'), download=False)


def test_unknown_dataset():
  with pytest.raises(ValueError, match="choices: .*'mnist'"):
    builders.get_spec('imagenet')


def test_random_crop_flip_shapes_and_content():
  x = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
  keys = jax.random.split(jax.random.key(0), 2)
  out = np.asarray(pipeline.random_crop_flip(keys, x))
  assert out.shape == x.shape and out.dtype == np.uint8
  # Each output is a shifted (maybe flipped) window of the zero-padded input.
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(2):
    found = any(np.array_equal(out[i], w) or np.array_equal(out[i], w[:, ::-1])
                for w in (padded[i, a:a + 32, b:b + 32] for a in range(9) for b in range(9)))
    assert found


def test_official_mnist_when_present():
  """The shared offline copy (when beside the repo) passes the canonical md5 checks."""
  d = pipeline.default_manual_dir('mnist')
  if not os.path.exists(os.path.join(d, 't10k-labels-idx1-ubyte.gz')):
    pytest.skip('no offline MNIST copy beside the repository')
  spec = builders.get_spec('mnist')
  labels = builders.read_idx(spec, os.path.join(d, 't10k-labels-idx1-ubyte.gz'))
  assert labels.shape == (10000,) and labels[:3].tolist() == [7, 2, 1]


# ---------------------------------------------------------------------------
# No silent wrong answers: archives, provenance, prepared files.
# ---------------------------------------------------------------------------

class _Payload:
  """A pickle that runs a command when loaded (what a malicious archive would hold)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def _malicious_cifar(path, marker):
  import io, pickle, tarfile
  make_synthetic_cifar(str(path))
  blob = pickle.dumps({b'data': _Payload(marker), b'labels': [0]}, protocol=2)
  with tarfile.open(path, 'r:gz') as tar:
    members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
  with tarfile.open(path, 'w:gz') as tar:
    for m, data in members:
      if m.name.endswith('data_batch_1'):
        data = blob
        m.size = len(blob)
      tar.addfile(m, io.BytesIO(data) if data is not None else None)


def test_malicious_cifar_pickle_never_runs(tmp_path):
  """Unpickling a crafted data_batch_1 would run `touch MARKER`: refused, file named."""
  marker = tmp_path / 'PWNED'
  manual = tmp_path / 'raw'
  manual.mkdir()
  _malicious_cifar(manual / 'cifar-10-python.tar.gz', marker)
  with pytest.raises(builders.RawFileError, match=r'data_batch_1.*posix.system|'
                     r'data_batch_1.*os.system') as e:
    builders.read_raw('cifar10', str(manual), download=False)
  assert 'cifar-10-python.tar.gz' in str(e.value) and 'malicious' in str(e.value)
  assert not marker.exists()
  # The same through the CLI a user would run.
  import subprocess, sys
  out = subprocess.run(
      [sys.executable, '-m', 'pmjax.train', '--config=configs/cifar10.py:smoke,stage=base,model=mlp',
       f'--config.data.manual_dir={manual}', f'--config.data.data_dir={tmp_path / "tfds"}',
       f'--workdir={tmp_path / "w"}'], cwd=str(tmp_path),   # configs/ found from anywhere
      env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and not marker.exists()
  assert out.stderr.strip().splitlines()[-1].startswith('error: cifar10: raw file')


def test_downloaded_archive_is_md5_checked(tmp_path, monkeypatch):
  src = tmp_path / 'web' / 'cifar-10-python.tar.gz'
  src.parent.mkdir()
  make_synthetic_cifar(str(src))
  spec = builders.get_spec('cifar10')
  raw = spec.files['archive']._replace(urls=('file://' + str(src),))
  monkeypatch.setitem(builders.SPECS, 'cifar10', spec._replace(files={'archive': raw}))
  with pytest.raises(builders.RawFileError, match='not the canonical c58f3010'):
    builders.fetch_raw_file(builders.SPECS['cifar10'], 'archive', str(tmp_path / 'dl'))
  assert not os.listdir(tmp_path / 'dl')  # nothing unchecked is left behind
  raw = raw._replace(download_md5=builders.file_md5(str(src)))
  monkeypatch.setitem(builders.SPECS, 'cifar10', spec._replace(files={'archive': raw}))
  assert os.path.exists(builders.fetch_raw_file(builders.SPECS['cifar10'], 'archive',
                                                str(tmp_path / 'dl')))


def test_prepared_data_records_its_provenance(tmp_path, mnist_dir, capsys):
  """Data prepared from synthetic files is never served to a run that asks for others."""
  data_dir = str(tmp_path / 'tfds')
  b = builders.get_builder('mnist', data_dir, mnist_dir, download_raw=False, verify_md5=False)
  assert len(_read(b, 'test')) == 200
  # The same files again: reused as is.
  builders.get_builder('mnist', data_dir, mnist_dir, download_raw=False, verify_md5=False)
  assert 'rebuilding' not in capsys.readouterr().err
  # A default run (canonical md5 checks) with the synthetic files: not served; rebuilt,
  # which fails on the md5 check instead of training on the wrong data.
  with pytest.raises(builders.RawFileError, match='md5'):
    builders.get_builder('mnist', data_dir, mnist_dir, download_raw=False, verify_md5=True)
  assert 'rebuilding' in capsys.readouterr().err
  # Other raw files in the manual directory: rebuilt from them.
  other = tmp_path / 'other'
  from tests.conftest import make_synthetic_mnist
  make_synthetic_mnist(str(other), n_train=300, n_test=50, seed=1)
  b = builders.get_builder('mnist', data_dir, str(other), download_raw=False, verify_md5=False)
  assert len(_read(b, 'test')) == 50
  # Raw files not at hand and a prepared copy that is not verified: refused, with the fix.
  with pytest.raises(builders.PreparedDataError, match='not checked against the canonical'):
    builders.get_builder('mnist', data_dir, str(tmp_path / 'nothing'), download_raw=False,
                         verify_md5=True)


def test_corrupt_prepared_file_names_it_and_the_fix(smoke_config, mnist_dir, tmp_path):
  c = smoke_config()
  c.data.data_dir = str(tmp_path / 'tfds')
  pipeline.load_splits(c.data)
  version_dir = [d for d, _, fs in os.walk(c.data.data_dir) if any('-train.' in f for f in fs)][0]
  train_file = [f for f in os.listdir(version_dir) if '-train.' in f][0]
  path = os.path.join(version_dir, train_file)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(builders.PreparedDataError, match=r'-train\..*delete .* and re-run'):
    pipeline.load_splits(c.data)


def test_read_only_prepared_data_dir_is_usable(smoke_config, tmp_path, monkeypatch):
  """As on a read-only file system: no lock file can be made, the prepared copy is read."""
  c = smoke_config()
  c.data.data_dir = str(tmp_path / 'tfds')
  expected = pipeline.load_splits(c.data)
  real_open, real_access = open, os.access

  def ro_open(path, mode='r', *a, **kw):
    if str(path).startswith(c.data.data_dir) and any(m in mode for m in 'wa+'):
      raise OSError(30, 'Read-only file system', str(path))
    return real_open(path, mode, *a, **kw)

  monkeypatch.setattr('builtins.open', ro_open)
  monkeypatch.setattr(os, 'access', lambda p, m: False if str(p).startswith(
      c.data.data_dir) and m == os.W_OK else real_access(p, m))
  got = pipeline.load_splits(c.data)
  np.testing.assert_array_equal(got.test_x, expected.test_x)
  c.data.data_dir = str(tmp_path / 'tfds' / 'empty')
  os.makedirs(c.data.data_dir)
  with pytest.raises(builders.PreparedDataError, match='read-only.*writable'):
    pipeline.load_splits(c.data)


def test_a_new_dataset_is_one_registered_spec(monkeypatch, mnist_dir, tmp_path):
  """A dataset added by registering a spec alone: splits, builder and normalisation."""
  monkeypatch.setattr(builders, 'SPECS', dict(builders.SPECS))
  monkeypatch.setattr(builders, 'BUILDERS', dict(builders.BUILDERS))
  mnist = builders.get_spec('mnist')
  builders.register_dataset(mnist._replace(name='digits_copy', mean=(0.5,), std=(0.25,)))
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(name='digits_copy', manual_dir=mnist_dir,
                                       data_dir=str(tmp_path), download=False,
                                       verify_md5=False, num_val=100))
  s = pipeline.load_splits(cfg)
  assert s.train_x.shape == (600, 28, 28, 1) and s.test_x.shape[0] == 200
  x = np.full((1, 28, 28, 1), 255, np.uint8)
  np.testing.assert_allclose(pipeline.normalize(x, 'digits_copy'), 2.0, rtol=1e-6)
