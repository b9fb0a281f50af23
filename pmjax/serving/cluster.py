"""Coded serving across machines on Ray Serve, with an HTTP endpoint.

    python -m pmjax.serving.cluster --workdir=W_PARITY --mode=coded --port=8000 \
        [--address=auto|ray://HEAD:10001] [--m=2] [--host=127.0.0.1]

    curl -s -X POST localhost:8000/predict -H 'Content-Type: application/json' \
        -d '{"x": [[[0], ...]]}'                  # one raw query as nested lists
    curl -s -X POST localhost:8000/predict -H 'Content-Type: application/x-npy' \
        --data-binary @query.npy                 # or one .npy array
    -> {"label": 3, "logits": [...], "reconstructed": false, "latency_ms": 4.1}
    curl ... --data-binary @batch.npy            # (n, *query shape), n <= 64: a batch
    -> {"answers": [{"label": 3, ...}, ...], "latency_ms": 6.0}
    curl ... -H 'X-Deadline-Ms: 200'             # this query's deadline (the server's
                                                 # --deadline_ms if sooner)
       (a localisation workdir answers "box": [x, y, w, h] in fractions of the image
       instead of "label"; "logits" are F's raw outputs)

One Serve application (`build_app`) of a parity workdir:
- `BaseModel`: the mode's base replicas (m for `coded`, m + m*r/k for `equal` and
  `hedge`, m for `none`) and, for `coded`, `ParityModel0..` (one deployment per parity
  slot, m/k replicas each). Each replica holds the same `CompiledPredict` of F or of
  the slot's parity network as the in-process loop, answers one request at a time
  (`max_ongoing_requests=1`, so waiting requests queue at the caller and a cancel drops
  them before they run), with an async `predict`, a health check and a control surface
  (`set_faults`, `info`) reached with `handle.broadcast`.
- `CodedFrontend` (the ingress): the in-process `Frontend` with the same policy object
  (`policy.make_policy(mode)`), batching, coding groups, encode and decode in-process
  as ParM's frontend did; its instances are `RayInstance`s, one per replica, which send
  their batches through Serve handles instead of calling F. A query resolves with its
  own output or the reconstruction, whichever is first; a task that is no longer needed
  is dropped where it waits (the frontend's queue, or Serve's queue at the caller); one
  already running on a replica is left to finish, as in the in-process loop.
- `GroupRouter` (Serve's `RequestRouter`, alpha API): the data queries of one coding
  group go to distinct replicas (the replica is reserved in `choose_replicas`; no
  `FIFOMixin`, which hands the chosen replica to the oldest pending request instead).
  Failure domains: `placement='domains'` puts base and parity replicas on nodes offering
  the `pmjax_data` / `pmjax_parity` custom resources (`ray start --resources=...`) and
  the frontend on the head node, and `max_replicas_per_node` spreads the base replicas.

HTTP (`POST /predict`, `GET /healthz`, `GET /stats`): a body is JSON `{"x": nested
list}` or one `.npy` array (`Content-Type: application/x-npy`, no pickles), holding one
query or a batch of up to 64 (a leading axis; answered `{"answers": [...]}`); wrong
shape, dtype, values out of range, NaN or a body over `max_body_bytes` is a 400 naming
the problem; overload 503; a passed deadline 504; no instance left 503. The Python
handle API for in-cluster callers: `serve.get_app_handle(name).predict.remote(x)`
answers the same dict. Serve's HTTP proxy binds to 127.0.0.1 unless `--host` says
otherwise.

Faults (`set_faults`): per-replica `FaultSpec`s keyed by replica rank (slowdowns, wrong
outputs; `fail_at_s`: the replica process exits then, as a crashed machine's would);
Serve's controller replaces a dead replica, and the replacement starts without faults.
Node death: `ray.cluster_utils.Cluster.remove_node` (see `cluster_bench`).
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import gc
import io
import os
import random
import signal
import threading
import time
from typing import Any

import numpy as np

from pmjax.serving import bodies
from pmjax.serving import policy as policy_lib
from pmjax.serving.errors import (DeadlineExceededError, InstanceError, NoInstanceError,
                                  OverloadError, ShutdownError)
from pmjax.serving.faults import FaultInjector, FaultSpec
from pmjax.serving.instance import ModelInstance

try:  # ray[serve] is in requirements.txt; imported here so the error names the fix
  import ray
  from ray import serve
  from ray.serve.config import RequestRouterConfig
  from ray.serve.request_router import RequestRouter
except ImportError as e:  # pragma: no cover
  raise ImportError('pmjax.serving.cluster needs Ray Serve: pip install "ray[serve]==2.60.0" '
                    '(pinned in requirements.txt)') from e

from fastapi import FastAPI, Request  # noqa: E402  (installed with ray[serve])
from fastapi.responses import JSONResponse  # noqa: E402

APP_NAME = 'pmjax'
NPY_TYPE = bodies.NPY_TYPE
DATA_RESOURCE, PARITY_RESOURCE = 'pmjax_data', 'pmjax_parity'


@dataclasses.dataclass
class ServeSettings:
  """How one Serve application of a parity workdir is deployed (`build_app`)."""
  workdir: str
  mode: str = 'coded'
  m: int = 2                      # base replicas of the coded mode (equal resources else)
  batch_size: int = 1
  max_queue: int = 1024           # batches queued per pool before 503
  deadline_ms: float = 10_000.0   # a query not answered by then is a 504
  policy: dict = dataclasses.field(default_factory=dict)   # policy_params' settings (ms)
  replica_cpus: float = 1.0       # Ray CPUs per model replica (0: no reservation)
  frontend_cpus: float = 1.0
  placement: str = 'none'         # 'domains': base / parity replicas on pmjax_data /
                                  # pmjax_parity nodes; 'none': anywhere
  max_replicas_per_node: int = 0  # base replicas per node (0: no limit)
  max_body_bytes: int = 0         # largest request body (0: 64 queries' worth + 64 KiB)
  health_check_period_s: float = 2.0
  env: dict = dataclasses.field(default_factory=dict)   # replica environment variables
  parity_nice: int = 0            # CPU niceness of parity replicas: on one small machine
                                  # shared by every replica, > 0 keeps their work from
                                  # slowing the base replicas (as separate machines would)

  def __post_init__(self):
    if self.mode not in policy_lib.POLICIES:
      raise ValueError(f'mode={self.mode!r} is unknown; accepted: {list(policy_lib.POLICIES)}')
    if self.placement not in ('none', 'domains'):
      raise ValueError(f"placement={self.placement!r} is unknown; accepted: 'none', 'domains'")
    if self.deadline_ms <= 0:
      raise ValueError(f'deadline_ms={self.deadline_ms} must be > 0')


# ---------------------------------------------------------------------- model replicas

def _coded_query_zeros(parts, slot):
  x = np.zeros((1, parts.code.k, *parts.query_shape), parts.query_dtype)
  return np.asarray(parts.encode(x))[:, slot]


class ModelReplica:
  """One replica of F (`kind='base'`) or of parity slot `slot`'s network: the in-process
  loop's `CompiledPredict`, warmed on the serving shape, one request at a time."""

  def __init__(self, workdir: str, kind: str = 'base', slot: int = 0, batch_size: int = 1,
               nice: int = 0):
    if nice:
      os.nice(nice)   # a lower CPU priority (parity replicas sharing a small machine)
    from pmjax.serving import bench  # pylint: disable=g-import-not-at-top
    from pmjax.serving.instance import CompiledPredict  # pylint: disable=g-import-not-at-top
    parts = bench.make_parts(workdir, with_data=False)
    if kind == 'base':
      self._predict = CompiledPredict(parts.base_fn, parts.base_vars)
      zeros = np.zeros((batch_size, *parts.query_shape), parts.query_dtype)
    else:
      self._predict = CompiledPredict(parts.parity_fn, parts.parity_vars[slot])
      zeros = np.repeat(_coded_query_zeros(parts, slot), batch_size, axis=0)
    self._predict(zeros)                     # compile before the first query
    gc.freeze()   # what start-up made is never collected: no long collector pauses later
    self.kind, self.slot = kind, slot
    ctx = serve.get_replica_context()
    self.rank, self.replica = ctx.rank.rank, ctx.replica_tag
    self.node = ray.get_runtime_context().get_node_id()
    self.faults = FaultInjector(FaultSpec())
    self.served = self.abandoned = self.expired = 0
    self.service_s = collections.deque(maxlen=10_000)   # compute time per batch
    # One worker thread: the replica's machine does one thing at a time, and work a
    # caller gave up on (a cancelled request) still occupies it until it is done.
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='predict')

  def _work(self, x, deadline):
    if deadline is not None and time.time() > deadline:
      self.expired += 1                      # nobody can use it any more: not computed
      return None
    t = time.perf_counter()
    out = self._predict(x)
    self.service_s.append(time.perf_counter() - t)
    out = self.faults.maybe_corrupt(out)
    delay = self.faults.extra_delay_s(x.nbytes)
    if delay:
      time.sleep(delay)                      # a straggler: the machine is busy
    return out

  async def predict(self, x, group=None, deadline=None):  # pylint: disable=unused-argument
    """F (or the parity network) on one batch; `group` is read by `GroupRouter`; a batch
    whose `deadline` (wall clock, time.time()) has passed when its turn comes is not
    computed (None)."""
    work = asyncio.get_running_loop().run_in_executor(self._worker, self._work, np.asarray(x),
                                                      deadline)
    try:
      out = await asyncio.shield(work)
    except asyncio.CancelledError:
      self.abandoned += 1
      await work                             # the slot stays taken until the work ends
      raise
    self.served += out is not None
    return out

  def set_faults(self, specs: dict) -> dict:
    """Control call (`handle.broadcast('set_faults', {rank: FaultSpec fields})`): this
    replica takes the spec of its rank (none: no faults). `fail_at_s` makes the process
    exit that many seconds later (replica death)."""
    spec = specs.get(self.rank, specs.get(str(self.rank)))
    self.faults = FaultInjector(FaultSpec(**spec) if spec else FaultSpec())
    if spec and spec.get('fail_at_s') is not None:
      threading.Timer(spec['fail_at_s'], os._exit, (1,)).start()  # pylint: disable=protected-access
    return self.info()

  def info(self) -> dict:
    return {'kind': self.kind, 'slot': self.slot, 'rank': self.rank, 'replica': self.replica,
            'node': self.node, 'pid': os.getpid(), 'served': self.served,
            'abandoned': self.abandoned, 'expired': self.expired, 'wrong_outputs': self.faults.corrupted,
            'service_ms_median': (1e3 * float(np.median(self.service_s))
                                  if self.service_s else None)}

  def check_health(self):
    if self._worker._shutdown:  # pylint: disable=protected-access
      raise RuntimeError('the predict worker is shut down')


