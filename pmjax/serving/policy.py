"""Serving policies: what to do when a batch is formed, an output arrives, a timer fires.

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

Policies by mode (`POLICIES`, `make_policy`): `none` and `equal` send each
batch once (`Direct`), `hedge` re-sends a batch not answered within a delay
while the extra instances have room (`Hedge`), `coded` forms coding groups of
k batches and rebuilds missing outputs from k of the k+r outputs (`Coded`,
whose per-group bookkeeping is `CodedGroup`). A new policy subclasses
`Policy`, registers with `register_policy`, and runs in every driver.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from pmjax.serving import groups
from pmjax.serving.hold import AutoHold

Arrival, CodedGroup, Group = groups.Arrival, groups.CodedGroup, groups.Group

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


@register_policy('none')
class Alone(Policy):
  """m base instances, nothing more: the baseline without redundancy."""

  @staticmethod
  def instance_counts(m, k, r):
    return m, 0


@register_policy('equal')
class Direct(Policy):
  """Equal resources, no redundancy: the extra instances only add capacity."""


@register_policy('hedge')
class Hedge(Policy):
  """Re-sends a batch not answered within `hedge_delay_s` (0: at once) while the
  extra instances of equal resources have room; the first answer wins."""

  def __init__(self, k=1, r=0, n_base=1, hedge_delay_s: float = 0.0):
    super().__init__(k, r, n_base)
    self.delay_s = hedge_delay_s
    self.budget = HedgeBudget(hedge_capacity(n_base, k, r))
    self.sent = 0

  def on_batch(self, task):
    if self.delay_s <= 0:
      return [Send(task)] + self._hedge(task)
    return [Send(task), Later(self.delay_s, ('hedge', task))]

  def _hedge(self, task):
    if task.done or not self.budget.acquire():
      return []
    task.copies += 1
    self.sent += 1
    return [Send(task)]

  def on_timer(self, event):
    return self._hedge(event[1])

  def on_output(self, task):
    if not task.done and task.copies > 1:
      self.budget.release()
    return super().on_output(task)

  def on_lost(self, task, can_retry, why):
    if not (task.done or task.cancelled) and task.copies > 1:
      task.copies -= 1       # another copy is still on its way
      self.budget.release()
      return []
    return super().on_lost(task, can_retry, why)

  def on_expired(self, task):
    if not task.done and task.copies > 1:
      self.budget.release()  # its copies will never answer
    return super().on_expired(task)

  def stats(self):
    return {'hedges_sent': self.sent}


@register_policy('coded')
class Coded(Policy):
  """ParM: consecutive batches form coding groups of k; each group's r parity
  batches go to the parity instances; a query resolves with its own output or its
  reconstruction from k of the k+r outputs, whichever is first; work that is no
  longer needed is cancelled. A group not filled within `flush_timeout_s` is
  padded with zero queries (None: never). With `parity_wait_s` > 0 and r >= 2,
  decoding waits up to that long for every parity output. With `verify`, every
  group's parity outputs are computed even when no data output is missing, and
  a group whose parity outputs are all in and whose queries are all answered is
  handed to the driver (`Verify`) to check the data outputs that arrived for a
  wrong one (answers already given are not recalled). With `parity_delay_s` > 0 a
  complete group's parity is held that long, then encoded and sent only if a data
  output is still missing (at once when one fails): the parity work, the encode
  included, is done for the groups that need it, at the cost of that delay (and the
  encode) on their reconstructions (for a machine whose instances share cores, where
  eager parity work slows the data).
  With `auto_hold`, the hold (and the flush) follow the data outputs' measured
  latencies instead (`AutoHold`: `hold_factor` x their `hold_quantile`, learnt from
  `observe`; `parity_delay_s` is the hold until enough latencies are in)."""

  coded = True

  def __init__(self, k=2, r=1, n_base=1, parity_wait_s: float = 0.0,
               flush_timeout_s: float | None = 0.05, verify: bool = False,
               parity_delay_s: float = 0.0, auto_hold: bool = False,
               hold_quantile: float = 0.8, hold_factor: float = 2.0):
    super().__init__(k, r, n_base)
    self.parity_wait_s, self.flush_timeout_s = parity_wait_s, flush_timeout_s
    self.verify = verify
    self.parity_delay_s = 0.0 if verify else parity_delay_s
    self.hold = (AutoHold(hold_quantile, hold_factor, initial_s=parity_delay_s)
                 if auto_hold and not verify else None)
    self._open = None        # the group being filled
    self._held = set()       # complete groups whose encode waits for the hold
    self.flushed_groups = 0
    self.parity_held = self.parity_skipped = 0

  @staticmethod
  def instance_counts(m, k, r):
    return m, m * r // k

  def on_batch(self, task):
    acts = []
    if self._open is None:
      self._open = Group(self.k, self.r, self.parity_wait_s > 0, self.verify)
      if self.flush_timeout_s is not None:
        flush = self.flush_timeout_s
        if self.hold is not None and self.hold.ready:
          flush = max(self.hold.delay_s(), 1e-3)   # protection starts as late as the hold
        acts.append(Later(flush, ('flush', self._open)))
    group = self._open
    task.group, task.slot = group, group.filled
    group.tasks[task.slot] = task
    group.filled += 1
    acts.append(Send(task))
    if group.filled == self.k:
      self._open = None
      acts += self._encode_or_hold(group)
    return acts

  def _encode_or_hold(self, group) -> list:
    """A complete group's parity: encoded now, or after the hold (none when verifying)."""
    delay = 0.0 if self.verify else (self.parity_delay_s if self.hold is None
                                     else self.hold.delay_s())
    if delay > 0 and not group.state.finished:
      self._held.add(group)
      self.parity_held += 1
      return [Later(delay, ('parity', group))]
    return [Encode(group)]

  def on_output(self, task):
    task.done = True
    return self._carry_out(task.group, task.group.state.arrive(task.slot), task)

  def _give_up(self, task, why):
    return self._release(task.group) + self._carry_out(task.group,
                                                       task.group.state.fail(task.slot))

  def on_encoded(self, group, parity_xs=None):
    acts = []
    tasks = []
    for j in range(self.r):
      task = Task(None if parity_xs is None else parity_xs[j], (), group, self.k + j)
      group.tasks[self.k + j] = task
      if group.state.finished and not self.verify:
        task.cancelled = True
      else:
        tasks.append(task)
    return [Send(t, t.slot - self.k) for t in tasks]

  def _release(self, group) -> list:
    """Encodes a held group's parity now (not held: nothing)."""
    if group not in self._held:
      return []
    self._held.discard(group)
    return [Encode(group)]

  def on_parity_unavailable(self, group):
    acts = []
    for j in range(self.r):
      acts += self._carry_out(group, group.state.fail(self.k + j))
    return acts

  def on_timer(self, event):
    kind, group = event
    if kind == 'expire':
      return self._carry_out(group, group.state.expire())
    if kind == 'parity':
      if group not in self._held:
        return []                # already encoded (a data output failed)
      if group.state.finished:   # every data output came in time: no parity work
        self._held.discard(group)
        self.parity_skipped += 1
        return []
      return self._release(group)
    if kind != 'flush' or self._open is not group:
      return []
    # Pad the partial group with zero queries (their outputs F(0) are known) and encode.
    self._open = None
    self.flushed_groups += 1
    pads = []
    for slot in range(group.filled, self.k):
      pads.append(Task(None, (), group, slot))
      group.tasks[slot] = pads[-1]
    acts = [Pad(pads)]
    for pad in pads:
      pad.done = True
      acts += self._carry_out(group, group.state.arrive(pad.slot))
    return acts + self._encode_or_hold(group)

  def observe(self, task, seconds):
    if self.hold is not None and task.slot < self.k:
      self.hold.add(seconds)

  def needs_parity(self, group) -> bool:
    """False once every data output is in (encoding is wasted work), unless verifying."""
    return self.verify or not group.state.finished

  def _carry_out(self, group, act: 'Arrival', task: Task | None = None) -> list:
    acts = []
    if act.resolve_own and task is not None and task.queries:
      acts.append(Answer(task))
    if act.decode:
      acts.append(Decode(group, act.decode))
    acts += [Fail(group.tasks[i], f"the instance computing this query failed and too few "
                                  f"of its coding group's {self.k + self.r} outputs can "
                                  f"arrive to rebuild it") for i in act.lost]
    cancel = [group.tasks[j] for j in act.cancel if group.tasks[j] is not None]
    if cancel:
      for t in cancel:
        t.cancelled = True
      acts.append(Cancel(cancel))
    if act.start_wait:
      acts.append(Later(self.parity_wait_s, ('expire', group)))
    if self.verify and group.state.checkable and not group.state.verified:
      group.state.verified = True
      acts.append(Verify(group))
    return acts

  def stats(self):
    out = {'flushed_groups': self.flushed_groups, 'parity_held': self.parity_held,
           'parity_skipped': self.parity_skipped}
    if self.hold is not None:
      out['auto_hold_ms'] = 1e3 * self.hold.delay_s()
      out['auto_hold_samples'] = self.hold.count
    return out


