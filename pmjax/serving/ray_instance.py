"""The frontend's instances on Ray Serve: a `RayInstance` per replica sends the frontend's
batches through a Serve handle (`RemotePredict`) instead of calling F in-process.

The frontend, its policy, queues and futures are the in-process loop's (`frontend.py`);
only where a batch runs changes. A task answered elsewhere while its request still waits
at the caller is cancelled at Serve; an error from Ray loses only that batch.
"""

import numpy as np
import ray

from pmjax.serving.instance import ModelInstance


class RemotePredict:
  """A `predict` that runs on the replicas behind a Serve handle (the frontend's warm-up
  calls it directly; `RayInstance` sends its tasks with their coding group)."""

  def __init__(self, handle):
    self.handle = handle

  def send(self, x, group=None, deadline=None):
    return self.handle.predict.remote(x, group=group, deadline=deadline)

  def __call__(self, x):
    return np.asarray(self.send(x).result())


def _assigned(response) -> bool:
  """Whether a Serve request has been handed to a replica (a private field of ray 2.60's
  DeploymentResponse, pinned in requirements.txt; unknown: taken as not yet)."""
  future = getattr(response, '_replica_result_future', None)
  return future is not None and future.done()


class RayInstance(ModelInstance):
  """A frontend instance whose batches run on Serve replicas: one batch in flight at a
  time, as a `ModelInstance`; a task cancelled or answered elsewhere while its request
  still waits at the caller is cancelled at Serve (it never runs); an error from Ray (a replica that died, a node that left) loses
  only that batch, which the policy re-sends or decodes, and the instance goes on (Serve
  routes its next batch to a live replica or to the replacement)."""

  transient_errors = (ray.exceptions.RayError, ray.serve.exceptions.RayServeException)
  poll_s = 0.02

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.cancelled_queued = 0

  def _call(self, task):
    group = None if task.group is None else f'{id(task.group):x}'
    response = self.predict.send(task.x, group=group, deadline=task.deadline)
    while True:
      try:
        out = response.result(timeout_s=self.poll_s)
        return None if out is None else np.asarray(out)   # None: expired on the replica
      except TimeoutError as e:
        if isinstance(e, ray.exceptions.RayError) and not isinstance(
            e, ray.exceptions.GetTimeoutError):
          raise
      if (task.cancelled or task.done) and not _assigned(response):
        response.cancel()        # still queued at the caller: dropped before it runs
        self.cancelled_queued += 1
        return None
      # Already running on a replica: as an in-process instance, this one waits for the
      # batch it started (the replica is busy either way) and its output is ignored.