# ---------------------------------------------------------------------- routing

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


ROUTER = RequestRouterConfig(request_router_class='pmjax.serving.cluster:GroupRouter')


# ---------------------------------------------------------------------- the frontend

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


def _policy_config(overrides: dict):
  c = policy_lib.default_config()
  c.update(overrides or {})
  return c


def _error_response(status, message):
  return JSONResponse({'error': message}, status_code=status)


http_app = FastAPI(title='pmjax coded serving')


@serve.ingress(http_app)
class CodedFrontend:
  """The ingress: parses and checks requests (`bodies.QueryParser`), runs the in-process
  `Frontend` over the replicas' handles, answers JSON. The frontend's batcher
  (`batch_size`, and the policy's flush) forms the batches of data and parity replicas
  alike, whatever the requests carried; each batch carries its queries' latest deadline
  (wall clock) to the replica, which does not compute a batch whose deadline has passed."""

  def __init__(self, settings: dict, base_handle, *parity_handles):
    from pmjax.serving import bench  # pylint: disable=g-import-not-at-top
    from pmjax.serving.frontend import Frontend  # pylint: disable=g-import-not-at-top
    s = ServeSettings(**settings)
    self.settings = s
    from pmjax import tasks  # pylint: disable=g-import-not-at-top
    parts = bench.make_parts(s.workdir, with_data=False)
    self.score = tasks.task_score(parts.config)   # 'label' (a class) or 'box' answers
    code = parts.code
    self.query_shape, self.query_dtype = parts.query_shape, np.dtype(parts.query_dtype)
    n_base, n_parity = policy_lib.instance_counts(s.mode, s.m, code.k, code.r)
    params = policy_lib.policy_params(_policy_config(s.policy))
    pol = policy_lib.make_policy(s.mode, code.k, code.r, n_base, **params)
    base = [RemotePredict(base_handle) for _ in range(n_base)]
    per_slot = n_parity // code.r if code.r else 0
    parity = [RemotePredict(parity_handles[i % code.r]) for i in range(per_slot * code.r)]
    self.frontend = Frontend(
        pol, base, parity, k=code.k, r=code.r, encode=parts.encode, decode=parts.decode,
        query_shape=self.query_shape, query_dtype=self.query_dtype,
        batch_size=s.batch_size, max_queue=s.max_queue, deadline_s=s.deadline_ms / 1e3,
        flush_timeout_s=params['flush_timeout_s'], instance_cls=RayInstance)
    self.parser = bodies.QueryParser(self.query_shape, self.query_dtype,
                                     self.frontend.validate, s.max_body_bytes)
    self.error = None
    self.ready = threading.Event()
    # Warming up calls the replicas through their handles: not from Serve's event loop.
    threading.Thread(target=self._start, daemon=True, name='warmup').start()

  def _start(self):
    try:
      self.frontend.start()
      gc.freeze()   # start-up's objects (JAX, the models) out of the collector's sweeps
    except Exception as e:  # pylint: disable=broad-except
      self.error = f'{type(e).__name__}: {e}'
    self.ready.set()

  # ---------------------------------------------------------------- queries

  def parse(self, body: bytes, content_type: str) -> tuple:
    """(queries (n, *query_shape), batched) of a request body (ValueError naming the
    problem)."""
    return self.parser.parse(body, content_type)

  def deadline_s(self, header: str | None) -> float:
    """The query's deadline: the server's, or the `X-Deadline-Ms` header's if sooner."""
    server = self.settings.deadline_ms / 1e3
    if not header:
      return server
    try:
      ms = float(header)
    except ValueError:
      ms = float('nan')
    if not ms > 0:
      raise ValueError(f'X-Deadline-Ms: {header!r} must be a number of milliseconds > 0')
    return min(server, ms / 1e3)

  async def _answer(self, xs, batched=False, deadline_s=None) -> dict:
    t0 = time.perf_counter()
    if not self.ready.is_set():
      await asyncio.get_running_loop().run_in_executor(None, self.ready.wait, 600)
    if self.error:
      raise NoInstanceError(f'the frontend failed to start: {self.error}')
    futures = [self.frontend.submit(x, deadline_s) for x in xs]
    answers = []
    for f in futures:
      response = await asyncio.wrap_future(f)
      logits = np.asarray(response.output, np.float32).ravel()
      answers.append({**self.score.describe(logits), 'logits': logits.tolist(),
                      'reconstructed': bool(response.reconstructed),
                      'instance': response.instance})
    latency_ms = (time.perf_counter() - t0) * 1e3
    if batched:
      return {'answers': answers, 'latency_ms': latency_ms}
    return {**answers[0], 'latency_ms': latency_ms}

  async def predict(self, x, deadline_ms: float | None = None) -> dict:
    """The Python handle API: one raw query (array-like), or a batch of them with a
    leading axis -> the HTTP answer's dict."""
    xs, batched = self.parser.check(x)
    return await self._answer(xs, batched, self.deadline_s(deadline_ms and str(deadline_ms)))

  @http_app.post('/predict')
  async def predict_http(self, request: Request):
    try:
      xs, batched = self.parse(await request.body(), request.headers.get('content-type', ''))
      return await self._answer(xs, batched, self.deadline_s(request.headers.get('x-deadline-ms')))
    except ValueError as e:
      return _error_response(400, str(e))
    except (OverloadError, NoInstanceError, ShutdownError) as e:
      return _error_response(503, f'{type(e).__name__}: {e}')
    except DeadlineExceededError as e:
      return _error_response(504, str(e))
    except InstanceError as e:
      return _error_response(502, str(e))
    except Exception as e:  # pylint: disable=broad-except
      return _error_response(500, f'{type(e).__name__}: {e}')

  @http_app.get('/healthz')
  async def healthz(self):
    if self.error:
      return _error_response(503, f'frontend failed to start: {self.error}')
    if not self.ready.is_set():
      return _error_response(503, 'warming up')
    alive = [i.name for i in self.frontend.instances if i.alive]
    return {'ok': True, 'mode': self.settings.mode, 'instances': alive}

  @http_app.get('/stats')
  async def stats_http(self):
    return self.stats()

  def stats(self) -> dict:
    s = self.frontend.stats()
    for inst in self.frontend.instances:
      s['instances'][inst.name]['cancelled_queued'] = inst.cancelled_queued
    return s

  def check_health(self):
    if self.error:
      raise RuntimeError(f'frontend failed to start: {self.error}')


