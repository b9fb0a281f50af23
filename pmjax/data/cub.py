"""CUB-200-2011 object localisation, as the original ParM's localisation task: one spec
and its raw-file reader; `configs/cub_localization.py` trains on it.

Raw data: `CUB_200_2011.tgz` (downloaded when online), or the same tree extracted as
MANUAL_DIR/CUB_200_2011/ (`images.txt`, `bounding_boxes.txt`,
`train_test_split.txt`, `images/<class>/<file>.jpg`). The official
train_test_split.txt gives the splits (5,994 / 5,794 images, as the dataset documents
them; not counted here, the archive is not available); the dataset
`cub_localization_parm_split` reads the same files on the original repository's own
split instead (`parm_split`: a seeded 20% of each class as test).

An example: the image as RGB resized to 224 x 224 (bilinear, aspect not kept: the
original's `transforms.Scale((224, 224))`), and its box (x, y, w, h) from
bounding_boxes.txt in fractions of the image's width and height (so unchanged by
the resize), cropped to the image as the original's `crop_boxes`. A box that lies
outside its image (by more than one pixel, the original's x2 = x + w - 1
convention) is an error naming the file and the image. F regresses the box in the
original's coordinates (2x-1, 2y-1, 2w, 2h) (`pmjax.metrics.BoxIoU`).

Order: the test split in images.txt order; the training split interleaved over the
200 classes (round robin, each class in images.txt order), so its last
`data.num_val` examples (validation) span the classes (CUB's have 29-30 training
images each; with very unequal classes the tail would come from the largest). The split being prepared
is held as JPEG bytes (about half the archive's size for the training split). 150 KB
an image once prepared at 224 x 224 x 3.
"""

from __future__ import annotations

import io
import os
from functools import partial

import numpy as np

from pmjax.data import builders

ARCHIVE = 'CUB_200_2011.tgz'
FOLDER = 'CUB_200_2011'
TEXT_FILES = ('images.txt', 'bounding_boxes.txt', 'train_test_split.txt')
SIZE = 224


def image_224(data: bytes):
  """(224x224x3 uint8 of the image resized as the original, (width, height) before)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(io.BytesIO(data))
  img = img.convert('RGB')
  size = img.size
  return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), np.uint8), size


def normalised_box(box_xywh, size_wh, where: str) -> np.ndarray:
  """A pixel box (x, y, w, h) of an image of `size_wh` -> fractions of the image, cropped
  to it; RawFileError (via ValueError) when it lies outside the image."""
  x, y, w, h = (float(v) for v in box_xywh)
  width, height = size_wh
  if w <= 0 or h <= 0 or x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
    raise ValueError(f'{where}: box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside its '
                     f'{width}x{height} image')
  x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
  x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
  return np.asarray([x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height],
                    np.float32)


def _parse_tables(spec, texts: dict, where: str):
  """(id -> relative image path, id -> box, id -> is_train) from the three text files."""
  def rows(name, n):
    out = {}
    for number, line in enumerate(texts[name].splitlines(), 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != n:
        raise builders.corrupt(spec, f'{where} ({name}, line {number})',
                               f'expected {n} fields, got {line!r}')
      out[parts[0]] = parts[1:]
    return out
  paths = {i: p[0] for i, p in rows('images.txt', 2).items()}
  try:
    boxes = {i: [float(v) for v in b] for i, b in rows('bounding_boxes.txt', 5).items()}
  except ValueError as e:
    raise builders.corrupt(spec, f'{where} (bounding_boxes.txt)', str(e)) from None
  train = {i: s[0] == '1' for i, s in rows('train_test_split.txt', 2).items()}
  for name, table in (('bounding_boxes.txt', boxes), ('train_test_split.txt', train)):
    missing = [i for i in paths if i not in table]
    if missing:
      raise builders.corrupt(spec, f'{where} ({name})', f'no row for image id(s) '
                             f'{missing[:5]} of images.txt')
  return paths, boxes, train


def _order(ids, paths, is_train):
  """Test in images.txt order; train interleaved over classes (module docstring)."""
  by_class = {}
  for i in ids:
    by_class.setdefault(paths[i].split('/', 1)[0], []).append(i)
  classes = [by_class[c] for c in sorted(by_class)]
  if not is_train:
    return list(ids)
  return [c[j] for j in range(max(map(len, classes), default=0)) for c in classes
          if j < len(c)]


def parm_split(paths: dict) -> dict:
  """The original repository's split (`cub-localization/box_util.split(0.2)`): per class
  (the number before the first '.' of the path), in images.txt order, ceil(20%) of its
  images sampled as test with Python's `random` seeded 32; {id: is_train}."""
  import math  # pylint: disable=g-import-not-at-top
  import random  # pylint: disable=g-import-not-at-top
  groups = {}
  for i, path in paths.items():
    groups.setdefault(path.split('.', 1)[0], []).append(i)
  rng = random.Random(32)
  test = set()
  for group in groups.values():
    test.update(rng.sample(group, int(math.ceil(len(group) * 0.2))))
  return {i: i not in test for i in paths}


