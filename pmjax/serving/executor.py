"""The frontend's hands: the policy's actions carried out with real queues, threads and
futures.

Every decision is the policy's (`policy.py`); `_carry_out` runs the actions it returns
(lock held) and collects the futures to settle once the lock is released: `Send` puts a
task on the base queue or a parity slot's queue (or reports it lost to the policy),
`Answer` / `Decode` / `Fail` answer queries (decoding with the code's jitted `decode`),
`Later` arms a timer whose event goes back to the policy, `Encode` hands a coding group
to the encoder thread (off the data batches' critical path), `Pad` fills a partial group
with zero queries whose output F(0) is known, `Verify` runs the code's consistency check.
`Cancel` needs nothing here: instances skip cancelled tasks when they dequeue them.
"""

from __future__ import annotations

import queue
import time

import numpy as np

from pmjax.serving import policy
from pmjax.serving.batching import latest_deadline
from pmjax.serving.errors import InstanceError, settle_all


class ActionExecutor:
  """The `Frontend`'s action executor (a mixin: the state is the frontend's)."""

  def _carry_out(self, actions, out=None, who=''):
    """Runs a policy's actions (lock held); returns the futures to settle. `out` and
    `who`: the output that just arrived and its instance (for `Answer`)."""
    answers = []
    for a in actions:
      if isinstance(a, policy.Send):
        answers += self._send(a.task, a.pool)
      elif isinstance(a, policy.Answer):
        answers.append((a.task.queries, out, False, who))
      elif isinstance(a, policy.Decode):
        yhat = self._decode(a.group)
        answers += [(a.group.tasks[i].queries, yhat[:, i], True, 'decoder') for i in a.slots]
      elif isinstance(a, policy.Fail):
        answers.append((a.task.queries, InstanceError(a.why), False, ''))
      elif isinstance(a, policy.Later):
        self._timers.add(a.delay_s,
                         lambda e=a.event: self._carry_out(self.policy.on_timer(e)))
      elif isinstance(a, policy.Verify):
        self._verify(a.group)
      elif isinstance(a, policy.Pad):
        for t in a.tasks:
          t.x, t.output = self._zero_batch, self._zero_out
      elif isinstance(a, policy.Encode):
        if self._zero_out is None and a.group.filled < self.k:
          # padded with zero queries whose output F(0) is unknown: no parity possible
          answers += self._carry_out(self.policy.on_parity_unavailable(a.group))
        else:
          self._encoder_queue.put(a.group)
      # policy.Cancel: the tasks' flags are set; instances skip them when dequeued.
    return answers

  def _send(self, task, pool):
    if task.sent_s is None:
      task.sent_s = time.perf_counter()
      if task.deadline is None and task.group is not None and pool is not None:
        task.deadline = latest_deadline([t.deadline for t in task.group.tasks[:self.k]
                                 if t is not None and t.queries])
    q = self.base_queue if pool is None else self.parity_queues[pool]
    name = 'the base instances' if pool is None else f'parity slot {pool}'
    if not self._live(q):
      return self._carry_out(self.policy.on_lost(task, False, f'no instance of {name} is alive'))
    try:
      q.put_nowait(task)
    except queue.Full:
      self.parity_dropped += pool is not None
      return self._carry_out(self.policy.on_lost(task, False, f'the queue of {name} is full'))
    return []

  def _encoder_loop(self):
    """Encodes complete coding groups off the data batches' critical path."""
    while True:
      group = self._encoder_queue.get()
      if group is None:
        return
      with self._lock:
        if not self.policy.needs_parity(group) or self._closed:
          continue  # every data output already in: the parity is not needed
        xs = [task.x for task in group.tasks[:self.k]]   # (released once served)
      t0 = time.perf_counter()
      p = np.asarray(self.encode(np.stack(xs, axis=1)))
      self.encode_s.append(time.perf_counter() - t0)
      with self._lock:
        answers = self._carry_out(self.policy.on_encoded(group, [p[:, j] for j in range(self.r)]))
      settle_all(answers)

  def _decode(self, group):
    k, r = self.k, self.r
    have = [t is not None and t.output is not None and arrived
            for t, arrived in zip(group.tasks, group.state.arrived)]
    # Placeholders for what did not arrive, shaped like the arrived outputs of their kind
    # (a coded output may be wider than an answer: the collage code's are k answers).
    like_y = next((t.output for t, h in zip(group.tasks[:k], have[:k]) if h), self._zero_out)
    like_z = next((t.output for t, h in zip(group.tasks[k:], have[k:]) if h), like_y)
    if like_y is None:
      like_y = like_z
    outs = [t.output if h else np.zeros_like(like_y if i < k else like_z)
            for i, (t, h) in enumerate(zip(group.tasks, have))]
    b = like_z.shape[0]
    avail = np.broadcast_to(np.array(have[:k]), (b, k))
    zavail = np.broadcast_to(np.array(have[k:]), (b, r))
    t = time.perf_counter()
    yhat = np.asarray(self.decode(np.stack(outs[:k], axis=1), avail,
                                  np.stack(outs[k:], axis=1), zavail))
    self.decode_s.append(time.perf_counter() - t)
    return yhat

  def _verify(self, group):
    """Checks a group whose parity outputs are in and whose queries are answered, over
    the data outputs that arrived: counts it when flagged and the instance whose output
    is blamed (answers already given are not recalled)."""
    k = self.k
    have = [t is not None and t.output is not None and arrived
            for t, arrived in zip(group.tasks[:k], group.state.arrived)]
    z = np.stack([t.output for t in group.tasks[k:]], axis=1)
    b = z.shape[0]
    like = next((t.output for t, h in zip(group.tasks, have) if h), None)
    if like is None:
      return                   # no data output arrived: nothing to check
    y = np.stack([t.output if h else np.zeros_like(like)
                  for t, h in zip(group.tasks[:k], have)], axis=1)
    res = self.check(y, np.broadcast_to(np.array(have), (b, k)), z, np.ones((b, self.r), bool))
    self.verified_groups += 1
    if not bool(np.any(res['flagged'])):
      return
    self.flagged_groups += 1
    for data, parity in zip(np.asarray(res['blamed_data']), np.asarray(res['blamed_parity'])):
      slot = int(data) if data >= 0 else (k + int(parity) if parity >= 0 else None)
      if slot is not None:
        name = group.tasks[slot].served_by or f'slot {slot}'
        self.blamed[name] = self.blamed.get(name, 0) + 1
