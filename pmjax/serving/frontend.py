"""The serving frontend: one object that a query goes through, from `submit` to its answer.

    fe = Frontend('coded', base_predicts=[F0, F1], parity_predicts=[FP0], k=2,
                  encode=jit(code.encode), decode=jit(code.decode), query_shape=(28, 28, 1))
    fe.start()
    fut = fe.submit(x)            # concurrent.futures.Future -> Response
    fe.close()                    # drains or cancels every pending future

The flow of a query, top to bottom (one lock guards the queues and futures throughout):

1. `submit` (`batching.py`) checks the query and adds it to the pending batch; a full
   batch (`batch_size`, default 1) or, after `flush_timeout_s`, a partial one padded
   with zero queries becomes one `policy.Task` for the mode's policy (`on_batch`).
2. The policy (`coded.py`: `Coded`; `policy.py`: `Hedge`, `Direct`, `Alone`; or any object
   passed as `mode`) decides; `executor.py` carries out what it returns: in `coded` mode
   consecutive batches form coding groups of k, each data batch goes to the shared base
   queue at once, and an encoder thread encodes a group's parity batch for the parity
   queue of each slot; `hedge` re-sends a batch not answered within `hedge_delay_s`.
3. Instances (`instance.py`, one thread each; `RayInstance` of `ray_instance.py` sends
   to Ray Serve replicas instead) take batches from their queue and report back
   (`events.py`): an output, a task skipped past its deadline, or their death.
4. The policy turns each output into actions: answer the batch's queries, or decode a
   missing output as soon as k of the group's k+r outputs are in (with
   `parity_wait_s` > 0 and r >= 2 a missing output waits up to that long for every
   parity), and cancel queued work no longer needed; futures are settled with a
   `Response` or an error (`errors.py`) once the lock is released.

With a verifying policy (`Coded(verify=True)`) every group's parities are computed and
`check(y, avail, z, zavail)` (e.g. `pmjax.codes.byzantine.collage_check`) runs on each
group once its parities are in: `stats()` counts the flagged groups and the instances
blamed. No query is stranded: `deadline_s` (per server, or per query in `submit`) fails a
query with `DeadlineExceededError` when it passes; an instance whose predict raises is
dead and its batch is re-queued once to another live instance, otherwise failed with
`InstanceError` (coded mode: treated as a missing output and decoded when k outputs are
in); when no base instance is alive `submit` refuses new queries with `NoInstanceError`.
A silent fail-stop (injected fault) loses the batch in flight, as a crashed machine
would: `deadline_s` bounds the wait for it. This module holds the frontend's life cycle
(construction, warm-up, drain and shutdown) and its statistics; delayed callbacks live
in `timers.py`. The simulator (`sim.py`) drives the same policy objects.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Sequence

import numpy as np

from pmjax.serving import policy
from pmjax.serving.executor import ActionExecutor
from pmjax.serving.batching import Batching
from pmjax.serving.errors import (DeadlineExceededError, InstanceError, NoInstanceError,
                                  OverloadError, Response, ShutdownError, settle,
                                  settle_all)
from pmjax.serving.events import InstanceEvents
from pmjax.serving.faults import FaultSpec
from pmjax.serving.instance import ModelInstance
from pmjax.serving.timers import Timers

__all__ = ['Frontend', 'Response', 'OverloadError', 'ShutdownError', 'InstanceError',
           'NoInstanceError', 'DeadlineExceededError']


class Frontend(Batching, ActionExecutor, InstanceEvents):
  """A serving frontend over base (F) and parity (F_P) instances: the intake
  (`Batching`), the policy's action executor (`ActionExecutor`) and the instances' callbacks
  (`InstanceEvents`) share the state made here."""

  def __init__(self, mode: 'str | policy.Policy', base_predicts: Sequence[Callable],
               parity_predicts: Sequence[Callable] = (), *, k: int = 2, r: int = 1,
               encode: Callable | None = None, decode: Callable | None = None,
               query_shape=(28, 28, 1), query_dtype=np.uint8, batch_size: int = 1,
               hedge_delay_s: float = 0.0, max_queue: int = 1024,
               faults: dict | None = None, parity_wait_s: float = 0.0,
               flush_timeout_s: float = 0.05, deadline_s: float | None = None,
               check: Callable | None = None, instance_cls=ModelInstance):
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size} must be >= 1')
    if flush_timeout_s <= 0:
      raise ValueError(f'flush_timeout_s={flush_timeout_s} must be > 0 (how long a partial '
                       f'batch or coding group waits for more queries)')
    if deadline_s is not None and deadline_s <= 0:
      raise ValueError(f'deadline_s={deadline_s} must be > 0, or None for no deadline')
    if parity_wait_s < 0:
      raise ValueError(f'parity_wait_s={parity_wait_s} must be >= 0 (0: decode at k of k+r)')
    if isinstance(mode, policy.Policy):
      self.policy, self.mode = mode, type(mode).__name__
    else:
      self.policy, self.mode = policy.make_policy(
          mode, k, r, len(base_predicts), hedge_delay_s=hedge_delay_s,
          parity_wait_s=parity_wait_s, flush_timeout_s=flush_timeout_s), mode
    coded = self.policy.coded
    if coded and (encode is None or decode is None or not parity_predicts):
      raise ValueError(f'mode {self.mode!r} needs encode, decode and at least one parity '
                       f'instance')
    if coded and len(parity_predicts) % r:
      raise ValueError(f'{len(parity_predicts)} parity instances cannot serve r={r} parity '
                       f'slots evenly; give a multiple of r (instance i serves slot i % r)')
    if not coded and parity_predicts:
      raise ValueError(f'mode {self.mode!r} takes no parity instances (equal resources means '
                       f'more base instances instead)')
    if getattr(self.policy, 'verify', False) and check is None:
      raise ValueError('a verifying policy (policy.verify=True) needs check=: the code\'s '
                       'consistency check, e.g. pmjax.codes.byzantine.collage_check with a '
                       'calibrated threshold')
    self.k, self.r = k, r
    self.encode, self.decode, self.check = encode, decode, check
    self.verified_groups = self.flagged_groups = 0
    self.blamed = {}             # instance name -> groups in which its output was blamed
    self.query_shape, self.query_dtype = tuple(query_shape), np.dtype(query_dtype)
    self.batch_size, self.max_queue = batch_size, max_queue
    self.flush_timeout_s, self.deadline_s = flush_timeout_s, deadline_s
    self.base_queue = queue.Queue(max_queue)
    # One parity queue per parity slot: with r > 1 each slot has its own parity model.
    self.parity_queues = [queue.Queue(max_queue) for _ in range(r if coded else 0)]
    faults = faults or {}
    self.instances = (
        [instance_cls(f'base{i}', p, self.base_queue, self._on_output,
                      faults.get(f'base{i}', FaultSpec(seed=i)), self._on_instance_dead,
                      on_expired=self._on_expired)
         for i, p in enumerate(base_predicts)] +
        [instance_cls(f'parity{i}', p, self.parity_queues[i % r], self._on_output,
                      faults.get(f'parity{i}', FaultSpec(seed=1000 + i)),
                      self._on_instance_dead, on_expired=self._on_expired)
         for i, p in enumerate(parity_predicts)])
    self._lock = threading.RLock()
    self._pending = []           # (x, future) waiting to fill a batch
    self._encoder_queue = queue.Queue()
    # Delayed callbacks run with the lock held and return the futures to settle.
    self._timers = Timers(self._lock, settle_all, lambda: self._closed)
    self._outstanding = set()
    self._closed = False
    self._threads = []
    self.encode_s, self.decode_s = [], []
    self.parity_dropped = 0
    self.flushed_batches = self.deadlines_missed = self.expired_tasks = 0
    self._zero_batch = np.zeros((batch_size, *self.query_shape), self.query_dtype)
    self._zero_out = None        # F's output on the zero batch (pads partial groups)
    self.t0 = None

  # ------------------------------------------------------------------ life cycle

  def start(self, warmup: bool = True):
    """Starts every thread; `warmup` first runs each instance, encode and decode once
    on zeros of the serving batch shape, so no compilation lands on a query's path."""
    x = self._zero_batch
    base = [i for i in self.instances if i.queue is self.base_queue]
    if warmup:
      outs = [np.asarray(inst.predict(x)) for inst in base]
      if self.policy.coded:
        self._zero_out = outs[0]   # F(0): pads partial groups
        p = np.asarray(self.encode(np.stack([x] * self.k, axis=1)))
        parity = [inst for inst in self.instances if inst.queue is not self.base_queue]
        zs = [inst.predict(p[:, i % self.r]) for i, inst in enumerate(parity)]
        y = np.stack([outs[0]] * self.k, axis=1)
        z = np.stack(zs[:self.r], axis=1)
        avail = np.ones(y.shape[:2], bool)
        avail[:, 0] = False
        self.decode(y, avail, z, np.ones(z.shape[:2], bool))
        if self.check is not None:
          self.check(y, np.ones(y.shape[:2], bool), z, np.ones(z.shape[:2], bool))
    elif self.policy.coded:  # F(0) from the first base instance that runs
      for inst in base:
        try:
          self._zero_out = np.asarray(inst.predict(x))
          break
        except Exception:  # pylint: disable=broad-except
          continue  # a broken instance is found out when it serves
    self.t0 = time.perf_counter()
    for inst in self.instances:
      inst.start(self.t0)
    for target in (self._encoder_loop, self._timers.run):
      t = threading.Thread(target=target, daemon=True, name=target.__name__)
      t.start()
      self._threads.append(t)
    return self

  def close(self, drain_timeout_s: float = 5.0, join_timeout_s: float = 5.0):
    """Stops accepting queries, waits up to `drain_timeout_s` for pending ones, then
    fails whatever is left with ShutdownError and stops every thread (an instance
    stuck in a batch is abandoned after `join_timeout_s`; its thread is a daemon)."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
      partial, self._pending = self._pending, []
    for _, f in partial:
      settle(f, error=ShutdownError('server shut down before this query filled a batch'))
    deadline = time.perf_counter() + drain_timeout_s
    while time.perf_counter() < deadline:
      with self._lock:
        if not self._outstanding:
          break
      time.sleep(0.005)
    with self._lock:
      left = list(self._outstanding)
      self._timers.wake()
    for f in left:
      settle(f, error=ShutdownError('server shut down before this query was answered'))
    for q in [self.base_queue, *self.parity_queues]:
      while True:
        try:
          task = q.get_nowait()
        except queue.Empty:
          break
        if task is not None:
          task.cancelled = True
    for inst in self.instances:
      inst.queue.put(None)
    self._encoder_queue.put(None)
    deadline = time.perf_counter() + join_timeout_s
    for inst in self.instances:
      inst.join(timeout=max(0.0, deadline - time.perf_counter()))
    for t in self._threads:
      t.join(timeout=max(0.0, deadline - time.perf_counter()))

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.close()

  # ------------------------------------------------------------------ stats

  def stats(self) -> dict:
    return {
        'mode': self.mode,
        'instances': {i.name: {'served': i.served, 'lost': i.lost, 'alive': i.alive,
                               'error': i.error, 'wrong_outputs': i.faults.corrupted,
                               'expired': i.expired}
                      for i in self.instances},
        'encode_us_per_group': 1e6 * float(np.mean(self.encode_s)) if self.encode_s else None,
        'decode_us_per_group': 1e6 * float(np.mean(self.decode_s)) if self.decode_s else None,
        'parity_dropped': self.parity_dropped,
        'hedges_sent': 0, 'flushed_groups': 0,
        'flushed_batches': self.flushed_batches,
        'deadlines_missed': self.deadlines_missed,
        'expired_not_computed': self.expired_tasks,
        'verified_groups': self.verified_groups, 'flagged_groups': self.flagged_groups,
        'blamed': dict(self.blamed),
        **self.policy.stats(),
    }