def default_config():
  """The policy settings of a serving config (`configs/serving.py`, `configs/sim.py`),
  in milliseconds; `policy_params` turns them into `make_policy`'s arguments."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      hedge_delay_ms=0.0,    # hedge: re-send after this delay (0 = at once)
      parity_wait_ms=0.0,    # coded, r >= 2: wait up to this long for every parity (0 = no)
      flush_ms=50.0,         # coded: pad a coding group not filled within this long
      parity_delay_ms=0.0,   # coded: hold a group's parity this long; send it only if a
                             # data output is still missing then (0 = send at once)
      verify=False,          # coded: compute every parity and check each complete group
      auto_hold=False,       # coded: hold and flush = hold_factor x the hold_quantile of
      hold_quantile=0.8,     # the data outputs' recent latencies (parity_delay_ms until
      hold_factor=2.0,       # 32 are in); see policy.AutoHold
  ))


def policy_params(config) -> dict:
  """`make_policy` keyword arguments (seconds) from a serving config's `policy` fields."""
  for name in ('hedge_delay_ms', 'parity_wait_ms', 'flush_ms', 'parity_delay_ms'):
    if config.get(name, 0.0) < 0 or (name == 'flush_ms' and config[name] == 0):
      raise ValueError(f'policy.{name}={config[name]} must be ' +
                       ('> 0' if name == 'flush_ms' else '>= 0'))
  return {'hedge_delay_s': config.hedge_delay_ms / 1e3,
          'parity_wait_s': config.parity_wait_ms / 1e3,
          'flush_timeout_s': config.flush_ms / 1e3,
          'verify': bool(config.get('verify', False)),
          'parity_delay_s': config.get('parity_delay_ms', 0.0) / 1e3,
          'auto_hold': bool(config.get('auto_hold', False)),
          'hold_quantile': float(config.get('hold_quantile', 0.8)),
          'hold_factor': float(config.get('hold_factor', 2.0))}


