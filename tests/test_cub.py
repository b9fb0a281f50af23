"""CUB-200-2011 localisation: the builder on tiny synthetic archives in the canonical
layouts, its errors, the box score (IoU), and smoke runs base -> parity -> evaluate
and the serving bench on a localisation workdir."""

import json
import os

import numpy as np
import pytest

from pmjax import metrics
from pmjax.data import builders, cub, pipeline
from pmjax.data import synthetic as sf
from tests import archives


def _cub_tar(path, files):
  return sf.write_tar(path, files, prefix=f'{cub.FOLDER}/')


@pytest.fixture(scope='module')
def cub_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp('cub_raw')
  _cub_tar(str(raw / cub.ARCHIVE), sf.cub_files(n_classes=4, per_class=12))
  return str(raw)


def _cfg(raw, tfds_dir, arg='smoke', **data):
  from configs import cub_localization
  return archives.data_config(cub_localization, raw, tfds_dir, arg, **data)


def test_box_iou_and_the_model_coordinates():
  a = np.array([[0.1, 0.2, 0.4, 0.4], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]], np.float32)
  b = np.array([[0.1, 0.2, 0.4, 0.4], [0.25, 0.0, 0.5, 0.5], [0.5, 0.5, 0.2, 0.2]], np.float32)
  np.testing.assert_allclose(metrics.box_iou(a, b), [1.0, 0.125 / 0.375, 0.0], atol=1e-6)
  out = metrics.unit_box_to_model(a)
  np.testing.assert_allclose(metrics.model_box_to_unit(out), a, atol=1e-6)
  # A box reaching outside the image is cropped to it before its IoU is taken.
  wide = metrics.unit_box_to_model(np.array([[-0.5, 0.0, 1.0, 1.0]], np.float32))
  np.testing.assert_allclose(metrics.model_box_to_unit(wide), [[0.0, 0.0, 0.5, 1.0]], atol=1e-6)
  score = metrics.LOCALIZATION
  got = score.correct(out, b)
  assert list(np.asarray(got['iou50'])) == [True, False, False]
  assert score.correct_one(out[0], b[0]) and not score.correct_one(out[1], b[1])


def test_builder_resizes_and_normalises_boxes_official_split(cub_raw, tmp_path):
  c = _cfg(cub_raw, str(tmp_path / 'tfds'), train_limit=0, test_limit=0, num_val=4)
  s = pipeline.load_splits(c.data)
  # 4 classes x 12: every 3rd image of a class is test (16), the rest train (28 + 4 val).
  assert s.test_x.shape == (16, 224, 224, 3) and len(s.train_x) + len(s.val_x) == 32
  assert s.train_y.dtype == np.float32 and s.train_y.shape[1:] == (4,)
  # Boxes match the bright rectangle drawn at them, after the resize to 224x224.
  for x, box in zip(s.test_x, s.test_y):
    x0, y0, w, h = box * 224
    inside = x[int(y0) + 3:int(y0 + h) - 3, int(x0) + 3:int(x0 + w) - 3].mean()
    assert inside > 180 and x.mean() < inside
  # Training is interleaved over the classes: the validation tail spans all four; test
  # keeps images.txt order.
  paths = {str(i): f'{c:03d}.Bird/{i}.jpg' for i, c in zip(range(1, 33), [1] * 9 + [2] * 8
                                                               + [3] * 8 + [4] * 7)}
  order = cub._order(list(paths), paths, is_train=True)
  assert sorted(order, key=int) == sorted(paths, key=int)
  assert sorted(paths[i][:3] for i in order[-3:]) == ['001', '002', '003']
  assert cub._order(list(paths), paths, is_train=False) == list(paths)
  # The folder layout gives the same data.
  sf.write_folder(str(tmp_path / 'raw' / cub.FOLDER), sf.cub_files(n_classes=4, per_class=12))
  c = _cfg(str(tmp_path / 'raw'), str(tmp_path / 'tfds2'), train_limit=0, test_limit=0, num_val=4)
  s2 = pipeline.load_splits(c.data)
  np.testing.assert_array_equal(s.test_y, s2.test_y)
  np.testing.assert_array_equal(s.train_x, s2.train_x)


