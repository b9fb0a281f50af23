"""ParM's serving policy (mode `coded`): coding groups of k batches, r parity batches
each, a query answered by its own output or its reconstruction, whichever is first.

The per-group bookkeeping (which outputs arrived, what to decode, cancel or fail) is
`groups.CodedGroup`'s; the adaptive parity hold is `hold.AutoHold`'s; this policy turns
them into the protocol's actions (`protocol.py`).
"""

from __future__ import annotations

from pmjax.serving import groups
from pmjax.serving.hold import AutoHold
from pmjax.serving.protocol import (Answer, Cancel, Decode, Encode, Fail, Later, Pad, Policy,
                                    Send, Task, Verify, register_policy)

Arrival, Group = groups.Arrival, groups.Group


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

  def releasable(self, group) -> bool:
    """Every data slot answered, not verifying, not the group being filled: late outputs
    only tick `group.state` off, and what they would cancel is skipped when gone."""
    return not self.verify and group.state.finished and group is not self._open

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
