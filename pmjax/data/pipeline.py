"""Input pipeline: raw files -> tfds builder -> numpy -> whole dataset on device.

Small datasets (MNIST, Fashion-MNIST, CIFAR) are held on device as uint8;
shuffling, grouping into k, augmentation and normalisation run on device
inside the jitted step (see `pmjax.train`), so a step does no host work.
Training sets above `data.device_limit_mb` (or with `data.pipeline='stream'`)
are streamed from their files instead (`pmjax.data.stream`): the same batches,
read per call of steps.
"""

from __future__ import annotations

import fcntl
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pmjax.data import builders, stream

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Splits(NamedTuple):
  """Inputs NxHxWxC (uint8 images; float32 features for a spec with dtype float32) and
  labels (int32 N classes; float32 Nx4 boxes) for each split (the training split as
  `stream.SourceArray` views when it is streamed)."""
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


def default_manual_dir(name: str) -> str:
  """Where raw files are looked for when the config names no manual directory.

  In order (the first holding the spec's first raw file, or its extracted `folder`):
  $PMJAX_MANUAL_DIR/<name>, ../shared/data/<name> beside the repo,
  the spec's `system_dirs` (e.g. Debian's /usr/share/datasets/fashion-mnist), and finally
  ~/.cache/pmjax/downloads/<name>, where the canonical files are downloaded.
  """
  candidates = []
  if os.environ.get('PMJAX_MANUAL_DIR'):
    candidates.append(os.path.join(os.environ['PMJAX_MANUAL_DIR'], name))
  candidates.append(os.path.join(os.path.dirname(_REPO_ROOT), 'shared', 'data', name))
  spec = builders.get_spec(name)
  candidates.extend(spec.system_dirs)
  first_file = next(iter(spec.files.values())).name
  for c in candidates:
    if os.path.exists(os.path.join(c, first_file)) or (
        spec.folder and os.path.isdir(os.path.join(c, spec.folder))):
      return c
  return os.path.expanduser(os.path.join('~', '.cache', 'pmjax', 'downloads', name))


def default_data_dir() -> str:
  return os.environ.get('PMJAX_DATA_DIR') or os.path.expanduser('~/.cache/pmjax/tfds')


