"""tfds builders that read the canonical raw files of MNIST, Fashion-MNIST, CIFAR-10/100
(and of the datasets other modules register: `pmjax.data.cats_vs_dogs`).

The builders need no TensorFlow: they are `GeneratorBasedBuilder`s written as
`array_record` files and read back with `builder.as_data_source()`. The raw
files are the canonical downloads (LeCun idx `.gz`, `cifar-*-python.tar.gz`).
They are looked for, in order, in the manual directory given by the caller,
then downloaded from their canonical URLs into it (when online). A missing or
corrupt file raises `RawFileError`, which names the file, where it was looked
for and how to get it.

About 420 lines: the raw-file readers, the dataset specs that name them, the
provenance of prepared data and the tfds builders are one pipeline from a raw
file to array_record, read in that order.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pickle
import shutil
import sys
import tarfile
import urllib.request
import zlib
from functools import partial
from typing import Callable, Iterator, NamedTuple

import numpy as np
import tensorflow_datasets as tfds


class RawFileError(FileNotFoundError):
  """A canonical raw file is missing or corrupt."""


class RawFile(NamedTuple):
  name: str       # file name in the manual directory
  urls: tuple     # canonical download locations, tried in order
  md5: str | None  # md5 of the *decompressed* content of an idx file (checked on read)
  download_md5: str | None = None  # md5 of the file itself, checked after a download


class DatasetSpec(NamedTuple):
  """Everything pmjax knows of a dataset; `register_dataset` makes it usable by name.

  An example is an input (`image_shape`, stored as `dtype`: uint8 images, or float32
  features such as Speech Commands' spectrograms, stored ready for the model) and a
  label: a class (`label_shape=()`) or a float32 target (`label_shape=(4,)`, CUB's
  normalised box). `num_classes` is the number of outputs F has (classes, or 4 box
  coordinates); `target` names the objective that trains and scores F
  (`pmjax.tasks.OBJECTIVES`: 'classification', 'box'). A reader may return a
  'validation' split beside 'train' and 'test' (an official validation list); the
  runs then validate on it instead of on the end of the training split.
  """
  name: str
  image_shape: tuple
  num_classes: int
  files: dict     # role -> RawFile
  how_to_get: str
  mean: tuple     # per-channel mean of the training images in [0, 1] (normalisation)
  std: tuple
  reader: Callable  # (spec, manual_dir, download, verify_md5) -> {'train': (x, y), 'test': ..}
                    # (x, y arrays, or an iterable of (image, label) examples)
  system_dirs: tuple = ()  # where a system package puts the raw files (manual-dir fallback)
  augment: str = 'crop_flip'  # training augmentation (pmjax.data.pipeline.AUGMENTATIONS)
  dtype: str = 'uint8'        # stored inputs: 'uint8' images, or 'float32' features
  label_shape: tuple = ()     # () a class index; (4,) a float32 box
  target: str = 'classification'  # the objective (pmjax.tasks.OBJECTIVES)
  folder: str = ''            # an extracted tree the reader also accepts (MANUAL_DIR/folder)


_MNIST_URLS = ('https://storage.googleapis.com/cvdf-datasets/mnist/',
               'https://ossci-datasets.s3.amazonaws.com/mnist/')
_FASHION_URLS = ('http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',)


def _idx_files(urls, md5s):
  roles = ('train_images', 'train_labels', 'test_images', 'test_labels')
  names = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
           't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
  return {role: RawFile(n, tuple(u + n for u in urls), md5)
          for role, n, md5 in zip(roles, names, md5s)}


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
        got = file_md5(tmp) if raw.download_md5 else None
        if got != raw.download_md5:
          raise ValueError(f'md5 {got} is not the canonical {raw.download_md5} '
                           f'(a corrupt or tampered download; it was discarded)')
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


def file_md5(path: str) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


class SafeUnpickler(pickle.Unpickler):
  """Unpickles only plain containers, bytes and numpy arrays (CIFAR's python files).

  A pickle names the callables that rebuild its objects, and `pickle.load`
  calls them: a crafted file can run any command. This unpickler admits the
  few globals a canonical CIFAR pickle uses (numpy's array reconstruction and
  the latin-1 codec of protocol-2 bytes) and refuses every other one before
  it is called.
  """
  ALLOWED = {('numpy', 'ndarray'), ('numpy', 'dtype'),
             ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
             ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
             ('_codecs', 'encode')}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(
          f'it references {module}.{name}, which a canonical CIFAR pickle never contains '
          f'(refused before running it: the file may be malicious)')
    return super().find_class(module, name)


def corrupt(spec, path, why):
  return RawFileError(
      f'{spec.name}: raw file {path} is corrupt ({why}). Delete it and fetch it '
      f'again: {spec.how_to_get}.')


_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def tar_members(spec: DatasetSpec, path: str) -> Iterator:
  """(name, read) for each regular file of the .tar.gz `path`, in archive order, in one
  streaming pass: `name` without a leading './', `read()` its bytes (call it before the
  next item; files not read are skipped over). A truncated or corrupt archive raises
  RawFileError naming it; errors of the caller's own code pass through unchanged."""
  def broken(e):
    return corrupt(spec, path, f'{type(e).__name__}: {e}')

  def reader(tar, m):
    def read():
      try:
        return tar.extractfile(m).read()
      except _ARCHIVE_ERRORS as e:
        raise broken(e) from None
    return read

  try:
    with tarfile.open(path, 'r:gz') as tar:
      for m in tar:
        if m.isfile():
          yield m.name[2:] if m.name.startswith('./') else m.name, reader(tar, m)
  except _ARCHIVE_ERRORS as e:
    raise broken(e) from None


def read_idx(spec: DatasetSpec, path: str, verify_md5: bool = True) -> np.ndarray:
  """Reads a gzipped LeCun idx file into a uint8 array, checking md5 and header."""
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise corrupt(spec, path, f'not a readable gzip file: {e}') from e
  md5 = next((r.md5 for r in spec.files.values() if r.name == os.path.basename(path)), None)
  if md5 and verify_md5 and hashlib.md5(data).hexdigest() != md5:
    raise corrupt(spec, path, f'md5 of the decompressed content is '
                   f'{hashlib.md5(data).hexdigest()}, expected {md5}')
  if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise corrupt(spec, path, 'bad idx magic number (expected unsigned-byte idx)')
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise corrupt(spec, path, f'header says shape {dims} but holds {body.size} bytes')
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
      raise corrupt(spec, manual_dir, f'{split} images {images.shape} do not match '
                     f'labels {labels.shape} / image shape {spec.image_shape}')
    out[split] = (images[..., None], labels.astype(np.int64))
  return out


def read_cifar_dataset(spec, manual_dir, download=True, verify_md5=True, *, members,
                       label_key):
  """Returns {'train': (images NxHxWx3, labels N), 'test': (...)} from the python tarball:
  `members` names each split's pickles, `label_key` their labels."""
  del verify_md5  # no canonical content md5 (the offline copy was rebuilt): checked by structure
  path = fetch_raw_file(spec, 'archive', manual_dir, download)
  out = {}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      by_base = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
      for split, names in members.items():
        images, labels = [], []
        for n in names:
          if n not in by_base:
            raise corrupt(spec, path, f'archive has no member {n!r}')
          try:
            d = SafeUnpickler(tar.extractfile(by_base[n]), encoding='bytes').load()
          except pickle.UnpicklingError as e:
            raise corrupt(spec, f'{path} (member {by_base[n].name})', str(e)) from None
          if not isinstance(d, dict) or b'data' not in d or label_key not in d:
            raise corrupt(spec, path, f'member {n!r} is not a dict with {b"data"!r} and '
                           f'{label_key!r}')
          data = np.asarray(d[b'data'])
          if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise corrupt(spec, path, f'member {n!r} data is {data.dtype} {data.shape}, '
                           f'expected uint8 Nx3072')
          images.append(data.reshape(-1, 3, 32, 32))
          labels.append(np.asarray(d[label_key], np.int64))
        out[split] = (np.concatenate(images).transpose(0, 2, 3, 1),
                      np.concatenate(labels))
  except RawFileError:
    raise
  except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError,
          ValueError) as e:
    raise corrupt(spec, path, f'{type(e).__name__}: {e}') from e
  return out


class Examples:
  """An iterable of (image, label) examples read one at a time (data larger than memory);
  `skipped` lists the files left out (unreadable or not an image; `what` says which kind
  in the printed count), filled as it runs."""

  def __init__(self, generate: Callable[['Examples'], Iterator],
               what: str = 'files (not a JPEG, or not decodable), as tfds does'):
    self._generate, self.skipped, self.total, self.what = generate, [], 0, what

  def __iter__(self):
    return self._generate(self)


def read_raw(name, manual_dir, download=True, verify_md5=True):
  """{'train': (images, labels), 'test': (...)} from the raw files of `name`."""
  spec = get_spec(name)
  return spec.reader(spec, manual_dir, download, verify_md5)


# --------------------------------------------------------------------------
# The registry: a dataset is one spec.
# --------------------------------------------------------------------------

_BUILTIN = (
    DatasetSpec(
        'mnist', (28, 28, 1), 10,
        _idx_files(_MNIST_URLS, ('6bbc9ace898e44ae57da46a324031adb',
                                 'a25bea736e30d166cdddb491f175f624',
                                 '2646ac647ad5339dbf082846283269ea',
                                 '27ae3e4e09519cfbb04c329615203637')),
        'download the four MNIST idx .gz files, or use the offline copy in '
        '../shared/data/mnist (config.data.manual_dir)',
        (0.1307,), (0.3081,), read_idx_dataset),
    DatasetSpec(
        'fashion_mnist', (28, 28, 1), 10,
        _idx_files(_FASHION_URLS, ('f4a8712d7a061bf5bd6d2ca38dc4d50a',
                                   '9018921c3c673c538a1fc5bad174d6f9',
                                   '8181f5470baa50b63fa0f6fddb340f0a',
                                   '15d484375f8d13e6eb1aabb0c3f46965')),
        'on Debian: `apt-get install -y dataset-fashion-mnist` (files land in '
        '/usr/share/datasets/fashion-mnist), or download the four idx .gz files',
        (0.2860,), (0.3530,), read_idx_dataset, ('/usr/share/datasets/fashion-mnist',)),
    DatasetSpec(
        'cifar10', (32, 32, 3), 10,
        {'archive': RawFile('cifar-10-python.tar.gz',
                            ('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',),
                            None, 'c58f30108f718f92721af3b95e74349a')},
        'download cifar-10-python.tar.gz, or use the offline copy in '
        '../shared/data/cifar10 (config.data.manual_dir)',
        (0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784),
        partial(read_cifar_dataset, members={'train': [f'data_batch_{i}' for i in range(1, 6)],
                                             'test': ['test_batch']}, label_key=b'labels')),
    DatasetSpec(
        'cifar100', (32, 32, 3), 100,
        {'archive': RawFile('cifar-100-python.tar.gz',
                            ('https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',),
                            None, 'eb9058c3a382ffc7106e4002c42a8d85')},
        'download cifar-100-python.tar.gz (about 160 MB) into the manual directory',
        (0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047),
        partial(read_cifar_dataset, members={'train': ['train'], 'test': ['test']},
                label_key=b'fine_labels')),
)

SPECS = {}
BUILDERS = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
  """Makes `spec` usable by name: config.data.name, its tfds builder, models' shapes."""
  SPECS[spec.name] = spec
  BUILDERS[spec.name] = _make_builder_class(spec)
  return spec


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
            'image': tfds.features.Tensor(shape=self.SPEC.image_shape,
                                          dtype=np.dtype(self.SPEC.dtype)),
            'label': (tfds.features.ClassLabel(num_classes=self.SPEC.num_classes)
                      if self.SPEC.label_shape == () else
                      tfds.features.Tensor(shape=self.SPEC.label_shape, dtype=np.float32)),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the canonical order: validation = last examples
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # raw files come from fetch_raw_file (manual dir or canonical URL)
    raw = read_raw(self.SPEC.name, self._raw_manual_dir, self.download_raw, self.verify_md5)
    self.skipped = {split: v for split, v in raw.items() if isinstance(v, Examples)}
    return {split: (self._generate_stream(split, v) if isinstance(v, Examples)
                    else self._generate_examples(*v)) for split, v in raw.items()}

  def _label(self, label):
    return int(label) if self.SPEC.label_shape == () else np.asarray(label, np.float32)

  def _generate_examples(self, images, labels) -> Iterator:
    for i in range(images.shape[0]):
      yield i, {'image': images[i], 'label': self._label(labels[i])}

  def _generate_stream(self, split, examples: Examples) -> Iterator:
    for i, (image, label) in enumerate(examples):
      yield i, {'image': image, 'label': self._label(label)}
    if examples.skipped:
      print(f'{self.SPEC.name} {split}: skipped {len(examples.skipped)} of {examples.total} '
            f'{examples.what}; first: {examples.skipped[:3]}', file=sys.stderr, flush=True)


def _make_builder_class(spec):
  cls_name = 'Pmjax' + ''.join(p.capitalize() for p in spec.name.split('_'))
  return type(cls_name, (_RawFileBuilder,), {'SPEC': spec, 'name': 'pmjax_' + spec.name,
                                              '__module__': __name__})


for _spec in _BUILTIN:
  register_dataset(_spec)


PROVENANCE_FILE = 'pmjax_provenance.json'


class PreparedDataError(RuntimeError):
  """Prepared (array_record) data cannot be used: unreadable, or from other raw files."""


def raw_provenance(spec: DatasetSpec, manual_dir: str | None, verify_md5: bool) -> dict:
  """What data prepared from `manual_dir` would be made of: the md5 of each raw file
  found there (None where absent) and whether idx contents are md5-checked."""
  md5s = {}
  for raw in spec.files.values():
    path = os.path.join(manual_dir, raw.name) if manual_dir else None
    md5s[raw.name] = file_md5(path) if path and os.path.exists(path) else None
  return {'verify_md5': bool(verify_md5), 'raw_md5': md5s}


def _read_provenance(builder):
  path = os.path.join(builder.data_dir, PROVENANCE_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _have_raw(provenance) -> bool:
  """Whether every raw file was found (so its md5 is known)."""
  return all(v is not None for v in provenance['raw_md5'].values())


def _stale_reason(recorded, wanted) -> str | None:
  """Why prepared data (made as `recorded`) must not serve a run that wants `wanted`."""
  have_raw = _have_raw(wanted)
  if recorded is None:
    return ('it was prepared before pmjax recorded where prepared data comes from'
            if have_raw else None)
  if have_raw and recorded.get('raw_md5') != wanted['raw_md5']:
    return 'it was prepared from other raw files than those in the manual directory'
  if wanted['verify_md5'] and not recorded.get('verify_md5'):
    return ('it was prepared from raw files that were not checked against the canonical '
            'md5s (config.data.verify_md5=False), and this run asks for canonical data')
  return None


def get_builder(name: str, data_dir: str, manual_dir: str | None = None,
                download_raw: bool = True, verify_md5: bool = True):
  """Returns the tfds builder for `name`, preparing it in `data_dir` if needed.

  `verify_md5=False` accepts idx files whose content differs from the canonical
  ones (custom or synthetic copies in the canonical format). The prepared
  copy records its provenance (raw-file md5s, whether they were verified);
  a prepared copy made from other raw files, or from unverified ones when
  this run asks for verified data, is rebuilt from the raw files at hand, or
  refused when they are not at hand.
  """
  spec = get_spec(name)

  def make():
    return BUILDERS[name](data_dir=data_dir, manual_dir=manual_dir,
                          download_raw=download_raw, verify_md5=verify_md5)

  builder = make()
  wanted = raw_provenance(spec, manual_dir, verify_md5)
  if builder.is_prepared():
    why = _stale_reason(_read_provenance(builder), wanted)
    if why is None:
      return builder
    if not _have_raw(wanted):
      raise PreparedDataError(
          f'{name}: the prepared data in {builder.data_dir} cannot serve this run: {why}. '
          f'To fix: put the canonical raw files in the manual directory '
          f'({manual_dir or "config.data.manual_dir"}) so it is rebuilt, or use another '
          f'config.data.data_dir.')
    if not os.access(builder.data_dir, os.W_OK):
      raise PreparedDataError(
          f'{name}: the prepared data in {builder.data_dir} must be rebuilt ({why}), but '
          f'that directory is read-only. To fix: use a writable config.data.data_dir.')
    print(f'pmjax: rebuilding {builder.data_dir}: {why}', file=sys.stderr, flush=True)
    shutil.rmtree(builder.data_dir)
    builder = make()
  elif os.path.isdir(data_dir) and not os.access(data_dir, os.W_OK):
    raise PreparedDataError(
        f'{name} is not prepared in {data_dir}, which is read-only. To fix: use a writable '
        f'config.data.data_dir (or prepare it there once with write access).')
  # tfds prints its progress on stdout; status goes to stderr, so that a command whose
  # stdout is its result (a bench's JSON line) prints the same the first time.
  with contextlib.redirect_stdout(sys.stderr):
    builder.download_and_prepare(file_format='array_record')
  if not _have_raw(wanted):
    wanted = raw_provenance(spec, manual_dir, verify_md5)  # now downloaded
  skipped = getattr(builder, 'skipped', {})
  if skipped:   # files left out while preparing (e.g. Cat v Dog's non-JPEG files)
    wanted['skipped'] = {split: {'count': len(e.skipped), 'of': e.total, 'files': e.skipped}
                         for split, e in skipped.items()}
  tmp = os.path.join(builder.data_dir, PROVENANCE_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(wanted, f)
  os.replace(tmp, os.path.join(builder.data_dir, PROVENANCE_FILE))
  return builder
