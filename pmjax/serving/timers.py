"""Delayed callbacks for the serving frontend: one thread, one heap, the owner's lock.

Hedges, parity waits, partial-batch and partial-group flushes and query
deadlines are all "do this after a delay unless it no longer matters": the
callback decides (under the frontend's lock) and returns what to finish after
the lock is released (futures to settle), which `on_fired` receives.
"""

from __future__ import annotations

import heapq
import threading
import time
from typing import Callable


class Timers:
  """`add(delay_s, fn)` (lock held) runs fn() after delay_s with the lock held; `run` is
  the thread body; it returns once `is_closed()` (call `wake()` after closing)."""

  def __init__(self, lock, on_fired: Callable, is_closed: Callable[[], bool]):
    self._heap, self._seq = [], 0
    self._cv = threading.Condition(lock)
    self._on_fired, self._is_closed = on_fired, is_closed

  def add(self, delay_s: float, fn: Callable):
    self._seq += 1
    heapq.heappush(self._heap, (time.perf_counter() + delay_s, self._seq, fn))
    self._cv.notify()

  def wake(self):
    """Lets the thread see a change of `is_closed` (lock held)."""
    self._cv.notify_all()

  def run(self):
    while True:
      with self._cv:
        while not self._is_closed():
          if not self._heap:
            self._cv.wait(0.05)
            continue
          deadline = self._heap[0][0]
          now = time.perf_counter()
          if deadline <= now:
            break
          self._cv.wait(deadline - now)
        if self._is_closed():
          return
        result = heapq.heappop(self._heap)[2]()
      self._on_fired(result)
