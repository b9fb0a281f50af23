"""What the frontend's instances report: an output, a task skipped past its deadline,
an instance that died; and the failure paths these take.

Each callback runs on the reporting instance's thread, takes the frontend's lock, asks
the policy what the event means (`on_output`, `on_expired`, `on_lost`) and carries out
its actions. An instance that died hands back its batch (re-sent once to a live
instance, or given up); when it was the last of its queue, everything queued there is
given up. An exception while handling an output fails the open queries of its group
instead of leaving them pending.
"""

from __future__ import annotations

import queue
import time
import traceback

from pmjax.serving.errors import InstanceError, NoInstanceError, settle_all


class InstanceEvents:
  """The `Frontend`'s instance callbacks (a mixin: the state is the frontend's)."""

  def _on_output(self, task, out, instance_name):
    with self._lock:
      if not task.done:
        task.output, task.served_by = out, instance_name
        if task.sent_s is not None:
          self.policy.observe(task, time.perf_counter() - task.sent_s)
      try:
        answers = self._carry_out(self.policy.on_output(task), out, instance_name)
      except Exception as e:  # pylint: disable=broad-except
        answers = self._internal_error(task, e)
      if task.group is not None and self.policy.releasable(task.group):
        task.group.release_tasks()   # freed by reference counting, not the collector
    settle_all(answers)

  def _internal_error(self, task, error):
    """Handling an output raised (a decode or check that failed): the queries of its
    group (or batch) that are still open fail with the error instead of hanging, and
    the instance keeps serving."""
    traceback.print_exc()
    why = (f'the frontend failed while handling an output of this query\'s coding group '
           f'({type(error).__name__}: {error}); this is a bug: please report it')
    tasks = [t for t in (task.group.tasks if task.group is not None else [task])
             if t is not None and t.queries]
    return [(t.queries, InstanceError(why), False, '') for t in tasks]

  def _on_expired(self, task):
    """An instance skipped `task`: its deadline passed before it ran."""
    with self._lock:
      self.expired_tasks += 1
      answers = self._carry_out(self.policy.on_expired(task))
    settle_all(answers)

  def _on_instance_dead(self, instance, task, error):
    """An instance stopped: its batch (if it raised) is re-sent once or given up; when
    it was the last live instance of its queue, everything queued there is given up."""
    with self._lock:
      answers = []
      live = self._live(instance.queue)
      if task is not None:
        answers += self._carry_out(self.policy.on_lost(
            task, live, f'instance {instance.name} failed on this query ({error})'))
      if not live:
        why = (f'every instance serving this queue is dead (last: '
               f'{instance.name}: {instance.error or "fail-stop"})')
        while True:
          try:
            queued = instance.queue.get_nowait()
          except queue.Empty:
            break
          if queued is not None:
            answers += self._carry_out(self.policy.on_lost(queued, False, why))
        if instance.queue is self.base_queue:
          pending, self._pending = self._pending, []
          answers += [([f for _, f in pending], InstanceError(why), False, '')] if pending else []
    settle_all(answers)

  def _live(self, task_queue) -> bool:
    return any(i.alive for i in self.instances if i.queue is task_queue)

  def _no_base_error(self):
    """NoInstanceError naming why, when no base instance is alive; else None."""
    if self._live(self.base_queue):
      return None
    return NoInstanceError('no base instance is alive (' + '; '.join(
        f'{i.name}: {i.error or "stopped"}' for i in self.instances
        if i.queue is self.base_queue) + '); start a new Frontend with working models')

  def _forget(self, future):
    with self._lock:
      self._outstanding.discard(future)
