"""The streaming input path alone: examples/s per reader-thread count, the training
loop's input wait, and peak memory as the dataset grows.

    python -m pmjax.bench.input_pipeline --dataset=cifar10 --threads=1,2,4 \
        --examples=20000 --train_limit=8192 --rss_gb=1,8 --jpeg_examples=2000

1. Throughput: `stream.ChunkReader` (grain threads) reading `--examples`
   training examples of the prepared `--dataset` in a random epoch order, in
   the chunks a training run reads (`--batch` groups x `--steps_per_call`
   steps), for each thread count; and the same for synthetic 224x224x3 JPEG
   records (decoded with Pillow in the reader threads), `--jpeg_examples`.
2. Input wait: a streamed base training run of `--model` on the first
   `--train_limit` examples (CIFAR-10: configs/cifar10.py's recipe, on-device
   crop + flip); of its second epoch (the first compiles), `metrics.jsonl`'s
   `input_wait_s` over `train_time_s` (the first call's read, which nothing
   can hide, included).
3. Memory: for each size in `--rss_gb`, a synthetic array_record set of 32x32x3
   images of that size is written to `--scratch` and a child process reads
   the same number of examples (`--rss_examples`, at random positions over
   the whole set) through the reader; its peak RSS is reported.

Prints one JSON line per measurement and a summary table.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from pmjax.data import stream


class RawImages:
  """A random-access source over an array_record file of raw (or JPEG) image
  records with a 4-byte label prefix: `__getitems__` -> [{'image', 'label'}]."""

  def __init__(self, path: str, shape: tuple, jpeg: bool = False):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    self.ds = array_record_data_source.ArrayRecordDataSource(path)
    self.shape, self.jpeg = tuple(shape), jpeg

  def __len__(self):
    return len(self.ds)

  def __getitems__(self, indices):
    out = []
    for rec in self.ds.__getitems__(list(indices)):
      label = int.from_bytes(rec[:4], 'little')
      if self.jpeg:
        from PIL import Image  # pylint: disable=g-import-not-at-top
        image = np.asarray(Image.open(io.BytesIO(rec[4:])).convert('RGB'))
      else:
        image = np.frombuffer(rec[4:], np.uint8).reshape(self.shape)
      out.append({'image': image, 'label': label})
    return out


def write_synthetic(path: str, n: int, shape: tuple, jpeg: bool = False, seed: int = 0):
  """n records of random images (JPEG-encoded with quality 90 when `jpeg`)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  block = 4096
  for start in range(0, n, block):
    m = min(block, n - start)
    images = rng.integers(0, 256, (m, *shape), dtype=np.uint8)
    for i in range(m):
      label = int((start + i) % 10).to_bytes(4, 'little')
      if jpeg:
        from PIL import Image  # pylint: disable=g-import-not-at-top
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format='JPEG', quality=90)
        writer.write(label + buf.getvalue())
      else:
        writer.write(label + images[i].tobytes())
  writer.close()


