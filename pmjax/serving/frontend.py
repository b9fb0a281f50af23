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

No query is stranded: a partial batch or coding group is flushed after
`flush_timeout_s` (padded with zero queries, whose outputs F(0) are known, so
a partial group is still protected by its parity); `deadline_s` (per server,
or per query in `submit`) fails a query with `DeadlineExceededError` when it
passes. An instance whose predict raises is marked dead; its batch is
re-queued once to another live instance, otherwise failed with
`InstanceError` (coded mode: treated as a missing output and decoded when k
outputs are in). When no base instance is alive, `submit` refuses new queries
with `NoInstanceError`. A silent fail-stop (injected fault) loses the batch in
flight, as a crashed machine would: `deadline_s` bounds the wait for it.

One class (about 550 lines): batching, grouping, failures and shutdown all read and
change the same group and task state under one lock, so they stay together;
policy decisions live in `policy.py`, delayed callbacks in `timers.py`, the
instances in `instance.py`.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Callable, NamedTuple, Sequence

import numpy as np

from pmjax.serving import policy
from pmjax.serving.faults import FaultSpec
from pmjax.serving.instance import ModelInstance, Task
from pmjax.serving.timers import Timers


class OverloadError(RuntimeError):
  """The server's queue is full: the query was rejected, not queued."""


class ShutdownError(RuntimeError):
  """The server shut down before the query was answered."""


class InstanceError(RuntimeError):
  """Every instance that could answer the query failed on it."""


class NoInstanceError(RuntimeError):
  """No live instance can serve queries: the query was refused, not queued."""


class DeadlineExceededError(TimeoutError):
  """The query was not answered within its deadline."""


class Response(NamedTuple):
  output: np.ndarray       # the query's output (logits)
  reconstructed: bool      # True when decoded from the other outputs and the parity
  instance: str            # who answered ('decoder' for reconstructions)


class _Group:
  __slots__ = ('policy', 'tasks', 'outputs', 'xs')

  def __init__(self, k, r, parity_wait=False):
    self.policy = policy.CodedGroup(k, r, parity_wait)
    self.tasks = [None] * (k + r)
    self.outputs = [None] * (k + r)
    self.xs = []


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


