"""Google Speech Commands v0.01 (30 words), as the original ParM's speech task: one
spec, its raw-file reader and the spectrogram featurizer; `configs/speech_commands.py`
trains on it.

Raw data: `speech_commands_v0.01.tar.gz` (downloaded when online), or the same
tree extracted as MANUAL_DIR/speech_commands_v0.01/ (`<word>/<id>_nohash_<n>.wav`,
`validation_list.txt`, `testing_list.txt`). The two official lists define the
validation and test splits; training is every other clip of the 30 word folders
(`_background_noise_` is not a class). Classes are the word folders sorted, as the
original's `GCommandLoader` (bed=0 .. zero=29).

Features (`spectrogram`), exactly the original repository's (`gcommands_dataset.py`,
librosa 0.6.2): the clip as float in [-1, 1], a centred STFT (reflect-padded by
n_fft/2) with n_fft = window length = 0.02 * sample rate, hop = 0.01 * sample rate
and a periodic Hamming window; magnitude; log1p; padded with zeros or truncated to
101 frames; z-scored over the whole spectrogram (torch's unbiased std; left as is
when the std is 0, i.e. silence). At 16 kHz: 161 x 101 x 1, stored float32 and fed
to the model as is. Written with numpy (`np.fft.rfft` on strided frames) rather
than librosa, which would add a large dependency for one function; a test checks
it against the DFT formula.

Storage: 65 KB per clip (161 x 101 float32), several GB for the whole set, so
training streams it (`pmjax.data.stream`). The archive is read once for its lists
and names, then once per split (a streaming pass each). The validation and test splits are ordered by path;
training clips in archive order (sorted by path for an extracted folder).
"""

from __future__ import annotations

import io
import os
import wave

import numpy as np

from pmjax.data import builders

SAMPLE_RATE = 16000
WINDOW_S, HOP_S, MAX_FRAMES = 0.02, 0.01, 101
WORDS = ('bed', 'bird', 'cat', 'dog', 'down', 'eight', 'five', 'four', 'go', 'happy',
         'house', 'left', 'marvin', 'nine', 'no', 'off', 'on', 'one', 'right', 'seven',
         'sheila', 'six', 'stop', 'three', 'tree', 'two', 'up', 'wow', 'yes', 'zero')
ARCHIVE = 'speech_commands_v0.01.tar.gz'
FOLDER = 'speech_commands_v0.01'
LISTS = {'validation': 'validation_list.txt', 'test': 'testing_list.txt'}


class AudioError(ValueError):
  """A WAV file that cannot be featurised (not 16-bit PCM, truncated, wrong rate)."""


def read_wav(data: bytes, name: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """A mono 16-bit PCM WAV -> float32 samples in [-1, 1) (librosa.load's scaling, 1/32768).
  Raises AudioError naming `name` for another rate, format or a truncated file."""
  try:
    with wave.open(io.BytesIO(data)) as w:
      channels, width, rate, frames = (w.getnchannels(), w.getsampwidth(),
                                       w.getframerate(), w.getnframes())
      pcm = w.readframes(frames)
  except (wave.Error, EOFError) as e:
    raise AudioError(f'{name} is not a readable WAV file ({e})') from None
  if rate != sample_rate:
    raise AudioError(f'{name} is sampled at {rate} Hz; Speech Commands clips are '
                     f'{sample_rate} Hz (the features assume it: 161 frequency bins)')
  if width != 2 or channels != 1:
    raise AudioError(f'{name} is {8 * width}-bit with {channels} channel(s); Speech '
                     f'Commands clips are 16-bit mono PCM')
  if len(pcm) < frames * width * channels:
    raise AudioError(f'{name} is truncated: its header announces {frames} samples, it '
                     f'holds {len(pcm) // (width * channels)}')
  return np.frombuffer(pcm, '<i2').astype(np.float32) / 32768.0


def hamming(n: int) -> np.ndarray:
  """The periodic Hamming window (scipy.signal.get_window('hamming', n, fftbins=True),
  what librosa.stft uses)."""
  return 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n)


