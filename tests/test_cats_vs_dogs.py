"""Cat v Dog: the builder on tiny synthetic archives in the canonical layouts (a corrupt
file and a non-JPEG skipped and counted), bad archives named, and a smoke training run."""

import io
import json
import os
import zipfile

import numpy as np
import pytest

from pmjax.data import builders, pipeline


def _jpeg(rng, cls, size=(80, 60)):
  from PIL import Image
  img = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
  img[..., cls * 2] = 220   # cats red, dogs blue: learnable
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def make_synthetic_cats_vs_dogs(path, per_class=50, seed=0):
  """kagglecatsanddogs_5340.zip's layout: PetImages/{Cat,Dog}/<n>.jpg and Thumbs.db,
  with one corrupt JPEG (Cat/7.jpg: no JFIF marker) as the real archive has."""
  rng = np.random.default_rng(seed)
  with zipfile.ZipFile(path, 'w') as z:
    for cls, name in enumerate(('Cat', 'Dog')):
      for i in range(per_class):
        data = _jpeg(rng, cls)
        if cls == 0 and i == 7:
          data = b'\x00' * 40 + data[40:]
        z.writestr(f'PetImages/{name}/{i}.jpg', data)
      z.writestr(f'PetImages/{name}/Thumbs.db', b'\xd0\xcf\x11\xe0 not an image')
  return path


@pytest.fixture(scope='module')
def cvd_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp('cvd_raw')
  make_synthetic_cats_vs_dogs(str(raw / 'kagglecatsanddogs_5340.zip'))
  return str(raw)


def _data_cfg(raw, tfds_dir, **kw):
  from configs import cats_vs_dogs
  from tests import archives
  return archives.data_config(cats_vs_dogs, raw, tfds_dir, **kw)


def test_builder_skips_and_counts_bad_files_and_splits_deterministically(cvd_raw, tmp_path,
                                                                          capsys):
  c = _data_cfg(cvd_raw, str(tmp_path / 'tfds'), pipeline='device', train_limit=0,
                test_limit=0)
  splits = pipeline.load_splits(c.data)
  out = capsys.readouterr().err   # preparation's status goes to stderr
  assert 'cats_vs_dogs train: skipped 3 of 92 files' in out   # corrupt 7.jpg + 2 Thumbs.db
  # 50 per class: positions 9, 19, .. of each class are test (5 + 5).
  assert splits.test_x.shape == (10, 224, 224, 3) and list(splits.test_y) == [0] * 5 + [1] * 5
  assert splits.train_x.shape[1:] == (224, 224, 3)
  assert len(splits.train_x) + len(splits.val_x) == 90 - 1     # the corrupt cat is left out
  assert set(splits.val_y) == {0, 1}                           # interleaved: balanced tail
  red, blue = splits.test_x[0].mean(axis=(0, 1)), splits.test_x[-1].mean(axis=(0, 1))
  assert red[0] > red[2] and blue[2] > blue[0]                 # labels match the images
  prov = json.load(open(next(
      os.path.join(d, f) for d, _, fs in os.walk(tmp_path / 'tfds') for f in fs
      if f == builders.PROVENANCE_FILE)))
  assert prov['skipped']['train']['count'] == 3 and prov['skipped']['test']['count'] == 0
  assert 'PetImages/Cat/7.jpg' in prov['skipped']['train']['files']


def test_image_folder_layout(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / 'raw' / 'cat_v_dog'
  for part, n in (('train', 6), ('val', 2), ('test', 2)):
    for cls, name in enumerate(('cat', 'dog')):
      d = root / part / name
      d.mkdir(parents=True)
      for i in range(n):
        (d / f'{i}.jpg').write_bytes(_jpeg(rng, cls))
  (root / 'train' / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
  c = _data_cfg(str(tmp_path / 'raw'), str(tmp_path / 'tfds'), pipeline='device',
                train_limit=0, test_limit=0, num_val=4)
  splits = pipeline.load_splits(c.data)
  assert len(splits.train_x) == 12 and len(splits.test_x) == 4
  assert list(splits.val_y) == [0, 0, 1, 1]     # the val folder is the end of train
  (root / 'test' / 'dog').rename(root / 'test' / 'dogs')
  with pytest.raises(builders.RawFileError, match=r'test/dog is missing'):
    builders.read_raw('cats_vs_dogs', str(tmp_path / 'raw'), download=False)


def test_truncated_or_missing_archive_is_named(tmp_path):
  make_synthetic_cats_vs_dogs(str(tmp_path / 'full.zip'), per_class=3)
  data = (tmp_path / 'full.zip').read_bytes()
  (tmp_path / 'kagglecatsanddogs_5340.zip').write_bytes(data[:len(data) // 2])
  with pytest.raises(builders.RawFileError, match='kagglecatsanddogs_5340.zip is corrupt'):
    builders.read_raw('cats_vs_dogs', str(tmp_path), download=False)
  with pytest.raises(builders.RawFileError, match='not found.*kagglecatsanddogs_5340.zip'):
    builders.read_raw('cats_vs_dogs', str(tmp_path / 'empty'), download=False)


@pytest.mark.slow
def test_cats_vs_dogs_smoke_training_streams_224px(cvd_raw, tmp_path):
  """Base resnet8_imagenet, then a concat k=2 parity model (224x112 tiles), streamed,
  with RandomResizedCrop + flip on device."""
  from pmjax import train
  c = _data_cfg(cvd_raw, str(tmp_path / 'tfds'))
  assert c.data.pipeline == 'auto' and c.data.augment
  c.data.device_limit_mb = 0   # stream, as a full-size Cat v Dog would
  res = train.train_and_evaluate(c, str(tmp_path / 'w'))
  assert 0.0 <= res['A_a'] <= 1.0 and len(res['A_d_by_position']) == 2
  from pmjax import metrics
  rows = metrics.read_metrics(str(tmp_path / 'w' / 'parity'))
  assert all(np.isfinite(r['train_loss']) and 'input_wait_s' in r for r in rows)


def test_random_resized_crop_flip_keeps_shape_and_range():
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3)), jnp.uint8)
  y = jax.jit(pipeline.random_resized_crop_flip)(jax.random.split(jax.random.key(0), 3), x)
  assert y.shape == x.shape and y.dtype == jnp.uint8
  assert not np.array_equal(np.asarray(y), np.asarray(x))