class Frontend:
  """A serving frontend over base (F) and parity (F_P) instances."""

  def __init__(self, mode: str, base_predicts: Sequence[Callable],
               parity_predicts: Sequence[Callable] = (), *, k: int = 2, r: int = 1,
               encode: Callable | None = None, decode: Callable | None = None,
               query_shape=(28, 28, 1), query_dtype=np.uint8, batch_size: int = 1,
               hedge_delay_s: float = 0.0, max_queue: int = 1024,
               faults: dict | None = None, parity_wait_s: float = 0.0,
               flush_timeout_s: float = 0.05, deadline_s: float | None = None):
    if mode not in policy.MODES:
      raise ValueError(f'mode={mode!r} is unknown; accepted: {list(policy.MODES)}')
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size} must be >= 1')
    if flush_timeout_s <= 0:
      raise ValueError(f'flush_timeout_s={flush_timeout_s} must be > 0 (how long a partial '
                       f'batch or coding group waits for more queries)')
    if deadline_s is not None and deadline_s <= 0:
      raise ValueError(f'deadline_s={deadline_s} must be > 0, or None for no deadline')
    if parity_wait_s < 0:
      raise ValueError(f'parity_wait_s={parity_wait_s} must be >= 0 (0: decode at k of k+r)')
    if mode == 'coded' and (encode is None or decode is None or not parity_predicts):
      raise ValueError("mode 'coded' needs encode, decode and at least one parity instance")
    if mode == 'coded' and len(parity_predicts) % r:
      raise ValueError(f'{len(parity_predicts)} parity instances cannot serve r={r} parity '
                       f'slots evenly; give a multiple of r (instance i serves slot i % r)')
    if mode != 'coded' and parity_predicts:
      raise ValueError(f'mode {mode!r} takes no parity instances (equal resources means '
                       f'more base instances instead)')
    self.mode, self.k, self.r = mode, k, r
    self.encode, self.decode = encode, decode
    self.query_shape, self.query_dtype = tuple(query_shape), np.dtype(query_dtype)
    self.batch_size, self.hedge_delay_s, self.max_queue = batch_size, hedge_delay_s, max_queue
    self.parity_wait_s = parity_wait_s
    self.flush_timeout_s, self.deadline_s = flush_timeout_s, deadline_s
    self._hedges = policy.HedgeBudget(
        policy.hedge_capacity(len(base_predicts), k, r) if mode == 'hedge' else 0)
    self.base_queue = queue.Queue(max_queue)
    # One parity queue per parity slot: with r > 1 each slot has its own parity model.
    self.parity_queues = [queue.Queue(max_queue) for _ in range(r)]
    faults = faults or {}
    self.instances = (
        [ModelInstance(f'base{i}', p, self.base_queue, self._on_output,
                       faults.get(f'base{i}', FaultSpec(seed=i)), self._on_instance_dead)
         for i, p in enumerate(base_predicts)] +
        [ModelInstance(f'parity{i}', p, self.parity_queues[i % r], self._on_output,
                       faults.get(f'parity{i}', FaultSpec(seed=1000 + i)),
                       self._on_instance_dead)
         for i, p in enumerate(parity_predicts)])
    self._lock = threading.RLock()
    self._pending = []           # (x, future) waiting to fill a batch
    self._group = None           # the coding group being filled
    self._encoder_queue = queue.Queue()
    # Timers (hedges, parity waits): (deadline, seq, fn); fn runs with the lock held and
    # returns the futures to settle after it is released.
    self._timers = Timers(self._lock, self._settle_all, lambda: self._closed)
    self._outstanding = set()
    self._closed = False
    self._threads = []
    self.encode_s, self.decode_s = [], []
    self.parity_dropped = 0
    self.hedges_sent = 0
    self.flushed_batches = self.flushed_groups = self.deadlines_missed = 0
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
      if self.mode == 'coded':
        self._zero_out = outs[0]   # F(0): pads partial groups
        p = np.asarray(self.encode(np.stack([x] * self.k, axis=1)))
        parity = [inst for inst in self.instances if inst.name.startswith('parity')]
        zs = [inst.predict(p[:, i % self.r]) for i, inst in enumerate(parity)]
        y = np.stack([outs[0]] * self.k, axis=1)
        z = np.stack(zs[:self.r], axis=1)
        avail = np.ones(y.shape[:2], bool)
        avail[:, 0] = False
        self.decode(y, avail, z, np.ones(z.shape[:2], bool))
    elif self.mode == 'coded':  # F(0) from the first base instance that runs
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

  # ------------------------------------------------------------------ submit

  def _validate(self, x):
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
      x = self._validate(x)
    except ValueError as e:
      future.set_exception(e)
      return future
    deadline_s = self.deadline_s if deadline_s is None else deadline_s
    with self._lock:
      if self._closed:
        raise ShutdownError('server is shut down; start a new Frontend')
      error = self._no_base_error()
      if error is not None:
        raise error
      self._outstanding.add(future)
      future.add_done_callback(self._forget)
      if deadline_s:
        self._add_timer(deadline_s, lambda: self._expire_query(future, deadline_s))
      self._pending.append((x, future))
      if len(self._pending) == 1 and self.batch_size > 1:
        self._add_timer(self.flush_timeout_s, lambda: self._flush_batch(future))
      if len(self._pending) < self.batch_size:
        return future
      batch, self._pending = self._pending, []
      self._dispatch(batch)
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
        self._dispatch(batch)
      except (OverloadError, NoInstanceError):
        pass  # its futures already carry the error
    return []

  def _flush_group(self, group):
    """A coding group waited flush_timeout_s for k batches: pad it with zero queries,
    whose outputs F(0) are known, and encode it as it is (lock held)."""
    if self._group is not group:
      return []
    self._group = None
    self.flushed_groups += 1
    settle = []
    for slot in range(len(group.xs), self.k):
      group.xs.append(self._zero_batch)
      group.outputs[slot] = self._zero_out
      settle += self._act(group, group.policy.arrive(slot))
    if self._zero_out is None:  # F(0) unknown (no base model ran on it): no parity
      for j in range(self.r):
        settle += self._act(group, group.policy.fail(self.k + j))
    else:
      self._encoder_queue.put(group)
    return settle

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

  def _dispatch(self, batch):
    """Sends one batch (padded with zero queries if partial) to the base queue (lock held)."""
    x = np.stack([q for q, _ in batch])
    if len(batch) < self.batch_size:
      x = np.concatenate([x, self._zero_batch[len(batch):]])
    futures = [f for _, f in batch]
    error = self._no_base_error()
    if error is not None:
      for f in futures:
        _settle(f, error=error)
      raise error
    if self.mode == 'coded':
      if self._group is None:
        self._group = _Group(self.k, self.r, self.parity_wait_s > 0)
        group = self._group
        self._add_timer(self.flush_timeout_s, lambda: self._flush_group(group))
      group = self._group
      task = Task(group, len(group.xs), x, futures)
    else:
      task = Task(None, 0, x, futures)
    try:
      self.base_queue.put_nowait(task)
    except queue.Full:
      error = OverloadError(f'server overloaded: {self.max_queue} batches already queued; '
                            f'retry later or lower the request rate')
      for f in futures:
        _settle(f, error=error)
      raise error from None
    if self.mode == 'coded':
      group.tasks[task.slot] = task
      group.xs.append(x)
      if len(group.xs) == self.k:
        self._encoder_queue.put(group)
        self._group = None
    elif self.mode == 'hedge':
      if self.hedge_delay_s <= 0:
        self._hedge(task)
      else:
        self._add_timer(self.hedge_delay_s, lambda: self._hedge(task) or [])

  # ------------------------------------------------------------------ coded path

  def _encoder_loop(self):
    while True:
      group = self._encoder_queue.get()
      if group is None:
        return
      with self._lock:
        if group.policy.finished or self._closed:
          continue  # every data output already in: the parity is not needed
      t = time.perf_counter()
      p = np.asarray(self.encode(np.stack(group.xs, axis=1)))
      self.encode_s.append(time.perf_counter() - t)
      settle = []
      with self._lock:
        for j in range(self.r):
          task = Task(group, self.k + j, p[:, j], [])
          group.tasks[self.k + j] = task
          if group.policy.finished:
            task.cancelled = True
            continue
          if not self._live(self.parity_queues[j]):
            settle += self._act(group, group.policy.fail(self.k + j))
            continue
          try:
            self.parity_queues[j].put_nowait(task)
          except queue.Full:
            self.parity_dropped += 1
            settle += self._act(group, group.policy.fail(self.k + j))
      self._settle_all(settle)

  def _on_output(self, task, out, instance_name):
    if self.mode != 'coded':
      with self._lock:
        if task.done:
          return  # a hedged copy answered first
        task.done = True
        if task.copies > 1:
          self._hedges.release()
      for q, f in enumerate(task.futures):
        _settle(f, Response(out[q], False, instance_name))
      return
    with self._lock:
      group = task.group
      task.done = True
      group.outputs[task.slot] = out
      act = group.policy.arrive(task.slot)
      settle = self._act(group, act)
      if act.resolve_own:
        settle.append((task.futures, out, False, instance_name))
    self._settle_all(settle)

  def _act(self, group, act):
    """Carries out a policy decision (lock held); returns the futures to settle."""
    settle = []
    if act.decode:
      yhat = self._decode(group)
      for i in act.decode:
        settle.append((group.tasks[i].futures, yhat[:, i], True, 'decoder'))
    for i in act.lost:
      settle.append((group.tasks[i].futures, InstanceError(
          f'the instance computing this query failed and too few of its coding group\'s '
          f'{self.k + self.r} outputs can arrive to rebuild it'), False, ''))
    for j in act.cancel:
      if group.tasks[j] is not None:
        group.tasks[j].cancelled = True
    if act.start_wait:
      self._add_timer(self.parity_wait_s, lambda: self._act(group, group.policy.expire()))
    return settle

  @staticmethod
  def _settle_all(settle):
    """Answers futures: (futures, outputs or an exception, reconstructed, who) each."""
    for futures, values, reconstructed, who in settle:
      for q, f in enumerate(futures):
        if isinstance(values, BaseException):
          _settle(f, error=values)
        else:
          _settle(f, Response(values[q], reconstructed, who))

  # ------------------------------------------------------------------ failures

  def _on_instance_dead(self, instance, task, error):
    """An instance stopped: its batch (if it raised) is re-queued once or failed; when
    it was the last live instance of its queue, everything queued there is failed."""
    with self._lock:
      settle = []
      if task is not None:
        settle += self._task_failed(task, instance, error)
      if not self._live(instance.queue):
        why = InstanceError(f'every instance serving this queue is dead (last: '
                            f'{instance.name}: {instance.error or "fail-stop"})')
        while True:
          try:
            queued = instance.queue.get_nowait()
          except queue.Empty:
            break
          if queued is not None:
            settle += self._task_failed(queued, instance, why)
        if instance.queue is self.base_queue:
          pending, self._pending = self._pending, []
          settle += [([f for _, f in pending], why, False, '')] if pending else []
    self._settle_all(settle)

  def _task_failed(self, task, instance, error):
    """A batch that `instance` could not compute (lock held); returns futures to settle."""
    if task.done or task.cancelled:
      return []
    if task.copies > 1:          # a hedged copy is still on its way
      task.copies -= 1
      self._hedges.release()
      return []
    if not task.retried and self._live(instance.queue):
      task.retried = True
      try:
        instance.queue.put_nowait(task)
        return []
      except queue.Full:
        pass
    if self.mode == 'coded':
      return self._act(task.group, task.group.policy.fail(task.slot))
    task.done = True
    return [(task.futures, InstanceError(f'instance {instance.name} failed on this query '
                                         f'({error}) and no other instance could take it'),
             False, instance.name)]

  def _decode(self, group):
    k, r = self.k, self.r
    like = next(o for o in group.outputs if o is not None)
    zeros = np.zeros_like(like)
    y = np.stack([o if o is not None else zeros for o in group.outputs[:k]], axis=1)
    z = np.stack([o if o is not None else zeros for o in group.outputs[k:]], axis=1)
    b = like.shape[0]
    avail = np.broadcast_to(np.array([o is not None for o in group.outputs[:k]]), (b, k))
    zavail = np.broadcast_to(np.array([o is not None for o in group.outputs[k:]]), (b, r))
    t = time.perf_counter()
    yhat = np.asarray(self.decode(y, avail, z, zavail))
    self.decode_s.append(time.perf_counter() - t)
    return yhat

  # ------------------------------------------------------------------ hedging

  def _hedge(self, task):
    """Re-sends `task` to the shared queue if extra capacity allows (lock held)."""
    if task.done or not self._hedges.acquire():
      return
    try:
      self.base_queue.put_nowait(task)
    except queue.Full:
      self._hedges.release()
      return
    task.copies += 1
    self.hedges_sent += 1

  def _add_timer(self, delay_s, fn):
    """Runs fn() (lock held) after delay_s; fn returns futures to settle (lock held)."""
    self._timers.add(delay_s, fn)

  # ------------------------------------------------------------------ stats

  def stats(self) -> dict:
    return {
        'mode': self.mode,
        'instances': {i.name: {'served': i.served, 'lost': i.lost, 'alive': i.alive,
                               'error': i.error}
                      for i in self.instances},
        'encode_us_per_group': 1e6 * float(np.mean(self.encode_s)) if self.encode_s else None,
        'decode_us_per_group': 1e6 * float(np.mean(self.decode_s)) if self.decode_s else None,
        'parity_dropped': self.parity_dropped,
        'hedges_sent': self.hedges_sent,
        'flushed_batches': self.flushed_batches,
        'flushed_groups': self.flushed_groups,
        'deadlines_missed': self.deadlines_missed,
    }
