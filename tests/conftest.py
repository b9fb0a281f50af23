"""Test set-up: 2 virtual CPU devices, synthetic canonical raw files, smoke configs.

Compiled programs are shared across the session through JAX's persistent compilation
cache, in a fresh directory per session (removed at its end) that the tests' subprocesses
and pytest-xdist's workers inherit: the many smoke runs compile the same few steps, and
each compiles once. A run starts cold, so nothing carries over between sessions; set
JAX_COMPILATION_CACHE_DIR to use another directory (kept).
"""

import atexit
import gzip
import io
import os
import pickle
import shutil
import tarfile
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix='pmjax_test_jax_cache_')
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
  # Every program, however small or quick to compile (the smoke steps are both).
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# XLA's CPU backend compiles at LLVM's -O2, not its default -O3 (this process, its
# subprocesses and Ray's workers inherit it): the suite's programs are many and small, and
# compiling them is a large part of its CPU; a threefry PRNG program (every init, shuffle
# and augmentation has one) compiles in ~1.1 s at -O3 and ~0.2 s at -O2 on a 2-core CPU.
# The speech smoke run's losses and metrics are identical at both. (Not -O0: there
# jaxlib 0.10.2's XLA miscompiles that run's fused training step into NaNs that the same
# step run op by op does not produce.)
# And with XLA's older elemental emitters instead of its MLIR fusion emitters (jaxlib
# 0.10.2's default): programs compile ~25-30% faster (a resnet8 gradient step 0.95-1.03 ->
# 0.70-0.75 s; a one-op program ~40 -> ~29 ms, JAX's share included) and run a little
# slower (that step 15-16 -> 16-19 ms), and the suite's programs are many and run for
# milliseconds. Users' runs keep XLA's defaults.
for _flag in ('--xla_backend_optimization_level=2', '--xla_cpu_use_fusion_emitters=false'):
  if _flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = ' '.join(filter(None, [os.environ.get('XLA_FLAGS'), _flag]))

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 2)
jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_idx(path, array):
  """Writes a uint8 array as a gzipped LeCun idx file (the canonical format)."""
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_synthetic_mnist(directory, n_train=700, n_test=200, seed=0):
  """Class-dependent blobs, so a model can learn them; canonical idx .gz files."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
      r, c = divmod(int(y), 5)
      images[i, 4 + 10 * r:12 + 10 * r, 2 + 5 * c:6 + 5 * c] = 250
    write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'), images)
    write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), labels)
  return directory


def make_synthetic_cifar(path, num_classes=10, n_per_batch=20, seed=0):
  """A cifar-{10,100}-python.tar.gz in the canonical pickle layout: CIFAR-10's
  data_batch_1..5, test_batch and batches.meta; CIFAR-100's train, test (fine and
  coarse labels) and meta."""
  rng = np.random.default_rng(seed)
  top = 'cifar-10-batches-py' if num_classes == 10 else 'cifar-100-python'
  names = ([f'data_batch_{i}' for i in range(1, 6)] + ['test_batch'] if num_classes == 10
           else ['train', 'test'])
  members = {}
  for name in names:
    labels = rng.integers(0, num_classes, n_per_batch).tolist()
    d = {b'batch_label': name.encode(),
         b'data': rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
         b'filenames': [b'x.png'] * n_per_batch}
    if num_classes == 10:
      d[b'labels'] = labels
    else:
      d[b'fine_labels'], d[b'coarse_labels'] = labels, [y // 5 for y in labels]
    members[name] = d
  if num_classes == 10:
    members['batches.meta'] = {b'label_names': [b'c%d' % i for i in range(10)],
                               b'num_cases_per_batch': n_per_batch, b'num_vis': 3072}
  else:
    members['meta'] = {b'fine_label_names': [b'f%d' % i for i in range(100)],
                       b'coarse_label_names': [b'c%d' % i for i in range(20)]}
  with tarfile.open(path, 'w:gz') as tar:
    for name, d in members.items():
      blob = pickle.dumps(d, protocol=2)
      info = tarfile.TarInfo(f'{top}/{name}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return path


@pytest.fixture(scope='session')
def mnist_dir(tmp_path_factory):
  return make_synthetic_mnist(str(tmp_path_factory.mktemp('raw_mnist')))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def synthetic_config(arg, mnist_dir, tfds_dir, train_limit=512, test_limit=200):
  """configs/mnist.py:smoke,ARG on the synthetic files, quiet."""
  from configs import mnist
  c = mnist.get_config(','.join(filter(None, ['smoke', arg])))
  c.data.update(dict(manual_dir=mnist_dir, data_dir=tfds_dir, download=False,
                     verify_md5=False, num_val=100, train_limit=train_limit,
                     test_limit=test_limit))
  c.progress_bar = False
  return c


@pytest.fixture
def smoke_config(mnist_dir, tfds_dir):
  """configs/mnist.py:smoke on the synthetic files, quiet."""
  return lambda arg='': synthetic_config(arg, mnist_dir, tfds_dir)


# Test files from the longest to the shortest (seconds on a 2-core CPU, measured with
# --durations=0): pytest-xdist (pytest.ini: --dist loadfile --no-loadscope-reorder) hands
# whole files to its workers in this order, so the long ones start first and the workers
# finish together. A file not listed runs last.
HEAVIEST_FIRST = (
    'test_cluster', 'test_entry_points', 'test_train', 'test_cub', 'test_torch_import',
    'test_checkpoints', 'test_models', 'test_serving', 'test_cats_vs_dogs', 'test_import_base',
    'test_own_model', 'test_codes', 'test_sweep', 'test_code_contract', 'test_speech',
    'test_multiprocess', 'test_cifar100', 'test_stream', 'test_data', 'test_byzantine')


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.module.__name__.rsplit('.', 1)[-1], len(rank)))
