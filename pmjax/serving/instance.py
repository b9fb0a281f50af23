"""A model instance: one compiled predict function on one device, served by its own thread.

Instances of a kind pull batches from one shared FIFO queue (so each holds at
most one batch in flight), skip work that was cancelled while queued, apply
their injected faults, and hand each output to the frontend's callback.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import jax
import numpy as np

from pmjax.serving.faults import FaultInjector, FaultSpec


class CompiledPredict:
  """`fn(variables, x)` compiled once per input shape with jit(...).lower(...).compile()."""

  def __init__(self, fn, variables, device=None):
    self.device = device or jax.devices()[0]
    self.variables = jax.device_put(variables, self.device)
    self._jitted = jax.jit(fn)
    self._compiled = {}
    self._lock = threading.Lock()

  def compiled_for(self, shape, dtype):
    key = (tuple(shape), np.dtype(dtype).str)
    with self._lock:
      if key not in self._compiled:
        spec = jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=jax.sharding.SingleDeviceSharding(self.device))
        self._compiled[key] = self._jitted.lower(self.variables, spec).compile()
      return self._compiled[key]

  def __call__(self, x):
    x = jax.device_put(x, self.device)
    return np.asarray(self.compiled_for(x.shape, x.dtype)(self.variables, x))


class Task:
  """One batch of work: a data batch (slot < k) or a parity batch of a group."""
  __slots__ = ('group', 'slot', 'x', 'futures', 'cancelled', 'done', 'enqueued_at', 'copies')

  def __init__(self, group, slot, x, futures):
    self.group, self.slot, self.x, self.futures = group, slot, x, futures
    self.cancelled = False
    self.done = False
    self.enqueued_at = time.perf_counter()
    self.copies = 1


class ModelInstance:
  """Serves `predict` on its own thread, pulling from `task_queue`."""

  def __init__(self, name: str, predict: CompiledPredict, task_queue: queue.Queue,
               on_output: Callable, faults: FaultSpec | None = None):
    self.name, self.predict, self.queue, self.on_output = name, predict, task_queue, on_output
    self.faults = FaultInjector(faults or FaultSpec())
    self.served = 0
    self.lost = 0
    self.alive = True
    self.service_s = []          # measured compute time per batch (for the simulator)
    self._start = None
    self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

  def start(self, t0: float):
    self._start = t0
    self._thread.start()

  def join(self, timeout=None):
    self._thread.join(timeout)

  def _loop(self):
    while True:
      task = self.queue.get()
      if task is None:            # shutdown sentinel
        return
      if task.cancelled or task.done:
        continue                  # no longer needed: never served twice
      if self.faults.failed(time.perf_counter() - self._start):
        self.alive = False
        self.lost += 1            # the in-flight batch dies with the instance
        return
      delay = self.faults.extra_delay_s(task.x.nbytes)
      t = time.perf_counter()
      out = self.predict(task.x)
      self.service_s.append(time.perf_counter() - t)
      if delay:
        time.sleep(delay)
      if self.faults.failed(time.perf_counter() - self._start):
        self.alive = False
        self.lost += 1
        return
      self.served += 1
      self.on_output(task, out, self.name)
