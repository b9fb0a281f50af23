"""Coding-group bookkeeping of the `Coded` serving policy: which outputs are in,
when to decode, what to cancel, what is lost. Pure state, no threads, no clock."""

from __future__ import annotations

import dataclasses


class Group:
  """A coding group's tasks (k data slots, then r parity slots) and its state."""
  __slots__ = ('state', 'tasks', 'filled')

  def __init__(self, k: int, r: int, parity_wait: bool = False, verify: bool = False):
    self.state = CodedGroup(k, r, parity_wait, verify)
    self.tasks: list = [None] * (k + r)
    self.filled = 0

  def release_tasks(self):
    """Drops the group's references to its tasks (they keep theirs to the group). A task
    and its group refer to each other: without this, a served group waits for Python's
    cyclic garbage collector, which then runs more often, stopping every thread of the
    serving process each time (coded at 1000 q/s: 23-71 pauses over 2 ms in 20 s, 2-5
    once released; `pmjax.serving.bench`, RESULTS.md)."""
    self.tasks = [None] * len(self.tasks)


@dataclasses.dataclass
class Arrival:
  """What to do when an output arrives (or a group's parity wait expires)."""
  resolve_own: bool            # a data output whose queries are still unanswered
  decode: tuple = ()           # data slots to rebuild now
  cancel: tuple = ()           # slots whose queued work is no longer needed
  start_wait: bool = False     # k outputs are in but not every parity: start the wait timer
  lost: tuple = ()             # data slots that can never be answered (fail their queries)


class CodedGroup:
  """One coding group's bookkeeping: k data slots (0..k-1) and r parity slots.

  Missing data outputs are rebuilt as soon as k of the k+r outputs are in; with
  `parity_wait` (r >= 2), not before every parity output is in or `expire()` is
  called (the caller's timer, started when `start_wait` is returned): the
  decoder then uses every parity instead of the first ones to arrive. With
  `verify`, parity outputs are never cancelled: once every parity output is in and
  every data slot answered, `checkable` is True and the data outputs that arrived
  can be checked against the parities for a wrong one.
  """

  def __init__(self, k: int, r: int = 1, parity_wait: bool = False, verify: bool = False):
    self.k, self.r = k, r
    self.arrived = [False] * (k + r)
    self.failed = [False] * (k + r)  # output will never arrive (its instance failed)
    self.answered = [False] * k      # data slot answered (directly, decoded or failed)
    self.reconstructed = [False] * k
    self.parity_wait = parity_wait and r > 1
    self.waiting = False             # the wait timer has been started
    self.expired = False
    self.verify = verify
    self.verified = False            # the check has run (set by the policy)

  def arrive(self, slot: int) -> Arrival:
    if self.arrived[slot]:
      return Arrival(False)          # a duplicate (never expected): ignore
    self.arrived[slot] = True
    resolve_own = slot < self.k and not self.answered[slot]
    if resolve_own:
      self.answered[slot] = True
    return self._step(resolve_own)

  def fail(self, slot: int) -> Arrival:
    """Output `slot` will never arrive (every instance that could compute it failed).

    Missing data outputs are still decoded once k outputs are in; when fewer
    than k of the k+r outputs can ever arrive, the failed data slots are `lost`."""
    if self.arrived[slot] or self.failed[slot]:
      return Arrival(False)
    self.failed[slot] = True
    lost = ()
    if sum(not f for f in self.failed) < self.k:
      lost = tuple(i for i in range(self.k) if not self.answered[i] and self.failed[i])
      for i in lost:
        self.answered[i] = True
    act = self._step(False)
    act.lost = lost
    return act

  def expire(self) -> Arrival:
    """The parity wait is over: decode with whatever is in (if k outputs are)."""
    self.expired = True
    return self._step(False)

  def _step(self, resolve_own: bool) -> Arrival:
    decode, cancel, start_wait = (), (), False
    missing = [i for i in range(self.k) if not self.answered[i]]
    if missing and sum(self.arrived) >= self.k:
      parities_settled = all(a or f for a, f in zip(self.arrived[self.k:], self.failed[self.k:]))
      if self.parity_wait and not self.expired and not parities_settled:
        start_wait, self.waiting = not self.waiting, True
      else:
        decode = tuple(missing)
        for i in missing:
          self.answered[i] = self.reconstructed[i] = True
        cancel = decode
    if all(self.answered):
      slots = range(self.k) if self.verify else range(self.k + self.r)
      cancel = cancel + tuple(j for j in slots if not self.arrived[j] and j not in cancel)
    return Arrival(resolve_own, decode, cancel, start_wait)

  @property
  def checkable(self) -> bool:
    """Every parity output is in and every data slot answered (own output or rebuilt)."""
    return all(self.arrived[self.k:]) and all(self.answered)

  @property
  def finished(self) -> bool:
    return all(self.answered)