def make_policy(mode: str, k: int = 2, r: int = 1, n_base: int = 1, **params) -> Policy:
  """The policy of `mode` for a code (k, r) over `n_base` base instances.

  `params` may hold every policy's own settings (a serving config's policy
  fields: hedge_delay_s; parity_wait_s, flush_timeout_s): each policy takes
  those its constructor names; a name no policy takes is an error."""
  if mode not in POLICIES:
    raise ValueError(f'mode={mode!r} is unknown; accepted: {list(POLICIES)}')
  known = {name for c in POLICIES.values() for name in _own_params(c)}
  unknown = sorted(set(params) - known)
  if unknown:
    raise ValueError(f'unknown serving policy setting(s) {unknown}; accepted: {sorted(known)}')
  cls = POLICIES[mode]
  return cls(k, r, n_base, **{n: v for n, v in params.items() if n in _own_params(cls)})


def _own_params(cls) -> tuple:
  return tuple(inspect.signature(cls.__init__).parameters)[4:]


def instance_counts(mode: str, m: int, k: int, r: int = 1) -> tuple:
  """(base instances, parity instances) of a mode at equal resources.

  coded: m base + m/k*r parity; equal and hedge: m + m/k*r base; none: m base.
  """
  if mode not in POLICIES:
    raise ValueError(f'mode={mode!r} is unknown; accepted: {list(POLICIES)}')
  if m < 1 or (mode != 'none' and (m * r) % k):
    raise ValueError(f'm={m} base instances must be >= 1 and m*r divisible by k={k} '
                     f'(m*r/k parity instances)')
  return POLICIES[mode].instance_counts(m, k, r)


# ------------------------------------------------------------------ hedging budget


def hedge_capacity(n_base: int, k: int, r: int = 1) -> int:
  """How many hedged copies may be in flight: the instances that equal resources add
  beyond what the data queries need (n_base = m + m*r/k -> m*r/k)."""
  return n_base - n_base * k // (k + r)


class HedgeBudget:
  """Hedged copies in flight, bounded by the extra instances' capacity."""

  def __init__(self, capacity: int):
    self.capacity, self.in_flight = capacity, 0

  def acquire(self) -> bool:
    """Takes a slot for one more hedged copy if the capacity allows."""
    if self.in_flight >= self.capacity:
      return False
    self.in_flight += 1
    return True

  def release(self):
    """A hedged copy is no longer in flight (answered first, or lost)."""
    self.in_flight -= 1