def read_rate(source, n_examples: int, threads: int, batch: int = 128, steps: int = 8,
              seed: int = 0) -> dict:
  """Examples/s of `ChunkReader` over `source` (a 1-device mesh), random order."""
  batch = max(1, min(batch, n_examples, len(source)))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  train = stream.TrainSource(source, 0, len(source), source_shape(source))
  reader = stream.ChunkReader(train, {}, mesh, batch, 1, threads)
  n_steps = max(1, min(n_examples, len(source)) // batch)
  perm = np.random.default_rng(seed).permutation(len(source))[:n_steps * batch]
  plan = [(f, min(steps, n_steps - f)) for f in range(0, n_steps, steps)]
  t = time.perf_counter()
  got = 0
  for chunk in reader.epoch(perm, plan):
    jax.block_until_ready(chunk)
    got += chunk['train_x'].shape[0]
  dt = time.perf_counter() - t
  return {'examples': got, 'seconds': dt, 'examples_per_s': got / dt, 'threads': threads}


def source_shape(source) -> tuple:
  return tuple(source.__getitems__([0])[0]['image'].shape)


def train_wait(dataset: str, model: str, train_limit: int, batch: int, threads: int) -> dict:
  """One streamed epoch of a base model: the input wait against the training time."""
  from configs import cifar10, default  # pylint: disable=g-import-not-at-top
  from pmjax import metrics, train  # pylint: disable=g-import-not-at-top
  arg = f'stage=base,base_epochs=2,model={model}'
  c = (cifar10.get_config(arg) if dataset == 'cifar10'
       else default.get_config(arg, dataset=dataset))
  c.data.update(dict(pipeline='stream', stream_threads=threads, train_limit=train_limit,
                     test_limit=1000, num_val=1000))
  c.base.batch_size, c.progress_bar, c.eval_batch_size = batch, False, 500
  with tempfile.TemporaryDirectory() as w:
    train.train_and_evaluate(c, w)
    row = metrics.read_metrics(w)[-1]
  return {'dataset': dataset, 'model': model, 'examples': train_limit, 'batch': batch,
          'threads': threads, 'train_time_s': row['train_time_s'],
          'input_wait_s': row['input_wait_s'],
          'input_wait_fraction': row['input_wait_s'] / row['train_time_s']}


def rss_child(path: str, n_examples: int, threads: int) -> dict:
  """Run in a child process: read n_examples at random positions; report peak RSS."""
  source = RawImages(path, (32, 32, 3))
  before = _peak_rss_mb()
  r = read_rate(source, n_examples, threads)
  return {**r, 'dataset_gb': os.path.getsize(path) / 2**30, 'records': len(source),
          'peak_rss_mb': _peak_rss_mb(), 'rss_before_read_mb': before}


def _peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM: unlike getrusage's ru_maxrss, not
  inherited from the parent across fork + exec)."""
  with open('/proc/self/status') as fh:
    for line in fh:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  f = flags.FLAGS
  threads_list = [int(t) for t in f.threads]
  if f.rss_child:
    print(json.dumps(rss_child(f.rss_child, f.rss_examples, max(threads_list))))
    return
  rows = []
  if f.examples:
    from pmjax.data import pipeline  # pylint: disable=g-import-not-at-top
    from configs import default  # pylint: disable=g-import-not-at-top
    c = default.get_config(dataset=f.dataset)
    c.data.pipeline = 'stream'
    splits = pipeline.load_splits(c.data)
    for threads in threads_list:
      r = {'measure': 'read', 'dataset': f.dataset,
           **read_rate(splits.train_x.source.source, f.examples, threads)}
      rows.append(r)
      print(json.dumps(r), flush=True)
  if f.jpeg_examples:
    with tempfile.TemporaryDirectory(dir=f.scratch) as d:
      path = os.path.join(d, 'jpeg224.array_record')
      write_synthetic(path, f.jpeg_examples, (224, 224, 3), jpeg=True)
      for threads in threads_list:
        r = {'measure': 'read', 'dataset': 'synthetic jpeg 224x224x3',
             **read_rate(RawImages(path, (224, 224, 3), jpeg=True), f.jpeg_examples,
                         threads, batch=32)}
        rows.append(r)
        print(json.dumps(r), flush=True)
  if f.train_limit:
    r = {'measure': 'train_wait', **train_wait(f.dataset, f.model, f.train_limit, f.batch,
                                                max(threads_list))}
    rows.append(r)
    print(json.dumps(r), flush=True)
  for gb in [float(g) for g in f.rss_gb]:
    with tempfile.TemporaryDirectory(dir=f.scratch) as d:
      path = os.path.join(d, f'synthetic_{gb:g}gb.array_record')
      n = int(gb * 2**30 // (32 * 32 * 3 + 4))
      t = time.perf_counter()
      write_synthetic(path, n, (32, 32, 3))
      written_s = time.perf_counter() - t
      out = subprocess.run([sys.executable, '-m', 'pmjax.bench.input_pipeline',
                            f'--rss_child={path}', f'--rss_examples={f.rss_examples}',
                            f'--threads={max(threads_list)}'],
                           capture_output=True, text=True, check=True)
      r = {'measure': 'rss', 'write_s': written_s, **json.loads(out.stdout.splitlines()[-1])}
      rows.append(r)
      print(json.dumps(r), flush=True)
  print('\n| measure | data | threads | examples/s | other |')
  print('|---|---|---|---|---|')
  for r in rows:
    if r['measure'] == 'read':
      print(f"| read | {r['dataset']} | {r['threads']} | {r['examples_per_s']:.0f} | |")
    elif r['measure'] == 'train_wait':
      print(f"| train wait | {r['dataset']} {r['model']}, {r['examples']} examples | "
            f"{r['threads']} | | input wait {r['input_wait_s']:.2f} s of "
            f"{r['train_time_s']:.2f} s ({100 * r['input_wait_fraction']:.1f}%) |")
    else:
      print(f"| rss | synthetic {r['dataset_gb']:.2f} GB ({r['records']} records) | "
            f"{r['threads']} | {r['examples_per_s']:.0f} | peak RSS {r['peak_rss_mb']:.0f} MB "
            f"reading {r['examples']} examples ({r['rss_before_read_mb']:.0f} MB before) |")


if __name__ == '__main__':
  flags.DEFINE_string('dataset', 'cifar10', 'Prepared dataset to read (its training set).')
  flags.DEFINE_list('threads', ['1', '2', '4'], 'Reader thread counts.')
  flags.DEFINE_integer('examples', 20000, 'Examples read per thread count (0: skip).')
  flags.DEFINE_integer('jpeg_examples', 0, 'Synthetic 224x224x3 JPEG records (0: skip).')
  flags.DEFINE_integer('train_limit', 0, 'Streamed training epoch on this many examples '
                       '(0: skip).')
  flags.DEFINE_string('model', 'resnet8', 'Model of the streamed training epoch.')
  flags.DEFINE_integer('batch', 128, 'Batch of the training epoch.')
  flags.DEFINE_list('rss_gb', [], 'Synthetic dataset sizes (GB) for the memory measure.')
  flags.DEFINE_integer('rss_examples', 100000, 'Examples read at each size.')
  flags.DEFINE_string('scratch', None, 'Where synthetic sets are written (default: tmp).')
  flags.DEFINE_string('rss_child', '', 'Internal: the child process of the memory measure.')
  app.run(main)
