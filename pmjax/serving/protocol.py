"""The serving policy protocol: `Task`, the actions, the `Policy` base class, the modes' registry.

A policy is an object with no threads and no clock. A driver (the real loop in
`frontend.Frontend`, the discrete-event simulation in `sim.simulate`, later a
distributed backend) tells it what happened and carries out the actions it
returns, so a policy is written once and every driver runs it:

    on_batch(task)            a data batch was formed      -> [Send, Later, Encode, ...]
    on_output(task)           task's output arrived        -> [Answer, Decode, Cancel, ...]
    on_lost(task, retry, why) task's output will not come  -> [Send (retry), Fail, ...]
    on_timer(event)           a Later(delay, event) fired  -> [...]
    on_encoded(group, xs)     the driver encoded a group   -> [Send parity tasks]
    on_parity_unavailable(g)  the driver cannot encode it  -> [...]
    on_expired(task)          task's deadline passed before it ran (not computed) -> [...]
    observe(task, seconds)    task's output came `seconds` after it was sent (no actions;
                              an adaptive policy learns from it, e.g. `AutoHold`)

Actions: `Send(task, pool)` (pool None: the base instances; j: those serving
parity slot j), `Answer(task)` (with the output that just arrived),
`Decode(group, slots)`, `Cancel(tasks)`, `Fail(task, why)`,
`Later(delay_s, event)`, `Encode(group)`, `Pad(tasks)` (slots of a partial
group filled with zero queries, whose output F(0) the driver knows),
`Verify(group)` (its parities are in and its queries answered: check it).

A policy subclasses `Policy` and registers its modes with `register_policy`; the
policies of the built-in modes are in `policy.py` and `coded.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# ------------------------------------------------------------------ work and actions


class Task:
  """One batch of work: a data batch (slot < k) or a parity batch (slot k + j).

  `queries` is the driver's (futures, query ids); `x` and `output` its values
  (None in the simulation)."""
  __slots__ = ('group', 'slot', 'x', 'queries', 'output', 'cancelled', 'done', 'copies',
               'retried', 'served_by', 'deadline', 'sent_s')

  def __init__(self, x=None, queries=(), group=None, slot=0):
    self.group, self.slot, self.x, self.queries = group, slot, x, queries
    self.output = None
    self.cancelled = False   # no longer needed: an instance skips it
    self.done = False        # answered (a later copy's output is ignored)
    self.copies = 1          # in flight (hedged copies)
    self.retried = False     # re-sent once after an instance failed on it
    self.served_by = ''      # the instance whose output is `output`
    self.deadline = None     # wall-clock time (time.time()) after which no query of the
                             # task can use its output: it is not computed then
    self.sent_s = None       # the driver's clock when first sent (for `observe`)


@dataclasses.dataclass
class Send:
  task: Task
  pool: int | None = None    # None: the base instances; j: the instances of parity slot j


@dataclasses.dataclass
class Answer:
  task: Task                 # answer its queries with the output that just arrived


@dataclasses.dataclass
class Decode:
  group: Any
  slots: tuple               # data slots to rebuild from the group's outputs


@dataclasses.dataclass
class Cancel:
  tasks: list


@dataclasses.dataclass
class Fail:
  task: Task
  why: str                   # the queries can never be answered


@dataclasses.dataclass
class Later:
  delay_s: float
  event: tuple               # handed back to on_timer


@dataclasses.dataclass
class Encode:
  group: Any                 # encode the group's k data batches, then call on_encoded


@dataclasses.dataclass
class Verify:
  group: Any                 # every parity in, every query answered: check the group


@dataclasses.dataclass
class Pad:
  tasks: list                # data slots filled with zero queries (x = 0, output = F(0))


# ------------------------------------------------------------------ policies


class Policy:
  """Base class. `k`, `r`: the code's group size and parity count (1, 0 without a
  code). Subclasses override the hooks they need; the defaults send every batch
  once to the base instances and answer it with its own output."""

  coded = False              # uses parity instances and a code

  def __init__(self, k: int = 1, r: int = 0, n_base: int = 1):
    self.k, self.r, self.n_base = k, r, n_base

  @staticmethod
  def instance_counts(m: int, k: int, r: int) -> tuple:
    """(base, parity) instances at equal resources with `coded` (m base + m*r/k parity)."""
    return m + m * r // k, 0

  def on_batch(self, task: Task) -> list:
    return [Send(task)]

  def on_output(self, task: Task) -> list:
    if task.done:
      return []              # another copy answered first
    task.done = True
    return [Answer(task)]

  def on_lost(self, task: Task, can_retry: bool, why: str) -> list:
    """An instance failed on `task` (or the driver could not send it). Re-sent once
    when `can_retry` (another live instance serves its pool), else given up."""
    if task.done or task.cancelled:
      return []
    if can_retry and not task.retried:
      task.retried = True
      return [Send(task, self.pool(task))]
    return self._give_up(task, why)

  def _give_up(self, task: Task, why: str) -> list:
    task.done = True
    return [Fail(task, f'{why}, and no other instance could take it')]

  def on_expired(self, task: Task) -> list:
    """`task`'s deadline passed before an instance ran it: it is not computed (its
    queries have already failed with their deadline)."""
    task.done = True
    return []

  def observe(self, task: Task, seconds: float):
    """`task`'s first output arrived `seconds` after the driver sent it."""

  def on_timer(self, event: tuple) -> list:
    raise ValueError(f'{type(self).__name__} set no timer {event[0]!r}')

  def on_encoded(self, group, parity_xs=None) -> list:
    raise ValueError(f'{type(self).__name__} encodes nothing')

  def on_parity_unavailable(self, group) -> list:
    raise ValueError(f'{type(self).__name__} encodes nothing')

  def pool(self, task: Task) -> int | None:
    return None if task.slot < self.k else task.slot - self.k

  def releasable(self, group) -> bool:
    """True once nothing the policy does with `group` reads its tasks again: a driver
    may then drop the group's references to them (`Group.release_tasks`)."""
    return False

  def stats(self) -> dict:
    return {}


POLICIES: dict = {}


def register_policy(*modes: str):
  """Class decorator: the policy serves these modes (`make_policy(mode, ...)`)."""
  def wrap(cls):
    for mode in modes:
      POLICIES[mode] = cls
    return cls
  return wrap
