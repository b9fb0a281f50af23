"""Streaming training input: each jitted call reads only the examples it uses.

The in-memory path (`config.data.pipeline='device'`) puts the whole training
set on every device and gathers each step's groups there. The streaming path
(`'stream'`) never holds the training set: for each call of n steps it reads,
from the prepared tfds `data_source` (array_record, random access), exactly the
examples those steps use, in the same epoch permutation and at the same
positions, and each process only those of its own devices
(`jax.process_index()`); grain worker threads read and decode blocks of records
ahead of the step (`ReadOptions(num_threads, prefetch_buffer_size)`), and the
chunk goes to the devices sharded over the 'data' axis. The step then gathers
from its chunk instead of from the whole set, with the same per-example random
keys, so both paths compute the same batches and the same result (tested, also
on 2 devices): a run may switch paths on resume (`data.pipeline` is not part of
a run's identity), and its order is a function of (seed, epoch) only.
Checkpoints are written at epoch ends, so the reader's position in a resumed
run is the start of the next epoch: a run killed mid-epoch re-reads that epoch
from its start, exactly.

`'auto'` streams when the training images exceed `data.device_limit_mb`.
Validation and test sets are still read whole (they are evaluated by F).
"""

from __future__ import annotations

import math
import queue
import threading
import time

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BLOCK = 256   # records per grain read


