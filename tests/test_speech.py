"""Speech Commands: the featurizer against the STFT formula, the builder on tiny synthetic
archives in the canonical layouts, its errors, the original's two models, and a smoke
run base -> parity -> evaluate."""

import json
import os

import jax
import numpy as np
import pytest

from pmjax.data import builders, pipeline, speech_commands as sc
from pmjax.data import synthetic as sf
from tests import archives


def _direct_spectrogram(y, sr=16000):
  """The original's features written out as formulas: centred frames (reflect padding),
  X[f, m] = |sum_n w[n] y[m*hop + n] exp(-2 pi i f n / N)|, log1p, 101 frames, z-score."""
  n = int(0.02 * sr)
  hop = int(0.01 * sr)
  w = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n)      # periodic Hamming
  yp = np.pad(np.asarray(y, float), n // 2, mode='reflect')
  m = 1 + (len(yp) - n) // hop
  f = np.arange(n // 2 + 1)[:, None]
  basis = np.exp(-2j * np.pi * f * np.arange(n)[None] / n)     # (bins, n)
  s = np.stack([np.abs(basis @ (w * yp[j * hop:j * hop + n])) for j in range(m)], 1)
  s = np.log1p(s)
  s = np.pad(s, ((0, 0), (0, max(0, 101 - m))))[:, :101]
  return (s - s.mean()) / s.std(ddof=1) if s.std() > 0 else s


def test_spectrogram_matches_the_formula_on_a_tone_silence_short_and_long_clips():
  rng = np.random.default_rng(0)
  for seconds in (1.0, 0.37, 1.6):
    y = 0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
    got = sc.spectrogram(y)
    assert got.shape == (161, 101, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., 0], _direct_spectrogram(y), atol=2e-5)
  # A 1 kHz tone: its energy is in bin 1000 / (16000 / 320) = 20 in every frame whose
  # window lies inside the clip (the two edge frames hold reflected padding).
  t = np.arange(16000) / 16000
  tone = sc.spectrogram(0.5 * np.sin(2 * np.pi * 1000 * t))[..., 0]
  assert np.all(np.argmax(tone[:, 1:-1], axis=0) == 20)
  # Silence: log1p(0) = 0 everywhere, std 0: left unnormalised (all zeros).
  assert np.all(sc.spectrogram(np.zeros(16000)) == 0)
  # A short clip is zero-padded to 101 frames: 0.37 s has 1 + 5920 // 160 = 38 frames,
  # after which every column holds the same (z-scored zero) value.
  short = sc.spectrogram(0.1 * rng.standard_normal(5920))[..., 0]
  assert np.ptp(short[:, 38:]) == 0 and np.ptp(short[:, 37]) > 0
  # A long clip is truncated to 101 frames: those of 2 s are those of its first 1.01 s
  # (frame 100 ends at sample 16160), and differ from those of a later part.
  y2 = 0.1 * rng.standard_normal(32000)
  np.testing.assert_allclose(sc.spectrogram(y2), sc.spectrogram(y2[:16160]), atol=1e-6)
  assert not np.allclose(sc.spectrogram(y2), sc.spectrogram(y2[160:]), atol=1e-2)


def test_read_wav_scaling_and_errors():
  x = np.array([0.0, 0.5, -0.5, 0.999])
  got = sc.read_wav(sf.wav_bytes(x), 'a.wav')
  np.testing.assert_allclose(got, np.round(x * 32767) / 32768)
  with pytest.raises(sc.AudioError, match=r'a\.wav is sampled at 8000 Hz'):
    sc.read_wav(sf.wav_bytes(x, rate=8000), 'a.wav')
  with pytest.raises(sc.AudioError, match=r'b\.wav is truncated'):
    sc.read_wav(sf.wav_bytes(np.zeros(1000), truncate=300), 'b.wav')
  with pytest.raises(sc.AudioError, match=r'c\.wav is not a readable WAV'):
    sc.read_wav(b'RIFF\x00\x00', 'c.wav')


@pytest.fixture(scope='module')
def speech_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp('gsc_raw')
  sf.write_tar(str(raw / sc.ARCHIVE), sf.speech_files(per_word=3))
  return str(raw)


def _cfg(raw, tfds_dir, arg='smoke', **data):
  from configs import speech_commands
  return archives.data_config(speech_commands, raw, tfds_dir, arg, **data)


def test_builder_splits_by_the_official_lists_archive_and_folder_agree(speech_raw, tmp_path):
  c = _cfg(speech_raw, str(tmp_path / 'tfds_a'), train_limit=0, val_limit=0, test_limit=0)
  a = pipeline.load_splits(c.data)
  # 3 clips per word: the 1st trains, the 2nd validates, the 3rd tests; noise is no class.
  assert a.train_x.shape == (30, 161, 101, 1) and a.train_x.dtype == np.float32
  assert len(a.val_x) == len(a.test_x) == 30
  assert sorted(a.train_y) == list(range(30)) and list(a.test_y) == list(range(30))
  # The stored features are the featurizer's on the WAV in the archive.
  wav = sf.speech_files(per_word=3)['bed/00000002_nohash_0.wav']
  np.testing.assert_array_equal(a.test_x[0], sc.spectrogram(sc.read_wav(wav, 'x')))
  # The extracted tree gives the same splits.
  sf.write_folder(str(tmp_path / 'raw' / sc.FOLDER), sf.speech_files(per_word=3))
  c = _cfg(str(tmp_path / 'raw'), str(tmp_path / 'tfds_f'), train_limit=0, val_limit=0,
           test_limit=0)
  b = pipeline.load_splits(c.data)
  for name in ('val_x', 'test_x', 'val_y', 'test_y'):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  assert sorted(map(tuple, a.train_x.reshape(30, -1)[:, :3])) == sorted(
      map(tuple, b.train_x.reshape(30, -1)[:, :3]))


@pytest.mark.parametrize('damage,match', [
    ('rate', r'member bed/00000000_nohash_0.wav is sampled at 8000 Hz'),
    ('truncated', r'member bed/00000000_nohash_0.wav is truncated'),
    ('no_list', r'speech_commands_v0.01.tar.gz is corrupt \(it has no testing_list.txt'),
    ('listed_absent', r'the lists name 1 clip\(s\) it does not hold, first: bed/'),
])
def test_bad_archives_are_named(tmp_path, damage, match):
  files = sf.speech_files(per_word=3)
  bad = 'bed/00000000_nohash_0.wav'
  if damage == 'rate':
    files[bad] = sf.wav_bytes(np.zeros(16000), rate=8000)
  elif damage == 'truncated':
    files[bad] = sf.wav_bytes(np.zeros(16000), truncate=5000)
  elif damage == 'no_list':
    del files['testing_list.txt']
  else:
    del files['bed/00000002_nohash_0.wav']    # listed for test
  sf.write_tar(str(tmp_path / sc.ARCHIVE), files)
  with pytest.raises(builders.RawFileError, match=match) as err:
    for examples in builders.read_raw('speech_commands', str(tmp_path), download=False).values():
      list(examples)
  if damage in ('rate', 'truncated'):   # the clip is bad, not the archive
    assert 'is corrupt' not in str(err.value)


def test_truncated_archive_is_named(tmp_path):
  sf.write_tar(str(tmp_path / 'full.tar.gz'), sf.speech_files(per_word=3))
  data = (tmp_path / 'full.tar.gz').read_bytes()
  (tmp_path / sc.ARCHIVE).write_bytes(data[:len(data) // 2])
  with pytest.raises(builders.RawFileError, match=r'speech_commands_v0.01.tar.gz is corrupt'):
    for examples in builders.read_raw('speech_commands', str(tmp_path), download=False).values():
      list(examples)


def test_missing_list_file_in_a_folder_is_named(tmp_path):
  files = sf.speech_files(per_word=3)
  del files['validation_list.txt']
  sf.write_folder(str(tmp_path / sc.FOLDER), files)
  with pytest.raises(builders.RawFileError, match=r'validation_list.txt is missing'):
    builders.read_raw('speech_commands', str(tmp_path), download=False)


def test_the_original_speech_models_shapes():
  from pmjax import models
  x = jax.ShapeDtypeStruct((2, 161, 101, 1), np.float32)
  for name, flat in (('vgg11_speech', 7680), ('lenet_speech', 16280)):
    m = models.get_model(name, 30)
    out, v = jax.eval_shape(lambda x: m.init_with_output(jax.random.key(0), x), x)
    assert out.shape == (2, 30)
    dense = sorted((k, p['kernel'].shape) for k, p in v['params'].items() if 'Dense' in k)
    assert dense[0][1][0] == flat                     # the flattened feature map
    assert dense[-1][1] == ((512 if name == 'vgg11_speech' else 1000), 30)


def test_concat_tiles_spectrograms_whose_size_no_grid_divides():
  from pmjax import codes
  x = np.random.default_rng(0).standard_normal((1, 2, 161, 101, 1)).astype(np.float32)
  code = codes.make_code('concat', 2, 1, image_shape=(161, 101, 1))
  p = np.asarray(code.encode(x))
  assert p.shape == (1, 1, 161, 101, 1) and np.all(p[..., 100, :] == 0)   # 2 x 50 columns
  assert codes.concat_grid(4, (161, 101, 1)) == (2, 2)
  assert codes.concat_grid(2, (28, 28, 1)) == (1, 2)      # dividing grids are unchanged


@pytest.fixture(scope='module')
def speech_run(speech_raw, tmp_path_factory):
  from pmjax import train
  root = tmp_path_factory.mktemp('gsc_run')
  c = _cfg(speech_raw, str(root / 'tfds'))
  c.data.device_limit_mb = 0   # stream, as the full training split would
  return root, train.train_and_evaluate(c, str(root / 'w'))


@pytest.mark.slow
def test_speech_smoke_base_parity_evaluate(speech_run):
  root, res = speech_run
  saved = json.load(open(root / 'w' / 'results.json'))
  assert saved['dataset'] == 'speech_commands' and saved['code'] == 'sum'
  for key in ('A_a', 'A_d_top1', 'A_d_top5', 'recon_top1'):
    assert 0.0 <= saved[key] <= 1.0
  assert len(res['A_d_by_position']) == 2 and saved['num_examples'] == 16


@pytest.mark.skipif(__import__('shutil').which('espeak-ng') is None,
                    reason='espeak-ng is not installed (apt-get install -y espeak-ng)')
def test_espeak_synthetic_set_is_written_in_the_canonical_layout(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.run([sys.executable, 'launch/speech_espeak_synthetic.py', '--out',
                      str(tmp_path / 'raw'), '--train_speakers=1', '--val_speakers=1',
                      '--test_speakers=1'], capture_output=True, text=True, timeout=300,
                     cwd=repo)
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'SYNTHETIC' in p.stdout
  c = _cfg(str(tmp_path / 'raw'), str(tmp_path / 'tfds'), train_limit=0, val_limit=0,
           test_limit=0)
  s = pipeline.load_splits(c.data)
  assert len(s.train_x) == len(s.val_x) == len(s.test_x) == 30
  assert sorted(s.test_y) == list(range(30)) and np.all(np.isfinite(s.test_x))
  assert s.test_x.std() > 0.5     # z-scored spectrograms of real (synthetic) speech


@pytest.mark.slow
def test_serving_loop_answers_spectrogram_queries(speech_run):
  """The in-process serving bench on a speech workdir: float32 spectrogram queries, a
  straggler's answers reconstructed."""
  from configs import serving
  from pmjax.serving import bench
  root, _ = speech_run
  parts = bench.make_parts(str(root / 'w' / 'parity'))
  assert parts.query_shape == (161, 101, 1) and parts.query_dtype == np.float32
  s = serving.get_config('smoke')
  s.faults.update(dict(slow_instances='base0', slow_prob=0.3, slow_ms=150.0))
  s.queries, s.warmup, s.rate = 40, 4, 80.0
  summary = bench.run_mode('coded', parts, s)
  assert summary['lost'] == 0 and summary['num_reconstructed'] > 0
  assert 0.0 <= summary['accuracy'] <= 1.0


def test_default_manual_dir_finds_an_extracted_tree(tmp_path, monkeypatch):
  (tmp_path / 'speech_commands' / sc.FOLDER).mkdir(parents=True)
  monkeypatch.setenv('PMJAX_MANUAL_DIR', str(tmp_path))
  assert pipeline.default_manual_dir('speech_commands') == str(tmp_path / 'speech_commands')
  assert pipeline.default_manual_dir('cub_localization') != str(tmp_path / 'cub_localization')
