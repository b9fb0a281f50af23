"""Serve's request router for the coded application: the data queries of one coding group
go to distinct replicas (`GroupRouter`, configured on every model deployment by `ROUTER`)."""

import random

from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import RequestRouter


class GroupRouter(RequestRouter):
  """Sends the queries of one coding group (`group=` of `predict`) to distinct replicas,
  the least loaded first; a repeat only when no other replica can take the request.

  The choice is reserved in `choose_replicas` (`on_request_routed` fires too late for
  the next query of the group) and released in `on_request_completed`. Requests are
  routed as they come (no `FIFOMixin`)."""

  def initialize_state(self, **kwargs):
    self._groups = {}     # replica id -> {group: requests reserved or running there}
    self._requests = {}   # internal request id -> (replica id, group)

  def _reserve(self, request_id, replica_id, group):
    self._release(request_id)
    held = self._groups.setdefault(replica_id, {})
    held[group] = held.get(group, 0) + 1
    self._requests[request_id] = (replica_id, group)

  def _release(self, request_id):
    replica_id, group = self._requests.pop(request_id, (None, None))
    held = self._groups.get(replica_id)
    if held and group in held:
      held[group] -= 1
      if not held[group]:
        del held[group]

  async def choose_replicas(self, candidate_replicas, pending_request=None):
    # One replica per call, never none: a replica whose cached queue looks full is
    # probed by Serve before it gets the request, and a rejection calls this again.
    if not candidate_replicas:
      return []
    group = (pending_request.kwargs.get('group') if pending_request is not None else None)
    fresh = [r for r in candidate_replicas
             if group not in self._groups.get(r.replica_id, {})]
    pool = fresh if (fresh and group is not None) else list(candidate_replicas)
    cache = self.replica_queue_len_cache
    load = {r.replica_id: cache.get(r.replica_id) or 0 for r in pool}
    least = min(load.values())
    chosen = random.choice([r for r in pool if load[r.replica_id] == least])
    if pending_request is not None and group is not None:
      self._reserve(pending_request.metadata.internal_request_id, chosen.replica_id, group)
    return [[chosen]]

  def on_request_routed(self, pending_request, replica_id, result):
    group = pending_request.kwargs.get('group')
    if group is not None:  # fix the record if the request ended up elsewhere
      rid = pending_request.metadata.internal_request_id
      if self._requests.get(rid, (None,))[0] != replica_id:
        self._reserve(rid, replica_id, group)

  def on_request_completed(self, replica_id, internal_request_id):
    self._release(internal_request_id)

  def on_replica_actor_died(self, replica_id):
    super().on_replica_actor_died(replica_id)
    self._groups.pop(replica_id, None)


ROUTER = RequestRouterConfig(request_router_class='pmjax.serving.router:GroupRouter')