class TrainSource:
  """The training examples [start, stop) of a tfds split's data source, read by index."""

  def __init__(self, source, start: int, stop: int, image_shape: tuple,
               dtype='uint8', label_shape: tuple = ()):
    self.source, self.start, self.stop = source, start, stop
    self.image_shape = tuple(image_shape)
    self.dtype = np.dtype(dtype)                 # the stored inputs (uint8 images, ...)
    self.label_shape = tuple(label_shape)        # () class indices; (4,) float boxes
    self.label_dtype = np.dtype(np.int32 if self.label_shape == () else np.float32)

  def __len__(self):
    return self.stop - self.start

  def read(self, indices) -> tuple:
    """(inputs NxHxWxC, labels N or Nx4) of training examples `indices`, in the
    dataset's stored dtypes (uint8 images and int32 classes for an image classifier)."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f'training example indices must be in [0, {len(self)})')
    records = self.source.__getitems__([int(i) + self.start for i in indices])
    if not records:
      return (np.zeros((0, *self.image_shape), self.dtype),
              np.zeros((0, *self.label_shape), self.label_dtype))
    return (np.stack([r['image'] for r in records]).astype(self.dtype),
            np.asarray([r['label'] for r in records], self.label_dtype))


class SourceArray:
  """A read-only, array-like view of one field of a `TrainSource` (images or labels):
  `shape`, `dtype`, `len`, and `x[a:b]` / `x[indices]` read from the files."""

  def __init__(self, source: TrainSource, field: int):
    self.source, self.field = source, field   # 0: images, 1: labels
    self.dtype = source.dtype if field == 0 else source.label_dtype
    self.shape = (len(source), *(source.image_shape if field == 0 else source.label_shape))
    self.ndim = len(self.shape)
    self.nbytes = math.prod(self.shape) * self.dtype.itemsize

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, key):
    if isinstance(key, slice):
      key = range(*key.indices(len(self)))
    return self.source.read(np.asarray(key))[self.field]

  def __array__(self, dtype=None, copy=None):
    raise TypeError('a streamed training set is not loaded whole; read it by index '
                    '(x[indices]) or use config.data.pipeline="device"')


def wants_stream(data_cfg, train_images_bytes: int) -> bool:
  """Whether to stream: `data.pipeline` 'stream' or 'device', or 'auto' by size."""
  choice = data_cfg.get('pipeline', 'auto')
  if choice not in ('auto', 'device', 'stream'):
    raise ValueError(f"config.data.pipeline={choice!r} is unknown; accepted: 'auto', "
                     f"'device', 'stream'")
  if choice == 'auto':
    return train_images_bytes > data_cfg.get('device_limit_mb', 1024) * 2**20
  return choice == 'stream'


class ChunkReader:
  """Reads the examples of each call of an epoch, per process, ahead of the step.

  `source` gives images and labels ('train_x', 'train_y'); `per_example` are
  host arrays with one row per training example (e.g. F's outputs, 'targets').
  For a call of n steps starting at `first`, device g (mesh order) gets the
  examples perm[((first + s) * B + g * b) * k : ... + b * k] for s < n (B the
  global batch of groups, b = B / devices, k the group size), in step order.
  """

  def __init__(self, source: TrainSource, per_example: dict, mesh, global_batch: int,
               group_size: int, num_threads: int = 4):
    self.source, self.per_example = source, per_example
    self.mesh, self.k = mesh, group_size
    devices = list(mesh.devices.flat)
    self.per_device = global_batch // len(devices)
    self.global_batch = global_batch
    self.local = [g for g, d in enumerate(devices) if d.process_index == jax.process_index()]
    self.sharding = NamedSharding(mesh, P('data'))
    self.num_devices = len(devices)
    self.num_threads = num_threads

  def _local_indices(self, perm: np.ndarray, first: int, n: int) -> np.ndarray:
    b, k, B = self.per_device, self.k, self.global_batch
    if len(perm) < (first + n) * B * k:
      raise ValueError(f'the epoch order has {len(perm)} positions; steps {first}..'
                       f'{first + n} of {B} groups of {k} need {(first + n) * B * k}')
    parts = [perm[((first + s) * B + g * b) * k:((first + s) * B + g * b) * k + b * k]
             for g in self.local for s in range(n)]
    return np.concatenate(parts)

  def _read_block(self, block):
    chunk_id, indices = block
    x, y = self.source.read(indices)
    rows = {'train_x': x, 'train_y': y}
    rows.update({name: a[indices] for name, a in self.per_example.items()})
    return chunk_id, rows

  def epoch(self, perm, plan):
    """Yields one dict of sharded arrays per (first, n) of `plan`, in order; reading
    runs `num_threads` grain threads ahead of the caller."""
    perm = np.asarray(perm)
    blocks, counts = [], []
    for c, (first, n) in enumerate(plan):
      idx = self._local_indices(perm, first, n)
      blocks += [(c, idx[i:i + BLOCK]) for i in range(0, len(idx), BLOCK)]
      counts.append(math.ceil(len(idx) / BLOCK))
    ds = grain.MapDataset.source(blocks).map(self._read_block).to_iter_dataset(
        grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=2 * self.num_threads))
    it = iter(ds)
    for c, (first, n) in enumerate(plan):
      parts = [next(it)[1] for _ in range(counts[c])]
      local = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
      yield {name: self._to_global(a, n) for name, a in local.items()}

  def _to_global(self, local, n):
    rows = n * self.per_device * self.k
    shape = (rows * self.num_devices, *local.shape[1:])
    return jax.make_array_from_process_local_data(self.sharding, local, shape)


class Prefetch:
  """Runs an iterator (a `ChunkReader.epoch`) on a background thread, `depth` items
  ahead; `wait_s` is the time the consumer spent blocked on it: the input wait of
  the training loop (a call cannot start before its examples are on the devices)."""

  _DONE = object()

  def __init__(self, iterator, depth: int = 2):
    self._queue = queue.Queue(depth)
    self.wait_s = 0.0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(iterator,), daemon=True)
    self._thread.start()

  def _fill(self, iterator):
    try:
      for item in iterator:
        while not self._stop.is_set():
          try:
            self._queue.put((item, None), timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put((self._DONE, None))
    except BaseException as e:  # pylint: disable=broad-except
      self._queue.put((self._DONE, e))   # raised in the consumer

  def __iter__(self):
    return self

  def __next__(self):
    t = time.perf_counter()
    item, error = self._queue.get()
    self.wait_s += time.perf_counter() - t
    if error is not None:
      raise error
    if item is self._DONE:
      raise StopIteration
    return item

  def close(self):
    self._stop.set()