@pytest.mark.parametrize('damage,match', [
    ('box', r'bounding_boxes.txt, image id 2 \(001.Bird_0/Bird_0_0001_2.jpg\): box .* lies '
            r'outside its'),
    ('no_split', r'CUB_200_2011.tgz is corrupt \(it has no CUB_200_2011/train_test_split.txt'),
    ('no_image', r'images.txt names 1 image\(s\) it does not hold'),
])
def test_bad_archives_are_named(tmp_path, damage, match):
  files = sf.cub_files(n_classes=1, per_class=3)
  if damage == 'box':
    rows = files['bounding_boxes.txt'].decode().splitlines()
    rows[1] = '2 10.0 10.0 5000.0 20.0'
    files['bounding_boxes.txt'] = '\n'.join(rows).encode()
  elif damage == 'no_split':
    del files['train_test_split.txt']
  else:
    del files[next(n for n in files if n.endswith('_2.jpg'))]
  _cub_tar(str(tmp_path / cub.ARCHIVE), files)
  with pytest.raises(builders.RawFileError, match=match):
    for examples in builders.read_raw('cub_localization', str(tmp_path), download=False).values():
      list(examples)


def test_missing_text_file_in_a_folder_is_named(tmp_path):
  files = sf.cub_files(n_classes=1, per_class=3)
  del files['bounding_boxes.txt']
  sf.write_folder(str(tmp_path / cub.FOLDER), files)
  with pytest.raises(builders.RawFileError, match=r'CUB_200_2011/bounding_boxes.txt is missing'):
    builders.read_raw('cub_localization', str(tmp_path), download=False)


def test_learned_code_is_refused_for_boxes(cub_raw, tmp_path):
  from pmjax import config_utils, tasks
  c = _cfg(cub_raw, str(tmp_path / 'tfds'), 'smoke,stage=parity,code=learned')
  with pytest.raises(config_utils.ConfigError, match="trains towards F's class prob"):
    tasks.LearnedTask(c, None, 16, None)


@pytest.fixture(scope='module')
def cub_run(cub_raw, tmp_path_factory):
  from pmjax import train
  root = tmp_path_factory.mktemp('cub_run')
  c = _cfg(cub_raw, str(root / 'tfds'))
  res = train.train_and_evaluate(c, str(root / 'w'))
  return str(root), c, res


@pytest.mark.slow
def test_cub_smoke_base_parity_evaluate_scores_boxes(cub_run):
  root, c, res = cub_run
  saved = json.load(open(os.path.join(root, 'w', 'results.json')))
  assert saved['dataset'] == 'cub_localization' and saved['code'] == 'sum'
  for key in ('A_a', 'A_a_iou', 'A_d_iou50', 'A_d_iou', 'recon_iou50', 'recon_iou'):
    assert 0.0 <= saved[key] <= 1.0, key
  assert set(saved['A_o']) and len(saved['A_d_by_position']) == 2
  rows = [json.loads(l) for l in open(os.path.join(root, 'w', 'parity', 'metrics.jsonl'))]
  assert all('val_recon_iou50' in r and 'val_A_d_iou' in r for r in rows)
  base_rows = [json.loads(l) for l in open(os.path.join(root, 'w', 'base', 'metrics.jsonl'))]
  assert all(np.isfinite(r['train_loss']) and 'val_A_a_iou' in r for r in base_rows)


@pytest.mark.slow
def test_serving_bench_on_a_localization_workdir(cub_run, tmp_path):
  import subprocess
  import sys
  root, c, _ = cub_run
  out = tmp_path / 'serve'
  cmd = [sys.executable, '-m', 'pmjax.serving.bench', '--config=configs/serving.py',
         f'--config.workdir={os.path.join(root, "w", "parity")}', f'--config.out={out}',
         '--config.modes=coded,equal', '--config.queries=60', '--config.warmup=4',
         '--config.rate=60', '--config.m=2', '--config.faults.slow_instances=base0',
         '--config.faults.slow_prob=0.3', '--config.faults.slow_ms=200']
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert p.returncode == 0, p.stderr[-3000:]
  summary = json.load(open(out / 'summary.json'))['results']
  coded = summary['coded']
  assert coded['lost'] == 0 and coded['num_reconstructed'] > 0
  assert 0.0 <= coded['accuracy'] <= 1.0 and coded['accuracy_reconstructed'] is not None


@pytest.mark.slow
def test_sweep_summary_reads_box_metrics(cub_run, tmp_path):
  from pmjax import report
  root, _, _ = cub_run
  out = report.summarize_sweep(os.path.join(root, 'w'), str(tmp_path / 'plots'))
  table = open(os.path.join(root, 'w', 'summary.md')).read()
  row = next(l for l in table.splitlines() if '| cub_localization |' in l and '| sum |' in l)
  saved = json.load(open(os.path.join(root, 'w', 'results.json')))
  assert f"| {saved['A_d_iou50']:.4f} | {saved['A_d_iou']:.4f} |" in row
  assert len(out['plots']) == 3


