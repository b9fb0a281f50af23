"""The model replicas of the Ray Serve application: one Serve replica runs F or one parity
slot's network on its batches, one at a time, with injected faults and a control surface.

Each replica holds the same `CompiledPredict` of F or of the slot's parity network as the
in-process loop (built from the workdir by `bench.make_parts`), warmed on the serving
shape; its async `predict` runs a batch on one worker thread (a cancelled request's work
still occupies it until done) and skips a batch whose deadline passed while it waited.
`set_faults` / `info` are reached with `handle.broadcast` (`app.set_faults`).
"""

import asyncio
import collections
import concurrent.futures
import gc
import os
import threading
import time

import numpy as np
import ray
from ray import serve

from pmjax.serving.faults import FaultInjector, FaultSpec


def _coded_query_zeros(parts, slot):
  x = np.zeros((1, parts.code.k, *parts.query_shape), parts.query_dtype)
  return np.asarray(parts.encode(x))[:, slot]


class ModelReplica:
  """One replica of F (`kind='base'`) or of parity slot `slot`'s network: the in-process
  loop's `CompiledPredict`, warmed on the serving shape, one request at a time."""

  def __init__(self, workdir: str, kind: str = 'base', slot: int = 0, batch_size: int = 1,
               nice: int = 0):
    if nice:
      os.nice(nice)   # a lower CPU priority (parity replicas sharing a small machine)
    from pmjax.serving import bench  # pylint: disable=g-import-not-at-top
    from pmjax.serving.instance import CompiledPredict  # pylint: disable=g-import-not-at-top
    parts = bench.make_parts(workdir, with_data=False)
    if kind == 'base':
      self._predict = CompiledPredict(parts.base_fn, parts.base_vars)
      zeros = np.zeros((batch_size, *parts.query_shape), parts.query_dtype)
    else:
      self._predict = CompiledPredict(parts.parity_fn, parts.parity_vars[slot])
      zeros = np.repeat(_coded_query_zeros(parts, slot), batch_size, axis=0)
    self._predict(zeros)                     # compile before the first query
    gc.freeze()   # what start-up made is never collected: no long collector pauses later
    self.kind, self.slot = kind, slot
    ctx = serve.get_replica_context()
    self.rank, self.replica = ctx.rank.rank, ctx.replica_tag
    self.node = ray.get_runtime_context().get_node_id()
    self.faults = FaultInjector(FaultSpec())
    self.served = self.abandoned = self.expired = 0
    self.service_s = collections.deque(maxlen=10_000)   # compute time per batch
    # One worker thread: the replica's machine does one thing at a time, and work a
    # caller gave up on (a cancelled request) still occupies it until it is done.
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='predict')

  def _work(self, x, deadline):
    if deadline is not None and time.time() > deadline:
      self.expired += 1                      # nobody can use it any more: not computed
      return None
    t = time.perf_counter()
    out = self._predict(x)
    self.service_s.append(time.perf_counter() - t)
    out = self.faults.maybe_corrupt(out)
    delay = self.faults.extra_delay_s(x.nbytes)
    if delay:
      time.sleep(delay)                      # a straggler: the machine is busy
    return out

  async def predict(self, x, group=None, deadline=None):  # pylint: disable=unused-argument
    """F (or the parity network) on one batch; `group` is read by `GroupRouter`; a batch
    whose `deadline` (wall clock, time.time()) has passed when its turn comes is not
    computed (None)."""
    work = asyncio.get_running_loop().run_in_executor(self._worker, self._work, np.asarray(x),
                                                      deadline)
    try:
      out = await asyncio.shield(work)
    except asyncio.CancelledError:
      self.abandoned += 1
      await work                             # the slot stays taken until the work ends
      raise
    self.served += out is not None
    return out

  def set_faults(self, specs: dict) -> dict:
    """Control call (`handle.broadcast('set_faults', {rank: FaultSpec fields})`): this
    replica takes the spec of its rank (none: no faults). `fail_at_s` makes the process
    exit that many seconds later (replica death)."""
    spec = specs.get(self.rank, specs.get(str(self.rank)))
    self.faults = FaultInjector(FaultSpec(**spec) if spec else FaultSpec())
    if spec and spec.get('fail_at_s') is not None:
      threading.Timer(spec['fail_at_s'], os._exit, (1,)).start()  # pylint: disable=protected-access
    return self.info()

  def info(self) -> dict:
    return {'kind': self.kind, 'slot': self.slot, 'rank': self.rank, 'replica': self.replica,
            'node': self.node, 'pid': os.getpid(), 'served': self.served,
            'abandoned': self.abandoned, 'expired': self.expired, 'wrong_outputs': self.faults.corrupted,
            'service_ms_median': (1e3 * float(np.median(self.service_s))
                                  if self.service_s else None)}

  def check_health(self):
    if self._worker._shutdown:  # pylint: disable=protected-access
      raise RuntimeError('the predict worker is shut down')