# ---------------------------------------------------------------------- the application

def build_app(settings: ServeSettings):
  """The bound Serve application of `settings` (pass to `serve.run`)."""
  from pmjax import runs  # pylint: disable=g-import-not-at-top
  s = settings
  config = runs.read_config(s.workdir)
  if config.stage != 'parity':
    raise ValueError(f'{s.workdir} is a {config.stage!r} workdir; pass the workdir of a '
                     f'parity run (its config.base_workdir names F)')
  code = runs.make_code(config)
  n_base, n_parity = policy_lib.instance_counts(s.mode, s.m, code.k, code.r)
  workdir = os.path.abspath(s.workdir)
  env = {'runtime_env': {'env_vars': dict(s.env)}} if s.env else {}

  def actor(resource):
    opts = {'num_cpus': s.replica_cpus, **env}
    if s.placement == 'domains':
      opts['resources'] = {resource: 0.001}
    return opts

  common = dict(max_ongoing_requests=1, health_check_period_s=s.health_check_period_s,
                health_check_timeout_s=max(10.0, 5 * s.health_check_period_s),
                request_router_config=ROUTER)
  base_opts = dict(common, num_replicas=n_base, ray_actor_options=actor(DATA_RESOURCE))
  if s.max_replicas_per_node:
    base_opts['max_replicas_per_node'] = s.max_replicas_per_node
  base = serve.deployment(ModelReplica, name='BaseModel', **base_opts).bind(
      workdir, 'base', 0, s.batch_size)
  parity = []
  if n_parity:
    for j in range(code.r):
      parity.append(serve.deployment(
          ModelReplica, name=f'ParityModel{j}', num_replicas=n_parity // code.r,
          ray_actor_options=actor(PARITY_RESOURCE), **common).bind(
              workdir, 'parity', j, s.batch_size, s.parity_nice))
  ingress = serve.deployment(
      CodedFrontend, name='CodedFrontend', num_replicas=1,
      max_ongoing_requests=max(64, s.max_queue * s.batch_size),
      ray_actor_options=dict({'num_cpus': s.frontend_cpus, **env}, **(
          {'resources': {'node:__internal_head__': 0.001}} if s.placement == 'domains'
          else {})))
  return ingress.bind(dataclasses.asdict(dataclasses.replace(s, workdir=workdir)), base,
                      *parity)