def test_servers_describe_a_box_answer_and_score_it():
  out = metrics.unit_box_to_model(np.array([[0.1, 0.2, 0.5, 0.6]], np.float32))[0]
  d = metrics.LOCALIZATION.describe(np.asarray(out))
  np.testing.assert_allclose(d['box'], [0.1, 0.2, 0.5, 0.6], atol=1e-6)
  assert metrics.CLASSIFICATION.describe(np.array([0.1, 2.0, 0.3])) == {'label': 1}


@pytest.mark.parametrize('dataset', ['speech_commands', 'cub_localization'])
def test_synthetic_archive_entry_point(tmp_path, dataset):
  sf.main([f'--dataset={dataset}', f'--out={tmp_path}', '--per_word=3', '--n_classes=1',
           '--per_class=3'])
  raw = builders.read_raw(dataset, str(tmp_path), download=False)
  assert sum(1 for e in raw.values() for _ in e) == (90 if dataset == 'speech_commands' else 3)


def _original_split(images_txt, ratio):
  """cub-localization/box_util.py's split(), verbatim but for the file path."""
  import math
  import random
  with open(images_txt) as f:
    lines = f.read().splitlines()
  class_groups = dict()
  for line in lines:
    value, line = line.split(' ', 1)
    key = line.split('.', 1)[0]
    if key in class_groups:
      class_groups[key].append(value)
    else:
      class_groups[key] = [value]
  test_id = []
  random.seed(32)
  for _, group in class_groups.items():
    test_id.extend(random.sample(group, int(math.ceil(len(group) * ratio))))
  train_id = [i for i in map(str, range(1, len(lines) + 1)) if i not in test_id]
  return train_id, test_id


def test_parm_split_is_the_originals(tmp_path):
  files = sf.cub_files(n_classes=5, per_class=11)
  (tmp_path / 'images.txt').write_bytes(files['images.txt'])
  train_id, test_id = _original_split(str(tmp_path / 'images.txt'), 0.2)
  paths = dict(l.split(' ', 1) for l in files['images.txt'].decode().splitlines())
  got = cub.parm_split(paths)
  assert sorted(i for i, t in got.items() if not t) == sorted(test_id) and len(test_id) == 15
  assert sorted(i for i, t in got.items() if t) == sorted(train_id)
  _cub_tar(str(tmp_path / cub.ARCHIVE), files)
  raw = builders.read_raw('cub_localization_parm_split', str(tmp_path), download=False)
  assert sum(1 for _ in raw['test']) == 15 and sum(1 for _ in raw['train']) == 40


@pytest.mark.slow
def test_a_localization_workdir_served_over_ray_answers_fs_boxes(cub_run):
  """The box workdir on Ray Serve over HTTP (coded: 2 base + 1 parity replica): every
  answer that is F's own carries F's box ([x, y, w, h], fractions of the image), and a
  straggling base replica's queries are rebuilt as boxes too."""
  pytest.importorskip('ray.serve')
  pytest.importorskip('httpx')
  from pmjax.serving import bench, cluster
  from pmjax.serving.instance import CompiledPredict
  from tests.test_cluster import _free_port, _post_many
  root, _, _ = cub_run
  w = os.path.join(root, 'w', 'parity')
  parts = bench.make_parts(w)
  xs = parts.splits.test_x[:8]
  want = metrics.model_box_to_unit(CompiledPredict(parts.base_fn, parts.base_vars)(xs))
  port = _free_port()
  cluster.init_ray(None, num_cpus=4, port=port)
  try:
    cluster.deploy(cluster.ServeSettings(workdir=w, mode='coded', m=2, replica_cpus=0,
                                         frontend_cpus=0, deadline_ms=60_000,
                                         policy={'flush_ms': 200}))
    cluster.set_faults({'BaseModel': {0: dict(slow_prob=1.0, slow_ms=1500.0, seed=0)}})
    got = _post_many(f'http://127.0.0.1:{port}/predict', xs, gap_s=0.05)
  finally:
    cluster.serve.shutdown()
    cluster.ray.shutdown()
  assert all(status == 200 for status, _ in got), got
  assert all('box' in a and 'label' not in a for _, a in got)
  own = [(a, y) for (_, a), y in zip(got, want) if not a['reconstructed']]
  assert own and all(np.allclose(a['box'], y, atol=1e-4) for a, y in own)
  assert any(a['reconstructed'] for _, a in got)        # base0's queries, rebuilt