def spectrogram(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The original's features of one clip: (n_fft/2 + 1) x 101 x 1 float32 (161 x 101 x 1
  at 16 kHz). See the module docstring."""
  n_fft = int(sample_rate * WINDOW_S)
  hop = int(sample_rate * HOP_S)
  y = np.asarray(samples, np.float64)
  if y.ndim != 1 or y.size == 0:
    raise AudioError(f'a clip must be a non-empty 1-D signal, got shape {y.shape}')
  y = np.pad(y, n_fft // 2, mode='reflect')      # librosa's center=True
  n_frames = 1 + (len(y) - n_fft) // hop
  frames = np.lib.stride_tricks.as_strided(
      y, (n_frames, n_fft), (y.strides[0] * hop, y.strides[0]), writeable=False)
  mag = np.abs(np.fft.rfft(frames * hamming(n_fft), axis=1)).T   # bins x frames
  spect = np.log1p(mag)
  if spect.shape[1] < MAX_FRAMES:
    spect = np.pad(spect, ((0, 0), (0, MAX_FRAMES - spect.shape[1])))
  spect = spect[:, :MAX_FRAMES]
  std = spect.std(ddof=1)
  if std != 0:
    spect = (spect - spect.mean()) / std
  return spect[..., None].astype(np.float32)


def _split_of(lists: dict, clips, spec, where: str) -> dict:
  """{clip path: 'validation' | 'test'} from the official lists (a clip in neither is
  training); every listed clip must be among `clips` (else the copy is incomplete)."""
  split = {}
  for s, text in lists.items():
    for line in text.splitlines():
      line = line.strip()
      if line:
        split[line] = s
  if not split:
    raise builders.corrupt(spec, where, 'validation_list.txt and testing_list.txt are empty')
  absent = sorted(set(split) - set(clips))
  if absent:
    raise builders.corrupt(spec, where, f'the lists name {len(absent)} clip(s) it does not '
                           f'hold, first: {absent[0]} (an incomplete copy?)')
  return split


def _check_words(spec, words, where):
  if tuple(sorted(words)) != WORDS:
    missing, extra = sorted(set(WORDS) - set(words)), sorted(set(words) - set(WORDS))
    raise builders.corrupt(spec, where, f'its word folders are not the 30 of v0.01 '
                           f'(missing {missing}, unexpected {extra})')


def read_speech_commands(spec, manual_dir, download=True, verify_md5=True):
  """{'train', 'validation', 'test'}: Examples of (spectrogram, label) from the archive
  or an extracted folder (module docstring)."""
  del verify_md5  # no canonical content md5 published: checked by structure
  folder = os.path.join(manual_dir, FOLDER) if manual_dir else None
  if folder and os.path.isdir(folder):
    return _from_folder(spec, folder)
  path = builders.fetch_raw_file(spec, 'archive', manual_dir, download)
  return _from_archive(spec, path)


def _featurize(spec, split, rel, data, where):
  """(spectrogram, label) of clip `rel` (WAV bytes `data`); RawFileError naming `where`."""
  try:
    x = spectrogram(read_wav(data, where))
  except AudioError as e:
    raise builders.RawFileError(f'{spec.name} ({split} split): {e}. To fix: replace that '
                                f'file with a good copy; {spec.how_to_get}.') from None
  return x, WORDS.index(rel.split('/', 1)[0])


def _from_folder(spec, folder):
  lists = {}
  for s, f in LISTS.items():
    p = os.path.join(folder, f)
    if not os.path.exists(p):
      raise builders.RawFileError(f'{spec.name}: {p} is missing (the official {s} list '
                                  f'defines that split). To fix: {spec.how_to_get}.')
    with open(p) as fh:
      lists[s] = fh.read()
  words = [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
           and not d.startswith('_')]
  _check_words(spec, words, folder)
  clips = [f'{word}/{f}' for word in sorted(words)
           for f in sorted(os.listdir(os.path.join(folder, word))) if f.lower().endswith('.wav')]
  split_of = _split_of(lists, clips, spec, folder)
  by_split = {'train': [], 'validation': [], 'test': []}
  for rel in clips:
    by_split[split_of.get(rel, 'train')].append(rel)

  def split_examples(s):
    def generate(examples):
      for rel in by_split[s]:
        examples.total += 1
        file = os.path.join(folder, rel)
        with open(file, 'rb') as fh:
          yield _featurize(spec, s, rel, fh.read(), file)
    return builders.Examples(generate, what='clips')
  return {s: split_examples(s) for s in by_split}


def _from_archive(spec, path):
  lists, names = {}, []
  for rel, read in builders.tar_members(spec, path):
    if rel in LISTS.values():
      lists[rel] = read().decode('utf-8', 'replace')
    elif rel.lower().endswith('.wav') and not rel.startswith('_'):
      names.append(rel)
  for s, f in LISTS.items():
    if f not in lists:
      raise builders.corrupt(spec, path, f'it has no {f} (the official {s} list defines '
                             f'that split)')
  _check_words(spec, {n.split('/', 1)[0] for n in names if '/' in n}, path)
  split_of = _split_of({s: lists[f] for s, f in LISTS.items()}, names, spec, path)
  wanted = {s: {n for n in names if split_of.get(n, 'train') == s}
            for s in ('train', 'validation', 'test')}

  def stream_split(s):
    """Examples of split s in one pass over the archive: training clips in archive order;
    validation and test (small) held as bytes and given in path order."""
    def generate(examples):
      held = []
      for rel, read in builders.tar_members(spec, path):
        if rel not in wanted[s]:
          continue
        if s == 'train':
          examples.total += 1
          yield _featurize(spec, s, rel, read(), f'{path} member {rel}')
        else:
          held.append((rel, read()))
      for rel, data in sorted(held):
        examples.total += 1
        yield _featurize(spec, s, rel, data, f'{path} member {rel}')
    return builders.Examples(generate, what='clips')

  return {s: stream_split(s) for s in ('train', 'validation', 'test')}


SPEC = builders.register_dataset(builders.DatasetSpec(
    'speech_commands', (161, 101, 1), 30,
    {'archive': builders.RawFile(ARCHIVE, (
        'http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz',), None)},
    f'download {ARCHIVE} (about 1.4 GB) into the manual directory, or extract it there as '
    f'MANUAL_DIR/{FOLDER}/ (word folders, validation_list.txt, testing_list.txt)',
    (0.0,), (1.0,), read_speech_commands, dtype='float32', augment='none', folder=FOLDER))