def app_builder(args: dict):
  """Serve's application builder (`import_path: pmjax.serving.cluster:app_builder` in a
  Serve config, `args`: `ServeSettings` fields; see configs/serve_cluster.yaml)."""
  return build_app(ServeSettings(**args))


def deploy(settings: ServeSettings, name: str = APP_NAME, route_prefix: str = '/',
           ready_timeout_s: float = 600.0):
  """Runs the application (replacing one of the same name) and waits until its frontend
  has warmed up; returns the ingress handle."""
  handle = serve.run(build_app(settings), name=name, route_prefix=route_prefix)
  wait_ready(handle, ready_timeout_s)
  return handle


def wait_ready(handle, timeout_s: float = 600.0):
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    h = handle.healthz.remote().result()
    if isinstance(h, dict) and h.get('ok'):
      return h
    body = bytes(getattr(h, 'body', b'')).decode()
    if 'failed' in body:
      raise RuntimeError(f'the serving application failed to start: {body}')
    time.sleep(0.2)
  raise TimeoutError(f'the serving application was not ready within {timeout_s:.0f} s')


def set_faults(kind_specs: dict, name: str = APP_NAME) -> list:
  """Sets per-replica faults: `{'BaseModel': {rank: FaultSpec fields}, 'ParityModel0':
  ...}` (deployments left out get none); returns every replica's `info()`."""
  infos = []
  for deployment in deployments(name):
    h = serve.get_deployment_handle(deployment, name)
    infos += h.broadcast('set_faults', kind_specs.get(deployment, {})).results()
  return infos


