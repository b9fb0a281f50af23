"""The frontend: batching, coding groups, first-answer-wins, cancellation, hedging.

    fe = Frontend('coded', base_predicts=[F0, F1], parity_predicts=[FP0], k=2,
                  encode=jit(code.encode), decode=jit(code.decode), query_shape=(28, 28, 1))
    fe.start()
    fut = fe.submit(x)            # concurrent.futures.Future -> Response
    fe.close()                    # drains or cancels every pending future

Queries are batched (`batch_size`, default 1); in `coded` mode consecutive
batches form coding groups of k; each data batch goes to the shared base
queue at once; when a group is complete an encoder thread (off the data
batches' critical path) encodes its parity batch for the parity queue. A
query resolves with its own output or with the decoded reconstruction as soon
as k of the group's k+r outputs are in, whichever is first (with
`parity_wait_s` > 0 and r >= 2, a missing output waits up to that long for every
parity, so the decoder uses all of them); queued work that is no longer needed
is cancelled. `equal` and `none` have no redundancy;
`hedge` re-sends a batch not answered within `hedge_delay_s` while the extra
capacity allows, and the first answer wins.
With a verifying policy (`Coded(verify=True)`) every group's parities are
computed and `check(y, avail, z, zavail)` (e.g. `pmjax.codes.byzantine.collage_check`)
runs on each group once its parities are in: `stats()` counts the flagged groups and
the instances blamed. An exception while handling an output fails the open queries
of its group with that error rather than leaving them pending.

No query is stranded: a partial batch or coding group is flushed after
`flush_timeout_s` (padded with zero queries, whose outputs F(0) are known, so
a partial group is still protected by its parity); `deadline_s` (per server,
or per query in `submit`) fails a query with `DeadlineExceededError` when it
passes. An instance whose predict raises is marked dead; its batch is
re-queued once to another live instance, otherwise failed with
`InstanceError` (coded mode: treated as a missing output and decoded when k
outputs are in). `instance_cls` (default `ModelInstance`) runs each instance: the Ray
Serve backend's `RayInstance` sends its batches to replicas instead
(`pmjax.serving.cluster`), with the same policy, queues and futures. When no base instance is alive, `submit` refuses new queries
with `NoInstanceError`. A silent fail-stop (injected fault) loses the batch in
flight, as a crashed machine would: `deadline_s` bounds the wait for it.

The frontend is a driver: every decision (grouping, decoding, cancelling,
hedging, what a failure means) is the mode's policy object's (`policy.py`,
also driven by the simulator); the frontend batches queries, runs the
policy's actions with real queues, threads and futures, and owns what only
a live server has (deadlines, shutdown, dead instances). Delayed callbacks
live in `timers.py`, the instances in `instance.py`, the errors in `errors.py`.
A policy object can be passed as `mode` (any registered or custom one). About
510 lines: the life cycle, batching, the actions and the failure paths all read
and change one set of queues and futures under one lock.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from concurrent.futures import Future, InvalidStateError
from typing import Callable, Sequence

import numpy as np

from pmjax.serving import policy
from pmjax.serving.errors import (DeadlineExceededError, InstanceError, NoInstanceError,
                                  OverloadError, Response, ShutdownError)
from pmjax.serving.faults import FaultSpec
from pmjax.serving.instance import ModelInstance
from pmjax.serving.timers import Timers

__all__ = ['Frontend', 'Response', 'OverloadError', 'ShutdownError', 'InstanceError',
           'NoInstanceError', 'DeadlineExceededError']


def _settle(future, result=None, error=None):
  if future.done():
    return
  try:
    if error is not None:
      future.set_exception(error)
    else:
      future.set_result(result)
  except InvalidStateError:
    pass  # already answered or cancelled


def _latest(deadlines):
  """The last of a batch's deadlines (None when one of them has none)."""
  return None if not deadlines or None in deadlines else max(deadlines)


def _settle_all(settle):
  """Answers futures: (futures, outputs or an exception, reconstructed, who) each."""
  for futures, values, reconstructed, who in settle:
    for q, f in enumerate(futures):
      if isinstance(values, BaseException):
        _settle(f, error=values)
      else:
        _settle(f, Response(values[q], reconstructed, who))


