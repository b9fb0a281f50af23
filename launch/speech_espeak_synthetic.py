"""A SYNTHETIC spoken-word set in Speech Commands v0.01's canonical layout, made with
Debian's espeak-ng (`apt-get install -y espeak-ng`): the 30 words, each said by many
voice / pitch / speed combinations, resampled to 16 kHz 16-bit mono and placed in a 1 s
clip at a random offset with faint noise.

    python launch/speech_espeak_synthetic.py --out /tmp/gsc_synth
    python -m pmjax.train --config=configs/speech_commands.py:stage=base,model=lenet_speech \
        --config.data.manual_dir=/tmp/gsc_synth --workdir=/tmp/gsc_synth_base

It writes OUT/speech_commands_v0.01/<word>/<speaker>_nohash_<n>.wav,
validation_list.txt, testing_list.txt and a README saying it is synthetic. Splits are
speaker-disjoint as in the real set: each "speaker" (a voice, pitch and speed) is in
one split only. It checks the speech path (builder, features, models, codes) with real
audio; it is not Speech Commands, and results on it are reported as synthetic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pmjax.data import speech_commands  # pylint: disable=wrong-import-position

VOICES = ('en-us', 'en-gb', 'en-gb-scotland', 'en-gb-x-rp', 'en-029', 'en-us-nyc',
          'en-gb-x-gbclan', 'en-gb-x-gbcwmd')
VARIANTS = ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'f1', 'f2', 'f3', 'f4', 'f5')


def speakers(n: int, seed: int) -> list:
  """n distinct (voice+variant, pitch 0-99, speed words/min) combinations."""
  rng = np.random.default_rng(seed)
  out, seen = [], set()
  while len(out) < n:
    s = (f'{VOICES[rng.integers(len(VOICES))]}+{VARIANTS[rng.integers(len(VARIANTS))]}',
         int(rng.integers(25, 76)), int(rng.integers(120, 211)))
    if s not in seen:
      seen.add(s)
      out.append(s)
  return out


def synthesize(word: str, voice: str, pitch: int, speed: int, tmp: str) -> np.ndarray:
  """espeak-ng's rendering of `word` as float samples at 16 kHz."""
  from scipy.signal import resample_poly  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'w.wav')
  subprocess.run(['espeak-ng', '-v', voice, '-p', str(pitch), '-s', str(speed), '-w', path,
                  word], check=True, capture_output=True)
  with wave.open(path) as w:
    rate = w.getframerate()
    x = np.frombuffer(w.readframes(w.getnframes()), '<i2').astype(np.float64) / 32768
  g = np.gcd(rate, speech_commands.SAMPLE_RATE)
  return resample_poly(x, speech_commands.SAMPLE_RATE // g, rate // g)


def one_second(x: np.ndarray, rng) -> np.ndarray:
  n = speech_commands.SAMPLE_RATE
  x = x[:n]
  out = np.zeros(n)
  start = int(rng.integers(0, n - len(x) + 1))
  out[start:start + len(x)] = x
  return out + 10 ** (-40 / 20) * 0.1 * rng.standard_normal(n)


def write_wav(path: str, x: np.ndarray):
  pcm = np.clip(np.round(x * 32767), -32768, 32767).astype('<i2')
  with wave.open(path, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(speech_commands.SAMPLE_RATE)
    w.writeframes(pcm.tobytes())


def make(out: str, train: int, val: int, test: int, seed: int = 0) -> dict:
  """Writes the set; returns {split: number of clips}."""
  if shutil.which('espeak-ng') is None:
    raise SystemExit('espeak-ng is not installed. To fix: apt-get install -y espeak-ng')
  root = os.path.join(out, speech_commands.FOLDER)
  if os.path.exists(root):
    shutil.rmtree(root)
  os.makedirs(root)
  rng = np.random.default_rng(seed)
  who = speakers(train + val + test, seed)
  split_of = ['train'] * train + ['validation'] * val + ['test'] * test
  lists = {'validation': [], 'test': []}
  counts = {'train': 0, 'validation': 0, 'test': 0}
  with tempfile.TemporaryDirectory() as tmp:
    for word in speech_commands.WORDS:
      os.makedirs(os.path.join(root, word))
      for s, (voice, pitch, speed) in enumerate(who):
        rel = f'{word}/{s:08x}_nohash_0.wav'
        write_wav(os.path.join(root, rel), one_second(synthesize(word, voice, pitch, speed,
                                                                 tmp), rng))
        counts[split_of[s]] += 1
        if split_of[s] != 'train':
          lists[split_of[s]].append(rel)
  for split, name in speech_commands.LISTS.items():
    with open(os.path.join(root, name), 'w') as f:
      f.write(''.join(r + '\n' for r in lists[split]))
  with open(os.path.join(root, 'README.md'), 'w') as f:
    f.write('SYNTHETIC spoken words made by espeak-ng (launch/speech_espeak_synthetic.py); '
            'not Google Speech Commands.\n')
  return counts


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='manual directory to write into')
  p.add_argument('--train_speakers', type=int, default=40)
  p.add_argument('--val_speakers', type=int, default=8)
  p.add_argument('--test_speakers', type=int, default=8)
  p.add_argument('--seed', type=int, default=0)
  a = p.parse_args()
  counts = make(a.out, a.train_speakers, a.val_speakers, a.test_speakers, a.seed)
  print(f'wrote {sum(counts.values())} SYNTHETIC clips to '
        f'{os.path.join(a.out, speech_commands.FOLDER)}: {counts}')


if __name__ == '__main__':
  main()
