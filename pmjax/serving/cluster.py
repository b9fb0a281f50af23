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

A query's path through the modules, top to bottom:

1. Serve's HTTP proxy (one, on the head node; 127.0.0.1 unless `--host` says otherwise)
   hands `POST /predict` to the ingress, `CodedFrontend` (`ingress.py`): the body is
   parsed and checked (`bodies.py`: JSON or `.npy`, one query or a batch of up to 64;
   a wrong shape, dtype, range, NaN or oversized body is a 400 naming the problem).
2. Each query goes to the in-process `Frontend` (`frontend.py`), with the mode's policy
   object (`policy.make_policy(mode)`): batching, coding groups, encode and decode in
   the ingress, as ParM's frontend did.
3. The frontend's instances are `RayInstance`s (`ray_instance.py`), one per replica: a
   batch goes through a Serve handle with its coding group and deadline; a task no
   longer needed is dropped where it waits (the frontend's queue, or Serve's queue at
   the caller); one already running on a replica is left to finish.
4. `GroupRouter` (`router.py`) sends the data batches of one coding group to distinct
   replicas; a `ModelReplica` (`replica.py`) runs F or a parity slot's network (the
   in-process loop's `CompiledPredict`) and skips a batch whose deadline has passed.
5. Outputs return to the frontend; the query resolves with its own output or the
   reconstruction, whichever is first, answered as JSON (overload or no instance 503,
   a passed deadline 504, a failed instance 502).

`app.py` builds and runs the application (deployments, replica counts per mode,
placement on failure domains: `placement='domains'`, `max_replicas_per_node`) and holds
its control calls: `set_faults` gives replicas per-rank `FaultSpec`s (slowdowns, wrong
outputs; `fail_at_s`: the replica process exits then, as a crashed machine's would;
Serve's controller replaces it, without faults), `replica_infos` reads their counters.
Node death: `ray.cluster_utils.Cluster.remove_node` (see `cluster_bench`). The Python
handle API for in-cluster callers: `serve.get_app_handle(name).predict.remote(x)`
answers the same dict. This module is the command line and the public names.
"""

import json
import signal
import time

try:  # ray[serve] is in requirements.txt; imported here so the error names the fix
  import ray
  from ray import serve
except ImportError as e:  # pragma: no cover
  raise ImportError('pmjax.serving.cluster needs Ray Serve: pip install "ray[serve]==2.60.0" '
                    '(pinned in requirements.txt)') from e

from pmjax.serving import bodies
from pmjax.serving import policy as policy_lib
from pmjax.serving.app import (APP_NAME, BENCH_REPLICA_ENV, DATA_RESOURCE, PARITY_RESOURCE,
                               ServeSettings, app_builder, build_app, deploy, deployments,
                               init_ray, replica_infos, set_faults, wait_ready)
from pmjax.serving.ingress import CodedFrontend
from pmjax.serving.ray_instance import RayInstance, RemotePredict
from pmjax.serving.replica import ModelReplica
from pmjax.serving.router import GroupRouter

NPY_TYPE = bodies.NPY_TYPE

__all__ = ['APP_NAME', 'BENCH_REPLICA_ENV', 'DATA_RESOURCE', 'PARITY_RESOURCE', 'NPY_TYPE',
           'ServeSettings', 'app_builder', 'build_app', 'deploy', 'deployments', 'init_ray',
           'replica_infos', 'set_faults', 'wait_ready', 'CodedFrontend', 'RayInstance',
           'RemotePredict', 'ModelReplica', 'GroupRouter', 'ray', 'serve', 'main', 'define_flags']


# ---------------------------------------------------------------------- CLI

def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
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
                      f'{json.dumps(BENCH_REPLICA_ENV)}.')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
