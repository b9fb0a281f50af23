"""The frontend's intake: a query checked, batched, given its deadline and handed to the
policy.

`submit(x)` validates the query (shape, dtype, finite values; a copy, as the caller may
reuse its buffer), registers its deadline timer and appends it to the pending batch; the
`batch_size`-th query, or the first one's `flush_timeout_s` timer for a partial batch
(padded with zero queries), sends the batch to `_dispatch`, which refuses it when no base
instance is alive or the base queue is full, and otherwise turns it into one
`policy.Task` for the policy's `on_batch` (whose actions `executor.py` carries out).
"""

from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np

from pmjax.serving import policy
from pmjax.serving.errors import (DeadlineExceededError, NoInstanceError, OverloadError,
                                  ShutdownError, settle, settle_all)


def latest_deadline(deadlines):
  """The last of a batch's deadlines (None when one of them has none)."""
  return None if not deadlines or None in deadlines else max(deadlines)


class Batching:
  """The `Frontend`'s submit path (a mixin: the state is the frontend's, see `Frontend`)."""

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
    answers = []
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
      answers = self._dispatch(batch)
    settle_all(answers)
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
        settle(f, error=error)
      raise error
    task = policy.Task(x, futures)
    task.deadline = latest_deadline([f.deadline_at for f in futures])
    return self._carry_out(self.policy.on_batch(task))
