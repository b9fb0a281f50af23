"""tfds builders that read the canonical raw files of MNIST, Fashion-MNIST, CIFAR-10/100.

The builders need no TensorFlow: they are `GeneratorBasedBuilder`s written as
`array_record` files and read back with `builder.as_data_source()`. The raw
files are the canonical downloads (LeCun idx `.gz`, `cifar-*-python.tar.gz`).
They are looked for, in order, in the manual directory given by the caller,
then downloaded from their canonical URLs into it (when online). A missing or
corrupt file raises `RawFileError`, which names the file, where it was looked
for and how to get it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from typing import Iterator, NamedTuple

import numpy as np
import tensorflow_datasets as tfds


class RawFileError(FileNotFoundError):
  """A canonical raw file is missing or corrupt."""


class RawFile(NamedTuple):
  name: str       # file name in the manual directory
  urls: tuple     # canonical download locations, tried in order
  md5: str | None  # md5 of the *decompressed* content for idx files, else of the file


class DatasetSpec(NamedTuple):
  name: str
  image_shape: tuple
  num_classes: int
  files: dict     # role -> RawFile
  how_to_get: str


_MNIST_URLS = ('https://storage.googleapis.com/cvdf-datasets/mnist/',
               'https://ossci-datasets.s3.amazonaws.com/mnist/')
_FASHION_URLS = ('http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',)


def _idx_files(urls, md5s):
  roles = ('train_images', 'train_labels', 'test_images', 'test_labels')
  names = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
           't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
  return {role: RawFile(n, tuple(u + n for u in urls), md5)
          for role, n, md5 in zip(roles, names, md5s)}


SPECS = {
    'mnist': DatasetSpec(
        'mnist', (28, 28, 1), 10,
        _idx_files(_MNIST_URLS, ('6bbc9ace898e44ae57da46a324031adb',
                                 'a25bea736e30d166cdddb491f175f624',
                                 '2646ac647ad5339dbf082846283269ea',
                                 '27ae3e4e09519cfbb04c329615203637')),
        'download the four MNIST idx .gz files, or use the offline copy in '
        '../shared/data/mnist (config.data.manual_dir)'),
    'fashion_mnist': DatasetSpec(
        'fashion_mnist', (28, 28, 1), 10,
        _idx_files(_FASHION_URLS, ('f4a8712d7a061bf5bd6d2ca38dc4d50a',
                                   '9018921c3c673c538a1fc5bad174d6f9',
                                   '8181f5470baa50b63fa0f6fddb340f0a',
                                   '15d484375f8d13e6eb1aabb0c3f46965')),
        'on Debian: `apt-get install -y dataset-fashion-mnist` (files land in '
        '/usr/share/datasets/fashion-mnist), or download the four idx .gz files'),
    'cifar10': DatasetSpec(
        'cifar10', (32, 32, 3), 10,
        {'archive': RawFile('cifar-10-python.tar.gz',
                            ('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',),
                            None)},
        'download cifar-10-python.tar.gz, or use the offline copy in '
        '../shared/data/cifar10 (config.data.manual_dir)'),
    'cifar100': DatasetSpec(
        'cifar100', (32, 32, 3), 100,
        {'archive': RawFile('cifar-100-python.tar.gz',
                            ('https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',),
                            None)},
        'download cifar-100-python.tar.gz (about 160 MB) into the manual directory'),
}


# --------------------------------------------------------------------------
# Raw files: find or download, then parse.
# --------------------------------------------------------------------------

def fetch_raw_file(spec: DatasetSpec, role: str, manual_dir: str | None,
                   download: bool = True) -> str:
  """Returns the path of a raw file, downloading it into `manual_dir` if missing."""
  raw = spec.files[role]
  where = manual_dir or '(no manual directory given)'
  path = os.path.join(manual_dir, raw.name) if manual_dir else None
  if path and os.path.exists(path):
    return path
  errors = []
  if download and manual_dir:
    os.makedirs(manual_dir, exist_ok=True)
    for url in raw.urls:
      tmp = path + '.part'
      try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, 'wb') as f:
          shutil.copyfileobj(resp, f)
        os.replace(tmp, path)
        return path
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'{url}: {e}')
        if os.path.exists(tmp):
          os.remove(tmp)
  tried = ('; download failed: ' + ' | '.join(errors)) if errors else (
      '; downloading was disabled' if not download else '')
  raise RawFileError(
      f'{spec.name}: raw file {raw.name!r} not found in {where}{tried}. '
      f'To fix: {spec.how_to_get}.')


def _corrupt(spec, path, why):
  return RawFileError(
      f'{spec.name}: raw file {path} is corrupt ({why}). Delete it and fetch it '
      f'again: {spec.how_to_get}.')


def read_idx(spec: DatasetSpec, path: str, verify_md5: bool = True) -> np.ndarray:
  """Reads a gzipped LeCun idx file into a uint8 array, checking md5 and header."""
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise _corrupt(spec, path, f'not a readable gzip file: {e}') from e
  md5 = next((r.md5 for r in spec.files.values() if r.name == os.path.basename(path)), None)
  if md5 and verify_md5 and hashlib.md5(data).hexdigest() != md5:
    raise _corrupt(spec, path, f'md5 of the decompressed content is '
                   f'{hashlib.md5(data).hexdigest()}, expected {md5}')
  if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise _corrupt(spec, path, 'bad idx magic number (expected unsigned-byte idx)')
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise _corrupt(spec, path, f'header says shape {dims} but holds {body.size} bytes')
  return body.reshape(dims)


def read_idx_dataset(spec, manual_dir, download=True, verify_md5=True):
  """Returns {'train': (images NxHxWx1, labels N), 'test': (...)} from idx files."""
  out = {}
  for split, prefix in (('train', 'train'), ('test', 'test')):
    images = read_idx(spec, fetch_raw_file(spec, prefix + '_images', manual_dir, download),
                      verify_md5)
    labels = read_idx(spec, fetch_raw_file(spec, prefix + '_labels', manual_dir, download),
                      verify_md5)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != spec.image_shape[:2]:
      raise _corrupt(spec, manual_dir, f'{split} images {images.shape} do not match '
                     f'labels {labels.shape} / image shape {spec.image_shape}')
    out[split] = (images[..., None], labels.astype(np.int64))
  return out


def read_cifar_dataset(spec, manual_dir, download=True, verify_md5=True):
  """Returns {'train': (images NxHxWx3, labels N), 'test': (...)} from the python tarball."""
  path = fetch_raw_file(spec, 'archive', manual_dir, download)
  if spec.name == 'cifar10':
    members = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
    label_key = b'labels'
  else:
    members = {'train': ['train'], 'test': ['test']}
    label_key = b'fine_labels'
  out = {}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      by_base = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
      for split, names in members.items():
        images, labels = [], []
        for n in names:
          if n not in by_base:
            raise _corrupt(spec, path, f'archive has no member {n!r}')
          d = pickle.load(tar.extractfile(by_base[n]), encoding='bytes')
          images.append(np.asarray(d[b'data'], np.uint8).reshape(-1, 3, 32, 32))
          labels.append(np.asarray(d[label_key], np.int64))
        out[split] = (np.concatenate(images).transpose(0, 2, 3, 1),
                      np.concatenate(labels))
  except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError) as e:
    raise _corrupt(spec, path, f'{type(e).__name__}: {e}') from e
  return out


def read_raw(name, manual_dir, download=True, verify_md5=True):
  """{'train': (images, labels), 'test': (...)} from the raw files of `name`."""
  spec = get_spec(name)
  if spec.name in ('mnist', 'fashion_mnist'):
    return read_idx_dataset(spec, manual_dir, download, verify_md5)
  return read_cifar_dataset(spec, manual_dir, download, verify_md5)


def get_spec(name: str) -> DatasetSpec:
  if name not in SPECS:
    raise ValueError(f'unknown dataset {name!r}; choices: {sorted(SPECS)}')
  return SPECS[name]


# --------------------------------------------------------------------------
# tfds builders.
# --------------------------------------------------------------------------

class _RawFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder body: one example per image, features `image` and `label`."""

  VERSION = tfds.core.Version('1.0.0')
  SPEC: DatasetSpec
  download_raw: bool = True

  def __init__(self, *, manual_dir=None, download_raw=True, verify_md5=True, **kwargs):
    self._raw_manual_dir = manual_dir
    self.download_raw = download_raw
    self.verify_md5 = verify_md5
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.SPEC.name} from its canonical raw files.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=self.SPEC.image_shape, dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=self.SPEC.num_classes),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the canonical order: validation = last examples
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # raw files come from fetch_raw_file (manual dir or canonical URL)
    raw = read_raw(self.SPEC.name, self._raw_manual_dir, self.download_raw, self.verify_md5)
    return {split: self._generate_examples(*arrays) for split, arrays in raw.items()}

  def _generate_examples(self, images, labels) -> Iterator:
    for i in range(images.shape[0]):
      yield i, {'image': images[i], 'label': int(labels[i])}


def _make_builder_class(spec):
  cls_name = 'Pmjax' + ''.join(p.capitalize() for p in spec.name.split('_'))
  return type(cls_name, (_RawFileBuilder,), {'SPEC': spec, 'name': 'pmjax_' + spec.name,
                                              '__module__': __name__})


BUILDERS = {name: _make_builder_class(spec) for name, spec in SPECS.items()}


def get_builder(name: str, data_dir: str, manual_dir: str | None = None,
                download_raw: bool = True, verify_md5: bool = True):
  """Returns the tfds builder for `name`, preparing it in `data_dir` if needed.

  `verify_md5=False` accepts idx files whose content differs from the canonical
  ones (custom or synthetic copies in the canonical format).
  """
  get_spec(name)
  builder = BUILDERS[name](data_dir=data_dir, manual_dir=manual_dir,
                           download_raw=download_raw, verify_md5=verify_md5)
  builder.download_and_prepare(file_format='array_record')
  return builder
