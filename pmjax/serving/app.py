"""The Ray Serve application of a parity workdir: its settings, deployments and placement
(`build_app`), running it (`deploy`, `init_ray`) and its control calls (`set_faults`,
`replica_infos`).

Deployments: `BaseModel` (the mode's base replicas: m for `coded`, m + m*r/k for `equal`
and `hedge`, m for `none`), for `coded` `ParityModel0..` (one per parity slot, m/k
replicas each), all `replica.ModelReplica` with `max_ongoing_requests=1` (waiting
requests queue at the caller, where a cancel drops them) and `router.GroupRouter`; and
the ingress `CodedFrontend` (`ingress.py`). Failure domains: `placement='domains'` puts
base and parity replicas on nodes offering the `pmjax_data` / `pmjax_parity` custom
resources (`ray start --resources=...`) and the ingress on the head node;
`max_replicas_per_node` spreads the base replicas.
"""

import dataclasses
import os
import time

import ray
from ray import serve

from pmjax.serving import policy as policy_lib
from pmjax.serving.ingress import CodedFrontend
from pmjax.serving.replica import ModelReplica
from pmjax.serving.router import ROUTER

APP_NAME = 'pmjax'
# The replicas' environment in the benches (their --replica_env default): XLA's CPU
# runtime on one thread, faster at batch 1 and no oversubscription of a small machine.
BENCH_REPLICA_ENV = {'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false'}
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
    # 'local': a new cluster, as documented; Ray's default (None) would join whichever
    # local cluster started last (another user's or test's), with its resources.
    ray.init(address=address or 'local', num_cpus=None if address else num_cpus,
             include_dashboard=False, log_to_driver=kwargs.pop('log_to_driver', False),
             **kwargs)
  # One proxy, on the head node: the frontend is one replica, and several nodes on one
  # machine (ray.cluster_utils.Cluster) cannot all bind the port.
  serve.start(proxy_location='HeadOnly', http_options={'host': host, 'port': port})
