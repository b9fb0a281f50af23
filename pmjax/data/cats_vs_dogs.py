"""Cat v Dog (Microsoft's PetImages, the original ParM's 224x224 task), registered as a
dataset: one spec and its raw-file reader; `configs/cats_vs_dogs.py` trains on it.

Images are stored at 224x224x3 (the original's evaluation view: shorter side
resized to 256, centre 224x224 crop); training augments on device with
RandomResizedCrop(224) + flip taken from that view
(`pipeline.random_resized_crop_flip`); ImageNet mean and std. About 3.7 GB once
prepared (25,000 images minus the skipped ones), so training streams it
(`pmjax.data.stream`).
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from pmjax.data import builders

CLASSES = ('cat', 'dog')


def image_224(spec, data: bytes) -> np.ndarray:
  """Decoded as RGB, the shorter side resized to 256 (bilinear), centre 224x224: the
  original's evaluation view (Resize(256) + CenterCrop(224)). Raises on a bad image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(io.BytesIO(data))
  img = img.convert('RGB')
  w, h = img.size
  scale = 256 / min(w, h)
  img = img.resize((max(256, round(w * scale)), max(256, round(h * scale))),
                   Image.BILINEAR)
  w, h = img.size
  left, top = (w - 224) // 2, (h - 224) // 2
  out = np.asarray(img.crop((left, top, left + 224, top + 224)), np.uint8)
  if out.shape != spec.image_shape:
    raise ValueError(f'decoded to {out.shape}')
  return out


def read_cats_vs_dogs(spec, manual_dir, download=True, verify_md5=True):
  """Cat v Dog from `kagglecatsanddogs_5340.zip` (PetImages/{Cat,Dog}/*.jpg) or from an
  ImageFolder tree `MANUAL_DIR/cat_v_dog/{train,val,test}/{cat,dog}/*` (the original
  repository's layout).

  The zip's split (deterministic): within each class, files sorted by number; every
  10th (positions 9, 19, ...) is test; train is the rest, cats and dogs interleaved,
  so the last `data.num_val` training examples (validation) are balanced. The
  ImageFolder's split: train = its train images then its val images (set
  `data.num_val` to the val folder's size to validate on it), test = its test
  images. As tfds's `cats_vs_dogs`, a file whose first 10 bytes lack "JFIF" (not
  a JPEG, e.g. Thumbs.db, or corrupt) is skipped, and so is any file that does not
  decode; the count is printed and recorded in the prepared data's provenance.
  """
  del verify_md5  # no canonical md5 published: checked by structure
  folder = os.path.join(manual_dir, spec.folder) if manual_dir else None
  if folder and os.path.isdir(folder):
    return _cats_vs_dogs_folder(spec, folder)
  path = builders.fetch_raw_file(spec, 'archive', manual_dir, download)
  try:
    with zipfile.ZipFile(path) as z:
      names = [n for n in z.namelist() if not n.endswith('/')]
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise builders.corrupt(spec, path, f'not a readable zip archive: {e}') from None
  by_class = []
  for cls in ('Cat', 'Dog'):
    files = [n for n in names if n.startswith(f'PetImages/{cls}/')]
    if not files:
      raise builders.corrupt(spec, path, f'it has no PetImages/{cls}/ images (is this the Microsoft '
                     f'Cat v Dog archive?)')
    stem = lambda n: os.path.splitext(os.path.basename(n))[0]
    by_class.append(sorted(files, key=lambda n: (not stem(n).isdigit(),
                                                 int(stem(n)) if stem(n).isdigit() else 0,
                                                 n)))
  test = [(n, c) for c, files in enumerate(by_class) for i, n in enumerate(files) if i % 10 == 9]
  train_by_class = [[n for i, n in enumerate(files) if i % 10 != 9] for files in by_class]
  train = [(files[i], c) for i in range(max(map(len, train_by_class)))
           for c, files in enumerate(train_by_class) if i < len(files)]

  def from_zip(members):
    def generate(examples):
      try:
        with zipfile.ZipFile(path) as z:
          for name, label in members:
            examples.total += 1
            data = z.read(name)
            if b'JFIF' not in data[:10]:
              examples.skipped.append(name)
              continue
            try:
              image = image_224(spec, data)
            except Exception:  # pylint: disable=broad-except
              examples.skipped.append(name)
              continue
            yield image, label
      except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise builders.corrupt(spec, path, f'{type(e).__name__}: {e}') from None
    return builders.Examples(generate)

  return {'train': from_zip(train), 'test': from_zip(test)}


def _cats_vs_dogs_folder(spec, folder):
  splits = {}
  for split, parts in (('train', ('train', 'val')), ('test', ('test',))):
    members = []
    for part in parts:
      for label, cls in enumerate(CLASSES):
        d = os.path.join(folder, part, cls)
        if not os.path.isdir(d):
          raise builders.RawFileError(f'{spec.name}: {d} is missing; an ImageFolder copy needs '
                             f'cat_v_dog/{{train,val,test}}/{{cat,dog}}/. To fix: '
                             f'{spec.how_to_get}.')
        members += [(os.path.join(d, f), label) for f in sorted(os.listdir(d))]

    def generate(examples, members=members):
      for file, label in members:
        examples.total += 1
        try:
          with open(file, 'rb') as fh:
            image = image_224(spec, fh.read())
        except Exception:  # pylint: disable=broad-except
          examples.skipped.append(file)
          continue
        yield image, label
    splits[split] = builders.Examples(generate)
  return splits


SPEC = builders.register_dataset(builders.DatasetSpec(
    'cats_vs_dogs', (224, 224, 3), 2,
    {'archive': builders.RawFile('kagglecatsanddogs_5340.zip', (
        'https://download.microsoft.com/download/3/E/1/'
        '3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip',), None)},
    'download kagglecatsanddogs_5340.zip (Microsoft, about 790 MB) into the manual '
    'directory, or give an ImageFolder copy as MANUAL_DIR/cat_v_dog/{train,val,test}/'
    '{cat,dog}/',
    (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), read_cats_vs_dogs,
    augment='resized_crop_flip', folder='cat_v_dog'))
