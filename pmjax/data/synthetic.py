"""Small SYNTHETIC Speech Commands v0.01 and CUB-200-2011 archives (or extracted trees)
in their exact canonical layouts: the tests' raw files, and a way to check a pipeline
end to end without the real archives (not available offline here).

    python -m pmjax.data.synthetic --dataset=cub_localization --out=DIR [--per_class=12]
    python -m pmjax.data.synthetic --dataset=speech_commands --out=DIR [--per_word=3]

Speech: each word is a tone at its own frequency with noise, clips of 1 s, 0.6 s and
1.3 s; the 2nd clip of each word is listed for validation, the 3rd for test. CUB: each
image is a bright rectangle (the "bird") at its box on a dark background, images of
varied sizes; every 3rd image of a class is test. Learnable, and nothing like the real
data: results on them check the pipeline, not the method.
"""

import io
import os
import tarfile
import wave

import numpy as np

from pmjax.data import cub, speech_commands


def wav_bytes(samples_float, rate=16000, truncate=0):
  pcm = np.clip(np.round(np.asarray(samples_float) * 32767), -32768, 32767).astype('<i2')
  buf = io.BytesIO()
  with wave.open(buf, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.tobytes())
  data = buf.getvalue()
  return data[:len(data) - truncate] if truncate else data


def tone_clip(rng, label, seconds):
  """A word-specific tone (learnable) with noise, of `seconds`."""
  t = np.arange(int(16000 * seconds)) / 16000
  return 0.3 * np.sin(2 * np.pi * (300 + 150 * label) * t) + 0.02 * rng.standard_normal(t.size)


def speech_files(per_word=3, seed=0):
  """{relative path: bytes}: per word, clips of 1 s, 0.6 s and 1.3 s (alternating); the
  lists put the 2nd clip of each word in validation, the 3rd in test."""
  rng = np.random.default_rng(seed)
  files, val, test = {}, [], []
  for label, word in enumerate(speech_commands.WORDS):
    for i in range(per_word):
      rel = f'{word}/{label:04x}{i:04x}_nohash_0.wav'
      files[rel] = wav_bytes(tone_clip(rng, label, (1.0, 0.6, 1.3)[i % 3]))
      (val if i % 3 == 1 else test if i % 3 == 2 else []).append(rel)
  files['_background_noise_/white_noise.wav'] = wav_bytes(0.1 * rng.standard_normal(32000))
  files['validation_list.txt'] = ('\n'.join(val) + '\n').encode()
  files['testing_list.txt'] = ('\n'.join(test) + '\n').encode()
  files['README.md'] = b'SYNTHETIC tones (pmjax.data.synthetic); not Speech Commands.\n'
  return files


def write_tar(path, files, prefix='./'):
  with tarfile.open(path, 'w:gz') as tar:
    for rel, data in files.items():
      info = tarfile.TarInfo(prefix + rel)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def write_folder(root, files):
  for rel, data in files.items():
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, 'wb') as f:
      f.write(data)
  return root


def cub_files(n_classes=3, per_class=6, seed=0):
  """{relative path under CUB_200_2011/: bytes}: JPEGs of varied sizes, each a bright
  rectangle (the bird) at its box on a dark background; every 3rd image is test."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  images, boxes, split, files = [], [], [], {}
  i = 0
  for c in range(n_classes):
    cls = f'{c + 1:03d}.Bird_{c}'
    for j in range(per_class):
      i += 1
      w, h = int(rng.integers(120, 260)), int(rng.integers(100, 220))
      bw, bh = int(rng.integers(w // 4, w * 3 // 4)), int(rng.integers(h // 4, h * 3 // 4))
      bx, by = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
      img = rng.integers(0, 50, (h, w, 3), dtype=np.uint8)
      img[by:by + bh, bx:bx + bw] = 220
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format='JPEG', quality=92)
      name = f'{cls}/Bird_{c}_{j:04d}_{i}.jpg'
      files[f'images/{name}'] = buf.getvalue()
      images.append(f'{i} {name}')
      boxes.append(f'{i} {bx:.1f} {by:.1f} {bw:.1f} {bh:.1f}')
      split.append(f'{i} {0 if j % 3 == 2 else 1}')
  files['images.txt'] = ('\n'.join(images) + '\n').encode()
  files['bounding_boxes.txt'] = ('\n'.join(boxes) + '\n').encode()
  files['train_test_split.txt'] = ('\n'.join(split) + '\n').encode()
  files['README_SYNTHETIC.txt'] = (b'SYNTHETIC rectangles (pmjax.data.synthetic); '
                                   b'not CUB-200-2011.\n')
  return files


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description='Write a small SYNTHETIC archive in a '
                              'canonical layout.')
  p.add_argument('--dataset', required=True, choices=('speech_commands', 'cub_localization'))
  p.add_argument('--out', required=True, help='the manual directory to write the archive in')
  p.add_argument('--per_word', type=int, default=3, help='speech: clips per word')
  p.add_argument('--n_classes', type=int, default=4, help='cub: classes')
  p.add_argument('--per_class', type=int, default=12, help='cub: images per class')
  p.add_argument('--seed', type=int, default=0)
  a = p.parse_args(argv)
  if a.per_word < 3 or a.per_class < 3:
    p.error('--per_word and --per_class must be >= 3 (one clip or image of each in '
            'every split)')
  os.makedirs(a.out, exist_ok=True)
  if a.dataset == 'speech_commands':
    path = write_tar(os.path.join(a.out, speech_commands.ARCHIVE),
                     speech_files(a.per_word, a.seed))
  else:
    path = write_tar(os.path.join(a.out, cub.ARCHIVE),
                     cub_files(a.n_classes, a.per_class, a.seed), prefix=f'{cub.FOLDER}/')
  print(f'wrote SYNTHETIC {path}')


if __name__ == '__main__':
  main()

