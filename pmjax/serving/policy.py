"""Serving policies: what to do when a batch is formed, an output arrives, a timer fires.

A policy is an object with no threads and no clock. A driver (the real loop in
`frontend.Frontend`, the discrete-event simulation in `sim.simulate`, the Ray Serve
ingress) tells it what happened and carries out the actions it returns, so a policy is
written once and every driver runs it. The protocol (the hooks `on_batch`,
`on_output`, `on_lost`, `on_timer`, ... and the actions `Send`, `Answer`, `Decode`,
`Cancel`, `Fail`, `Later`, `Encode`, `Pad`, `Verify`) is in `protocol.py`; its names
are re-exported here.

Policies by mode (`POLICIES`, `make_policy`): `none` and `equal` send each
batch once (`Direct`), `hedge` re-sends a batch not answered within a delay
while the extra instances have room (`Hedge`), `coded` forms coding groups of
k batches and rebuilds missing outputs from k of the k+r outputs (`Coded`,
whose per-group bookkeeping is `CodedGroup`). A new policy subclasses
`Policy`, registers with `register_policy`, and runs in every driver. This module
holds the simple modes, the hedging budget and the mode table (`make_policy`,
`instance_counts`, the settings of a serving config); `Coded` is in `coded.py`.
"""

from __future__ import annotations

import inspect

from pmjax.serving import groups
from pmjax.serving.hold import AutoHold
from pmjax.serving.protocol import (POLICIES, Answer, Cancel, Decode, Encode, Fail, Later,
                                    Pad, Policy, Send, Task, Verify, register_policy)

Arrival, CodedGroup, Group = groups.Arrival, groups.CodedGroup, groups.Group

__all__ = ['Task', 'Send', 'Answer', 'Decode', 'Cancel', 'Fail', 'Later', 'Encode', 'Verify',
           'Pad', 'Policy', 'POLICIES', 'register_policy', 'Alone', 'Direct', 'Hedge',
           'Coded', 'AutoHold', 'Arrival', 'CodedGroup', 'Group', 'default_config',
           'policy_params', 'make_policy', 'instance_counts', 'hedge_capacity',
           'HedgeBudget']


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


# Last, so that the modes register in the order none, equal, hedge, coded.
from pmjax.serving.coded import Coded  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