class Frontend:
  """A serving frontend over base (F) and parity (F_P) instances."""

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
    self._timers = Timers(self._lock, _settle_all, lambda: self._closed)
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
      _settle(f, error=ShutdownError('server shut down before this query filled a batch'))
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
      _settle(f, error=ShutdownError('server shut down before this query was answered'))
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

  # ------------------------------------------------------------------ submit and batching

  def validate(self, x):
    """A copy of query `x` if it has the server's shape and dtype and no NaN or Inf;
    else ValueError naming the problem."""
    x = np.array(x, copy=True)  # the caller may reuse its buffer once submit returns
    if x.shape != self.query_shape:
      raise ValueError(f'query has shape {x.shape}; this server expects {self.query_shape} '
                       f'({self.query_dtype})')
    if x.dtype != self.query_dtype:
      raise ValueError(f'query has dtype {x.dtype}; this server expects {self.query_dtype}')
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
      raise ValueError('query contains NaN or Inf values')
    return x

  def submit(self, x, deadline_s: float | None = None) -> Future:
    """Queues one query; returns a Future of a `Response`.

    A malformed query gets its error on its own future. `deadline_s` (default:
    the server's) fails the future with DeadlineExceededError if it is not
    answered in time. Raises OverloadError when the queue is full,
    NoInstanceError when no base instance is alive and ShutdownError after
    `close()`.
    """
    future = Future()
    try:
      x = self.validate(x)
    except ValueError as e:
      future.set_exception(e)
      return future
    deadline_s = self.deadline_s if deadline_s is None else deadline_s
    settle = []
    with self._lock:
      if self._closed:
        raise ShutdownError('server is shut down; start a new Frontend')
      error = self._no_base_error()
      if error is not None:
        raise error
      self._outstanding.add(future)
      future.add_done_callback(self._forget)
      # Wall clock: the deadline travels with the query's batch to replicas elsewhere.
      future.deadline_at = time.time() + deadline_s if deadline_s else None
      if deadline_s:
        self._timers.add(deadline_s, lambda: self._expire_query(future, deadline_s))
      self._pending.append((x, future))
      if len(self._pending) == 1 and self.batch_size > 1:
        self._timers.add(self.flush_timeout_s, lambda: self._flush_batch(future))
      if len(self._pending) < self.batch_size:
        return future
      batch, self._pending = self._pending, []
      settle = self._dispatch(batch)
    _settle_all(settle)
    return future

  def _expire_query(self, future, deadline_s):
    if future.done():
      return []
    self.deadlines_missed += 1
    return [([future], DeadlineExceededError(f'no answer within the deadline of '
                                             f'{deadline_s * 1e3:.1f} ms'), False, '')]

  def _flush_batch(self, first_future):
    """A partial batch waited flush_timeout_s: send it as it is (lock held)."""
    if self._pending and self._pending[0][1] is first_future:
      batch, self._pending = self._pending, []
      self.flushed_batches += 1
      try:
        return self._dispatch(batch)
      except (OverloadError, NoInstanceError):
        pass  # its futures already carry the error
    return []

  def _dispatch(self, batch):
    """Hands one batch (padded with zero queries if partial) to the policy (lock held);
    returns the futures to settle."""
    x = np.stack([q for q, _ in batch])
    if len(batch) < self.batch_size:
      x = np.concatenate([x, self._zero_batch[len(batch):]])
    futures = [f for _, f in batch]
    error = self._no_base_error()
    if error is None and self.base_queue.full():  # every put happens under this lock
      error = OverloadError(f'server overloaded: {self.max_queue} batches already queued; '
                            f'retry later or lower the request rate')
    if error is not None:
      for f in futures:
        _settle(f, error=error)
      raise error
    task = policy.Task(x, futures)
    task.deadline = _latest([f.deadline_at for f in futures])
    return self._carry_out(self.policy.on_batch(task))

  # ------------------------------------------------------------------ the policy's actions

  def _carry_out(self, actions, out=None, who=''):
    """Runs a policy's actions (lock held); returns the futures to settle. `out` and
    `who`: the output that just arrived and its instance (for `Answer`)."""
    settle = []
    for a in actions:
      if isinstance(a, policy.Send):
        settle += self._send(a.task, a.pool)
      elif isinstance(a, policy.Answer):
        settle.append((a.task.queries, out, False, who))
      elif isinstance(a, policy.Decode):
        yhat = self._decode(a.group)
        settle += [(a.group.tasks[i].queries, yhat[:, i], True, 'decoder') for i in a.slots]
      elif isinstance(a, policy.Fail):
        settle.append((a.task.queries, InstanceError(a.why), False, ''))
      elif isinstance(a, policy.Later):
        self._timers.add(a.delay_s,
                         lambda e=a.event: self._carry_out(self.policy.on_timer(e)))
      elif isinstance(a, policy.Verify):
        self._verify(a.group)
      elif isinstance(a, policy.Pad):
        for t in a.tasks:
          t.x, t.output = self._zero_batch, self._zero_out
      elif isinstance(a, policy.Encode):
        if self._zero_out is None and a.group.filled < self.k:
          # padded with zero queries whose output F(0) is unknown: no parity possible
          settle += self._carry_out(self.policy.on_parity_unavailable(a.group))
        else:
          self._encoder_queue.put(a.group)
      # policy.Cancel: the tasks' flags are set; instances skip them when dequeued.
    return settle

  def _send(self, task, pool):
    if task.sent_s is None:
      task.sent_s = time.perf_counter()
      if task.deadline is None and task.group is not None and pool is not None:
        task.deadline = _latest([t.deadline for t in task.group.tasks[:self.k]
                                 if t is not None and t.queries])
    q = self.base_queue if pool is None else self.parity_queues[pool]
    name = 'the base instances' if pool is None else f'parity slot {pool}'
    if not self._live(q):
      return self._carry_out(self.policy.on_lost(task, False, f'no instance of {name} is alive'))
    try:
      q.put_nowait(task)
    except queue.Full:
      self.parity_dropped += pool is not None
      return self._carry_out(self.policy.on_lost(task, False, f'the queue of {name} is full'))
    return []

  def _encoder_loop(self):
    """Encodes complete coding groups off the data batches' critical path."""
    while True:
      group = self._encoder_queue.get()
      if group is None:
        return
      with self._lock:
        if not self.policy.needs_parity(group) or self._closed:
          continue  # every data output already in: the parity is not needed
      t0 = time.perf_counter()
      p = np.asarray(self.encode(np.stack([task.x for task in group.tasks[:self.k]], axis=1)))
      self.encode_s.append(time.perf_counter() - t0)
      with self._lock:
        settle = self._carry_out(self.policy.on_encoded(group, [p[:, j] for j in range(self.r)]))
      _settle_all(settle)

  def _decode(self, group):
    k, r = self.k, self.r
    have = [t is not None and t.output is not None and arrived
            for t, arrived in zip(group.tasks, group.state.arrived)]
    # Placeholders for what did not arrive, shaped like the arrived outputs of their kind
    # (a coded output may be wider than an answer: the collage code's are k answers).
    like_y = next((t.output for t, h in zip(group.tasks[:k], have[:k]) if h), self._zero_out)
    like_z = next((t.output for t, h in zip(group.tasks[k:], have[k:]) if h), like_y)
    if like_y is None:
      like_y = like_z
    outs = [t.output if h else np.zeros_like(like_y if i < k else like_z)
            for i, (t, h) in enumerate(zip(group.tasks, have))]
    b = like_z.shape[0]
    avail = np.broadcast_to(np.array(have[:k]), (b, k))
    zavail = np.broadcast_to(np.array(have[k:]), (b, r))
    t = time.perf_counter()
    yhat = np.asarray(self.decode(np.stack(outs[:k], axis=1), avail,
                                  np.stack(outs[k:], axis=1), zavail))
    self.decode_s.append(time.perf_counter() - t)
    return yhat

  def _verify(self, group):
    """Checks a group whose parity outputs are in and whose queries are answered, over
    the data outputs that arrived: counts it when flagged and the instance whose output
    is blamed (answers already given are not recalled)."""
    k = self.k
    have = [t is not None and t.output is not None and arrived
            for t, arrived in zip(group.tasks[:k], group.state.arrived)]
    z = np.stack([t.output for t in group.tasks[k:]], axis=1)
    b = z.shape[0]
    like = next((t.output for t, h in zip(group.tasks, have) if h), None)
    if like is None:
      return                   # no data output arrived: nothing to check
    y = np.stack([t.output if h else np.zeros_like(like)
                  for t, h in zip(group.tasks[:k], have)], axis=1)
    res = self.check(y, np.broadcast_to(np.array(have), (b, k)), z, np.ones((b, self.r), bool))
    self.verified_groups += 1
    if not bool(np.any(res['flagged'])):
      return
    self.flagged_groups += 1
    for data, parity in zip(np.asarray(res['blamed_data']), np.asarray(res['blamed_parity'])):
      slot = int(data) if data >= 0 else (k + int(parity) if parity >= 0 else None)
      if slot is not None:
        name = group.tasks[slot].served_by or f'slot {slot}'
        self.blamed[name] = self.blamed.get(name, 0) + 1

  # ------------------------------------------------------------------ instance callbacks

  def _on_output(self, task, out, instance_name):
    with self._lock:
      if not task.done:
        task.output, task.served_by = out, instance_name
        if task.sent_s is not None:
          self.policy.observe(task, time.perf_counter() - task.sent_s)
      try:
        settle = self._carry_out(self.policy.on_output(task), out, instance_name)
      except Exception as e:  # pylint: disable=broad-except
        settle = self._internal_error(task, e)
    _settle_all(settle)

  def _internal_error(self, task, error):
    """Handling an output raised (a decode or check that failed): the queries of its
    group (or batch) that are still open fail with the error instead of hanging, and
    the instance keeps serving."""
    traceback.print_exc()
    why = (f'the frontend failed while handling an output of this query\'s coding group '
           f'({type(error).__name__}: {error}); this is a bug: please report it')
    tasks = [t for t in (task.group.tasks if task.group is not None else [task])
             if t is not None and t.queries]
    return [(t.queries, InstanceError(why), False, '') for t in tasks]

  def _on_expired(self, task):
    """An instance skipped `task`: its deadline passed before it ran."""
    with self._lock:
      self.expired_tasks += 1
      settle = self._carry_out(self.policy.on_expired(task))
    _settle_all(settle)

  def _on_instance_dead(self, instance, task, error):
    """An instance stopped: its batch (if it raised) is re-sent once or given up; when
    it was the last live instance of its queue, everything queued there is given up."""
    with self._lock:
      settle = []
      live = self._live(instance.queue)
      if task is not None:
        settle += self._carry_out(self.policy.on_lost(
            task, live, f'instance {instance.name} failed on this query ({error})'))
      if not live:
        why = (f'every instance serving this queue is dead (last: '
               f'{instance.name}: {instance.error or "fail-stop"})')
        while True:
          try:
            queued = instance.queue.get_nowait()
          except queue.Empty:
            break
          if queued is not None:
            settle += self._carry_out(self.policy.on_lost(queued, False, why))
        if instance.queue is self.base_queue:
          pending, self._pending = self._pending, []
          settle += [([f for _, f in pending], InstanceError(why), False, '')] if pending else []
    _settle_all(settle)

  def _live(self, task_queue) -> bool:
    return any(i.alive for i in self.instances if i.queue is task_queue)

  def _no_base_error(self):
    """NoInstanceError naming why, when no base instance is alive; else None."""
    if self._live(self.base_queue):
      return None
    return NoInstanceError('no base instance is alive (' + '; '.join(
        f'{i.name}: {i.error or "stopped"}' for i in self.instances
        if i.queue is self.base_queue) + '); start a new Frontend with working models')

  def _forget(self, future):
    with self._lock:
      self._outstanding.discard(future)

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