class _prepare_lock:
  """An exclusive lock on data_dir/.pmjax_prepare.lock; none when data_dir is read-only."""

  def __init__(self, data_dir):
    self.data_dir, self.file = data_dir, None

  def __enter__(self):
    try:
      os.makedirs(self.data_dir, exist_ok=True)
      self.file = open(os.path.join(self.data_dir, '.pmjax_prepare.lock'), 'w')
    except OSError:
      return self  # read-only: get_builder refuses if it would have to write
    fcntl.flock(self.file, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      self.file.close()


def load_splits(data_cfg) -> Splits:
  """Loads train / val / test as numpy from the prepared tfds data source.

  Validation is the last `num_val` training examples (as the original
  artifact), or the dataset's own 'validation' split where its reader gives one
  (Speech Commands' validation list; `num_val` is then unused); `train_limit` /
  `test_limit` / `val_limit` (0 = all) cut subsets for smoke runs.
  """
  name = data_cfg.name
  manual_dir = data_cfg.get('manual_dir') or default_manual_dir(name)
  data_dir = data_cfg.get('data_dir') or default_data_dir()
  # Several processes on one machine (multi-process runs) must not prepare at once. A
  # read-only data_dir takes no lock: it can only serve data prepared there before.
  with _prepare_lock(data_dir):
    builder = builders.get_builder(name, data_dir, manual_dir,
                                   download_raw=data_cfg.get('download', True),
                                   verify_md5=data_cfg.get('verify_md5', True))
  source = builder.as_data_source()
  spec = builders.get_spec(name)
  x_dtype = np.dtype(spec.dtype)
  y_dtype = np.dtype(np.int32 if spec.label_shape == () else np.float32)

  def read(split, indices=None):
    try:
      ds = source[split]
      records = ds.__getitems__(list(range(len(ds))) if indices is None else list(indices))
      x = np.stack([r['image'] for r in records]).astype(x_dtype)
      y = np.asarray([r['label'] for r in records], y_dtype)
    except Exception as e:  # pylint: disable=broad-except
      raise _unreadable(name, builder.data_dir, split, e) from None
    return x, y

  try:
    n_all = len(source['train'])
  except Exception as e:  # pylint: disable=broad-except
    raise _unreadable(name, builder.data_dir, 'train', e) from None
  own_val = 'validation' in source    # the dataset's official validation split
  num_val = 0 if own_val else int(data_cfg.get('num_val', 5000))
  if not own_val and not 0 < num_val < n_all:
    raise ValueError(f'config.data.num_val={num_val} must be in (0, {n_all}), '
                     f'the size of the {name} training set')
  n_train = n_all - num_val
  if data_cfg.get('train_limit'):
    n_train = min(n_train, data_cfg.train_limit)
  if stream.wants_stream(data_cfg, n_train * int(np.prod(spec.image_shape)) * x_dtype.itemsize):
    # The training set stays in its files: SourceArray views read it by index.
    train = stream.TrainSource(source['train'], 0, n_train, spec.image_shape, x_dtype,
                               spec.label_shape)
    train_x, train_y = stream.SourceArray(train, 0), stream.SourceArray(train, 1)
  else:
    all_x, all_y = read('train', range(n_train) if own_val else None)
    train_x, train_y = all_x[:n_train], all_y[:n_train]
  if own_val:
    n_val = len(source['validation'])
    if data_cfg.get('val_limit'):
      n_val = min(n_val, data_cfg.val_limit)
    val_x, val_y = read('validation', range(n_val))
  elif isinstance(train_x, stream.SourceArray):
    val_x, val_y = read('train', range(n_all - num_val, n_all))
  else:
    val_x, val_y = all_x[n_all - num_val:], all_y[n_all - num_val:]
  test_x, test_y = read('test')
  if data_cfg.get('test_limit'):
    test_x, test_y = test_x[:data_cfg.test_limit], test_y[:data_cfg.test_limit]
  return Splits(train_x, train_y, val_x, val_y, test_x, test_y)


def _unreadable(name, data_dir, split, error) -> builders.PreparedDataError:
  files = sorted(f for f in os.listdir(data_dir) if f'-{split}.' in f)
  return builders.PreparedDataError(
      f'{name}: the prepared {split} split in {data_dir} ({", ".join(files)}) '
      f'cannot be read: {type(error).__name__}: {str(error)[:300]}. To fix: delete '
      f'{data_dir} and re-run; it is rebuilt from the raw files.')


# How raw images are scaled into model inputs (`config.data.scaling`): 'standardize'
# ((x/255 - mean) / std with the dataset's per-channel mean/std, pmjax's default) or
# 'unit' (x/255 in [0, 1], torchvision's ToTensor: the original artifact's MNIST inputs).
SCALINGS = ('standardize', 'unit')


class Inputs(str):
  """A dataset name that also carries how its images are scaled (`scaling`); it is the
  name wherever a name is expected (`builders.get_spec`, result files), so the
  functions that take `dataset` accept either."""

  def __new__(cls, name: str, scaling: str = 'standardize'):
    if scaling not in SCALINGS:
      raise ValueError(f'config.data.scaling={scaling!r} is unknown; accepted: '
                       f'{list(SCALINGS)}')
    self = super().__new__(cls, name)
    self.scaling = scaling
    return self


def inputs_of(data_cfg) -> Inputs:
  """The model inputs of a run's `config.data`: its dataset and `scaling`."""
  return Inputs(data_cfg.name, data_cfg.get('scaling', 'standardize'))


def normalize(x_uint8, dataset: str):
  """uint8 images (..., H, W, C) -> float32 model inputs: per-channel standardised, or
  in [0, 1] for `Inputs(name, 'unit')`. A dataset stored as float features (its spec's
  dtype, e.g. z-scored spectrograms) is already the model's input: only cast."""
  spec = builders.get_spec(dataset)
  if spec.dtype != 'uint8':
    return x_uint8.astype(jnp.float32)
  x = x_uint8.astype(jnp.float32) / 255.0
  if getattr(dataset, 'scaling', 'standardize') == 'unit':
    return x
  return (x - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)


def random_crop_flip(keys_B, x_BxHxWxC, pad: int = 4):
  """CIFAR augmentation: random crop with `pad`-pixel zero padding + horizontal flip.

  One key per example, so the result does not depend on how a batch is split
  over devices.
  """
  _, h, w, c = x_BxHxWxC.shape
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(key, img):
    kc, kf = jax.random.split(key)
    off = jax.random.randint(kc, (2,), 0, 2 * pad + 1)
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(kf), crop[:, ::-1], crop)

  return jax.vmap(one)(keys_B, padded)


def random_resized_crop_flip(keys_B, x_BxHxWxC, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """ImageNet-style augmentation (torchvision's RandomResizedCrop + horizontal flip):
  a crop of a random area fraction in `scale` and aspect ratio in `ratio` (log-uniform),
  resized back to the input size (bilinear, antialiased). Out-of-range crops are
  clipped to the image instead of torchvision's 10 retries and centre-crop fallback."""
  _, h, w, c = x_BxHxWxC.shape

  def one(key, img):
    ka, kr, ky, kx, kf = jax.random.split(key, 5)
    area = h * w * jax.random.uniform(ka, (), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(kr, (), minval=jnp.log(ratio[0]),
                                        maxval=jnp.log(ratio[1])))
    cw = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
    ch = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
    oy = jax.random.uniform(ky, (), maxval=h - ch)
    ox = jax.random.uniform(kx, (), maxval=w - cw)
    s = jnp.stack([h / ch, w / cw])
    out = jax.image.scale_and_translate(img.astype(jnp.float32), (h, w, c), (0, 1), s,
                                        -jnp.stack([oy, ox]) * s, method='linear',
                                        antialias=True)
    out = jnp.where(jax.random.bernoulli(kf), out[:, ::-1], out)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)

  return jax.vmap(one)(keys_B, x_BxHxWxC)


# A dataset spec's `augment` names its training augmentation.
AUGMENTATIONS = {'crop_flip': random_crop_flip, 'resized_crop_flip': random_resized_crop_flip}


def preprocess(keys_N, x_uint8_NxHxWxC, dataset: str, augment: bool):
  """The on-device input transform of one batch of raw images (one key per image)."""
  if augment:
    # Augment the raw uint8 image, so padding is black as in torchvision's RandomCrop.
    x_uint8_NxHxWxC = AUGMENTATIONS[builders.get_spec(dataset).augment](
        keys_N, x_uint8_NxHxWxC)
  return normalize(x_uint8_NxHxWxC, dataset)
