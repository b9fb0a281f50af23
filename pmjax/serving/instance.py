"""A model instance: one compiled predict function on one device, served by its own thread.

Instances of a kind pull batches from one shared FIFO queue (so each holds at
most one batch in flight), skip work that was cancelled while queued, apply
their injected faults, and hand each output to the frontend's callback.
An instance whose predict raises is dead: it stops, records the error and
hands its batch back to the frontend (`on_dead`), which re-queues or fails it.
An injected fail-stop is silent (a crashed machine): the in-flight batch is
lost, and the frontend only learns that the instance is gone. A batch whose deadline
(`task.deadline`, wall clock) has passed when it comes up is not computed
(`on_expired`).
A subclass may name `transient_errors`: such an error loses only the batch (handed to
`on_dead` while the instance stays alive, so the frontend re-sends or decodes it) and
the instance keeps serving, e.g. a Ray Serve replica that died and is being replaced
(`pmjax.serving.ray_instance.RayInstance`, which also overrides `_call`).
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


class ModelInstance:
  """Serves `predict` on its own thread, pulling from `task_queue`."""

  transient_errors: tuple = ()   # errors that lose one batch, not the instance

  def __init__(self, name: str, predict: CompiledPredict, task_queue: queue.Queue,
               on_output: Callable, faults: FaultSpec | None = None,
               on_dead: Callable | None = None, on_expired: Callable | None = None):
    self.name, self.predict, self.queue, self.on_output = name, predict, task_queue, on_output
    self.on_dead = on_dead or (lambda instance, task, error: None)
    self.on_expired = on_expired or (lambda task: None)
    self.expired = 0             # tasks not computed: their deadline had passed
    self.faults = FaultInjector(faults or FaultSpec())
    self.served = 0
    self.lost = 0
    self.alive = True
    self.error = None            # what killed it, if its predict raised
    self.service_s = []          # measured compute time per batch (for the simulator)
    self._start = None
    self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

  def start(self, t0: float):
    self._start = t0
    self._thread.start()

  def join(self, timeout=None):
    if self._thread.is_alive():
      self._thread.join(timeout)

  def _loop(self):
    while True:
      task = self.queue.get()
      if task is None:            # shutdown sentinel
        return
      if task.cancelled or task.done:
        continue                  # no longer needed: never served twice
      if self._expired(task):
        continue                  # past its deadline: not computed
      if self.faults.failed(time.perf_counter() - self._start):
        return self._die(None, None)  # the in-flight batch dies with the instance
      delay = self.faults.extra_delay_s(task.x.nbytes)
      t = time.perf_counter()
      try:
        out = self._call(task)
      except self.transient_errors as e:
        self.lost += 1
        self.on_dead(self, task, e)   # still alive: the batch is re-sent or decoded
        continue
      except Exception as e:  # pylint: disable=broad-except
        self.error = f'{type(e).__name__}: {e}'
        return self._die(task, e)
      if out is None:             # cancelled while in flight, or expired on the way
        self._expired(task)       # (a subclass's `_call`)
        continue
      self.service_s.append(time.perf_counter() - t)
      out = self.faults.maybe_corrupt(out)
      if delay:
        time.sleep(delay)
      if self.faults.failed(time.perf_counter() - self._start):
        return self._die(None, None)
      self.served += 1
      self.on_output(task, out, self.name)

  def _expired(self, task) -> bool:
    """True (and the frontend told) when `task`'s deadline has passed."""
    if task.deadline is None or task.done or task.cancelled or time.time() <= task.deadline:
      return False
    self.expired += 1
    self.on_expired(task)
    return True

  def _call(self, task):
    """The output of `task`'s batch (None: the task was cancelled while in flight)."""
    return self.predict(task.x)

  def _die(self, task, error):
    """Stops serving. `task` (when the predict raised) goes back to the frontend; with a
    silent fail-stop it is lost."""
    self.alive = False
    if task is None:
      self.lost += 1
    self.on_dead(self, task, error)