def replica_infos(name: str = APP_NAME) -> list:
  return [info for d in deployments(name)
          for info in serve.get_deployment_handle(d, name).broadcast('info').results()]


def deployments(name: str = APP_NAME) -> list:
  status = serve.status().applications[name]
  return sorted(d for d in status.deployments if d != 'CodedFrontend')


def init_ray(address: str | None = None, num_cpus: int | None = None, host='127.0.0.1',
             port: int = 8000, **kwargs):
  """Joins the cluster at `address` (None: starts a local one of `num_cpus` logical CPUs)
  and starts Serve's HTTP proxy on host:port of the head node."""
  if not ray.is_initialized():
    ray.init(address=address, num_cpus=None if address else num_cpus,
             include_dashboard=False, log_to_driver=kwargs.pop('log_to_driver', False),
             **kwargs)
  # One proxy, on the head node: the frontend is one replica, and several nodes on one
  # machine (ray.cluster_utils.Cluster) cannot all bind the port.
  serve.start(proxy_location='HeadOnly', http_options={'host': host, 'port': port})


# ---------------------------------------------------------------------- CLI

def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f.workdir:
    raise SystemExit('--workdir is required (a parity workdir)')
  settings = ServeSettings(
      workdir=f.workdir, mode=f.mode, m=f.m, batch_size=f.batch_size,
      deadline_ms=f.deadline_ms, replica_cpus=f.replica_cpus, frontend_cpus=f.frontend_cpus,
      placement=f.placement, max_replicas_per_node=f.max_replicas_per_node,
      policy=json.loads(f.policy) if f.policy else {},
      env=json.loads(f.replica_env) if f.replica_env else {})
  init_ray(f.address or None, f.num_cpus or None, f.host, f.port)
  prefix = f.route_prefix.rstrip('/')
  deploy(settings, f.name, prefix or '/')
  print(f'serving {f.workdir} ({f.mode}) at http://{f.host}:{f.port}{prefix}/predict '
        f'(application {f.name!r}); Ctrl-C stops', flush=True)
  # SIGTERM and SIGINT both stop it (SIGINT even when inherited as ignored).
  signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
  signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    pass
  finally:
    serve.delete(f.name, _blocking=False)
    deadline = time.time() + 60
    while time.time() < deadline and f.name in serve.status().applications:
      time.sleep(0.5)
    gone = f.name not in serve.status().applications
    print(f"application {f.name!r} {'deleted' if gone else 'still being deleted'}", flush=True)


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', '', 'A parity workdir (F from its base_workdir).')
  flags.DEFINE_enum('mode', 'coded', list(policy_lib.POLICIES), 'Serving mode.')
  flags.DEFINE_integer('m', 2, 'Base replicas of the coded mode (equal resources else).')
  flags.DEFINE_integer('batch_size', 1, 'Queries per batch.')
  flags.DEFINE_float('deadline_ms', 10_000.0, 'A query not answered by then is a 504.')
  flags.DEFINE_string('address', '', "Ray cluster to join ('auto', 'ray://HEAD:10001'); "
                      'empty: start a local one.')
  flags.DEFINE_integer('num_cpus', 0, 'CPUs of a local cluster (0: all).')
  flags.DEFINE_string('host', '127.0.0.1', 'HTTP bind address (0.0.0.0 to serve others).')
  flags.DEFINE_integer('port', 8000, 'HTTP port.')
  flags.DEFINE_string('name', APP_NAME, 'Serve application name.')
  flags.DEFINE_string('route_prefix', '/', 'Route prefix (e.g. /mnist: POST /mnist/predict).')
  flags.DEFINE_float('replica_cpus', 1.0, 'Ray CPUs reserved per model replica.')
  flags.DEFINE_float('frontend_cpus', 1.0, 'Ray CPUs reserved by the frontend.')
  flags.DEFINE_enum('placement', 'none', ['none', 'domains'],
                    f'domains: base replicas on nodes with the {DATA_RESOURCE} resource, '
                    f'parity replicas on nodes with {PARITY_RESOURCE}.')
  flags.DEFINE_integer('max_replicas_per_node', 0, 'Base replicas per node (0: no limit).')
  flags.DEFINE_string('policy', '', 'JSON of policy settings, e.g. {"flush_ms": 20}.')
  flags.DEFINE_string('replica_env', '', 'JSON of replica environment variables, e.g. '
                      '{"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}.')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