def read_cub(spec, manual_dir, download=True, verify_md5=True, split='official'):
  """{'train', 'test'}: Examples of (224x224x3 image, box) from the archive or folder;
  `split` 'official' (train_test_split.txt) or 'parm' (`parm_split`)."""
  del verify_md5  # no canonical content md5 published: checked by structure
  folder = os.path.join(manual_dir, FOLDER) if manual_dir else None
  if folder and os.path.isdir(folder):
    texts = {}
    for name in TEXT_FILES:
      p = os.path.join(folder, name)
      if not os.path.exists(p):
        raise builders.RawFileError(f'{spec.name}: {p} is missing. To fix: {spec.how_to_get}.')
      with open(p) as fh:
        texts[name] = fh.read()
    where = folder

    def read_images(wanted):
      out = {}
      for rel in wanted:
        p = os.path.join(folder, 'images', rel)
        if not os.path.exists(p):
          raise builders.RawFileError(f'{spec.name}: {p} (named by images.txt) is missing. '
                                      f'To fix: {spec.how_to_get}.')
        with open(p, 'rb') as fh:
          out[rel] = fh.read()
      return out
  else:
    where = builders.fetch_raw_file(spec, 'archive', manual_dir, download)
    texts = {}
    for name, read in builders.tar_members(spec, where):
      parts = name.split('/')
      if len(parts) == 2 and parts[0] == FOLDER and parts[1] in TEXT_FILES:
        texts[parts[1]] = read().decode('utf-8', 'replace')
    for name in TEXT_FILES:
      if name not in texts:
        raise builders.corrupt(spec, where, f'it has no {FOLDER}/{name}')

    def read_images(wanted):
      out = {}
      prefix = f'{FOLDER}/images/'
      for name, read in builders.tar_members(spec, where):
        if name.startswith(prefix) and name[len(prefix):] in wanted:
          out[name[len(prefix):]] = read()
      missing = sorted(set(wanted) - set(out))
      if missing:
        raise builders.corrupt(spec, where, f'images.txt names {len(missing)} image(s) it '
                               f'does not hold, first: {FOLDER}/images/{missing[0]}')
      return out

  paths, boxes, train = _parse_tables(spec, texts, where)
  if split == 'parm':
    train = parm_split(paths)

  def split_examples(is_train):
    ids = _order([i for i in paths if train[i] == is_train], paths, is_train)

    def generate(examples):
      data = read_images({paths[i] for i in ids})
      for i in ids:
        examples.total += 1
        try:
          image, size = image_224(data[paths[i]])
        except Exception as e:  # pylint: disable=broad-except
          raise builders.corrupt(spec, f'{where} (image {paths[i]})',
                                 f'not a decodable image: {e}') from None
        try:
          box = normalised_box(boxes[i], size, f'bounding_boxes.txt, image id {i} '
                               f'({paths[i]})')
        except ValueError as e:
          raise builders.RawFileError(f'{spec.name}: {e} in {where}. To fix: correct that '
                                      f'row of bounding_boxes.txt.') from None
        yield image, box
    return builders.Examples(generate, what='images')

  return {'train': split_examples(True), 'test': split_examples(False)}


_CUB = dict(files={'archive': builders.RawFile(ARCHIVE, (
    'https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz',), None)},
            how_to_get=f'download {ARCHIVE} (Caltech, about 1.1 GB) into the manual '
            f'directory, or extract it there as MANUAL_DIR/{FOLDER}/ (images.txt, '
            f'bounding_boxes.txt, train_test_split.txt, images/)',
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), augment='none',
            label_shape=(4,), target='box', folder=FOLDER)
SPEC = builders.register_dataset(builders.DatasetSpec(
    'cub_localization', (SIZE, SIZE, 3), 4, reader=read_cub, **_CUB))
# The same images and boxes on the original repository's own 80/20 split (`parm_split`),
# to run its procedure: --config.data.name=cub_localization_parm_split.
PARM_SPLIT_SPEC = builders.register_dataset(builders.DatasetSpec(
    'cub_localization_parm_split', (SIZE, SIZE, 3), 4,
    reader=partial(read_cub, split='parm'), **_CUB))
