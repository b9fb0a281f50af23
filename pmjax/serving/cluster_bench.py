"""Tail latency of coded serving on Ray Serve, over HTTP, mode by mode.

    python -m pmjax.serving.cluster_bench --workdir=W_PARITY --mode=all --rate=20 \
        --queries=2000 --slow=base0 --slow_prob=0.05 --slow_ms=150 --out=DIR
    python -m pmjax.serving.cluster_bench --workdir=W_PARITY --mode=coded,equal \
        --kill=replica --kill_at_s=10        # base replica 0's process exits at 10 s
    python -m pmjax.serving.cluster_bench --workdir=W_PARITY --mode=coded,equal \
        --kill=node --kill_at_s=10 --recover_s=5   # its node is removed; a new one joins

Each mode (`coded`: m base + m*r/k parity replicas; `equal` and `hedge`: m + m*r/k base
replicas; `none`: m) is deployed as the application of `pmjax.serving.cluster` and
driven by an open-loop Poisson load of test-set queries over HTTP (`POST /predict`,
`.npy` or JSON bodies, one `httpx.AsyncClient`), with the same faults in replicas of
the same names (`base0`: BaseModel's replica of rank 0; `parity0`: ParityModel0's).
`--kill=node` runs on a local `ray.cluster_utils.Cluster` (a head node holding the
frontend and the parity replicas, one node per base replica, placement by failure
domain): the node of base replica 0 is removed at `kill_at_s` and a fresh node joins
`recover_s` later. Writes DIR/summary.json (per mode the in-process bench's summary:
count, lost, errors, median/p99/p99.9 ms, fraction reconstructed, accuracy, plus the
frontend's stats and every replica's served count, replacements marked) and
DIR/latency_cdf.png.
"""

import asyncio
import logging
import json
import os
import threading
import time

from absl import app, flags
import numpy as np

from pmjax import cli, metrics, runs, tasks
from pmjax.data import pipeline
from pmjax.serving import bench, bodies, cluster, curves, loadgen, policy

flags.DEFINE_string('workdir', '', 'A parity workdir (F from its base_workdir).')
flags.DEFINE_string('mode', 'all', "'all' or a comma list of coded, equal, hedge, none.")
flags.DEFINE_integer('m', 2, 'Base replicas of the coded mode.')
flags.DEFINE_float('rate', 20.0, 'Poisson arrival rate, queries/s.')
flags.DEFINE_string('rates', '', 'A sweep: comma list of rates (q/s), each run for '
                    '--seconds_per_rate on the same deployment; writes curves.json and '
                    'curves.png (p50 / p99 / p99.9 vs offered load, saturation marked).')
flags.DEFINE_float('seconds_per_rate', 12.0, '--rates: load per rate: max(--queries, '
                   'rate x seconds_per_rate) queries.')
flags.DEFINE_integer('batch_size', 1, 'Queries per batch of the frontend\'s batcher (the '
                     'policy\'s flush_ms bounds the wait of a partial one).')
flags.DEFINE_integer('queries', 1000, 'Queries per mode after the warm-up.')
flags.DEFINE_integer('warmup', 50, 'Queries discarded at the start.')
flags.DEFINE_integer('seed', 0, 'Arrivals, query order and faults.')
flags.DEFINE_enum('body', 'npy', ['npy', 'json'], 'Request body format.')
flags.DEFINE_string('slow', '', 'Comma list of replicas given slowdowns (base0, parity0..).')
flags.DEFINE_float('slow_prob', 0.0, 'Probability a request of a slow replica is delayed.')
flags.DEFINE_float('slow_ms', 0.0, 'The delay (scale), ms.')
flags.DEFINE_enum('slow_dist', 'fixed', ['fixed', 'exp', 'pareto'], 'Delay distribution.')
flags.DEFINE_enum('kill', 'none', ['none', 'replica', 'node'],
                  'Kill base replica 0 (its process exits) or its whole node mid-run.')
flags.DEFINE_float('kill_at_s', 10.0, 'When, seconds after the load starts.')
flags.DEFINE_float('recover_s', 5.0, '--kill=node: a replacement node joins this later.')
flags.DEFINE_float('deadline_ms', 10_000.0, 'Server deadline per query (504 after).')
flags.DEFINE_float('timeout_s', 60.0, 'Wait this long for the last answers.')
flags.DEFINE_string('address', '', 'Join this Ray cluster (empty: a local one).')
flags.DEFINE_integer('num_cpus', 8, 'Logical CPUs of a local cluster.')
flags.DEFINE_float('replica_cpus', 1.0, 'Ray CPUs reserved per model replica.')
flags.DEFINE_integer('port', 8000, 'HTTP port of the Serve proxy.')
flags.DEFINE_string('name', 'pmjax_bench', 'Serve application name (served under /NAME).')
flags.DEFINE_string('policy', '', 'JSON of policy settings, e.g. {"flush_ms": 20}.')
flags.DEFINE_string('replica_env', json.dumps(cluster.BENCH_REPLICA_ENV),
                    'JSON of environment variables of the replicas (default: single-threaded '
                    'Eigen, faster at batch 1 and no oversubscription of a small machine).')
flags.DEFINE_integer('parity_nice', 0, 'CPU niceness of the parity replicas (> 0 on a '
                     'small machine shared by every replica: their work does not slow the '
                     'base replicas, as on separate machines).')
flags.DEFINE_bool('reference', False, 'Also compute, in-process, F\'s accuracy and the A_d '
                  'of the served queries in groups of k, for the HTTP accuracy to match.')
flags.DEFINE_string('out', 'workdirs/cluster_bench', 'summary.json and latency_cdf.png.')


def fault_specs(slow, slow_prob, slow_ms, slow_dist, seed, kill_at_s=None) -> dict:
  """`cluster.set_faults`' argument: {deployment: {rank: FaultSpec fields}}."""
  specs = {}
  for name in filter(None, slow.split(',')):
    kind, rank = name.rstrip('0123456789'), int(name[len(name.rstrip('0123456789')):] or 0)
    if kind not in ('base', 'parity'):
      raise app.UsageError(f'--slow={name!r}: name base<rank> or parity<rank>')
    deployment = 'BaseModel' if kind == 'base' else 'ParityModel0'
    specs.setdefault(deployment, {})[rank] = dict(
        slow_prob=slow_prob, slow_ms=slow_ms, slow_dist=slow_dist, seed=seed * 1000 + rank)
  if kill_at_s is not None:
    specs.setdefault('BaseModel', {}).setdefault(0, {'seed': seed})['fail_at_s'] = kill_at_s
  return specs


def encode_body(x, body: str) -> tuple:
  return bodies.encode(x, body)


def arrivals(seed, rate, n, num_bodies) -> tuple:
  """The load's gaps between queries (s) and the order it sends the test queries in."""
  rng = np.random.default_rng(seed)
  return rng.exponential(1.0 / rate, n), rng.permutation(num_bodies)


async def _drive(url, bodies, labels, rate, n, warmup, seed, timeout_s, score):
  """Open-loop Poisson load over HTTP; one record per query after the warm-up (the
  in-process loadgen's fields, with the server's latency_ms, the answering instance and
  the send time)."""
  import httpx  # pylint: disable=g-import-not-at-top
  gaps, order = arrivals(seed, rate, n, len(bodies))
  records = [None] * n
  limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)

  start = time.perf_counter()

  async def one(client, i, due):
    j = int(order[i % len(order)])
    body, ctype = bodies[j]
    t0 = time.perf_counter()
    sent = {'sent_s': t0 - start, 'lag_ms': (t0 - due) * 1e3}  # lag: the client's own
    try:
      r = await client.post(url, content=body, headers={'content-type': ctype})
      latency = (time.perf_counter() - t0) * 1e3
      if r.status_code == 200:
        a = r.json()
        records[i] = {'latency_ms': latency, 'reconstructed': a['reconstructed'],
                      'correct': score.correct_one(a['logits'], labels[j]), 'error': None,
                      'server_ms': a['latency_ms'], 'instance': a['instance'], **sent}
      else:
        records[i] = {'latency_ms': None, 'reconstructed': False, 'correct': False,
                      'error': f'HTTP {r.status_code}', **sent}
        if r.status_code not in (503, 504) or os.environ.get('PMJAX_VERBOSE'):
          print(f'query {i}: HTTP {r.status_code} {r.text[:300]}', flush=True)
    except Exception as e:  # pylint: disable=broad-except
      records[i] = {'latency_ms': None, 'reconstructed': False, 'correct': False,
                    'error': type(e).__name__, **sent}

  async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
    for _ in range(4):  # connections and the path warm before the clock starts
      await client.post(url, content=bodies[0][0], headers={'content-type': bodies[0][1]})
    tasks, start = [], time.perf_counter()
    next_t = start
    for i in range(n):
      next_t += gaps[i]
      sleep = next_t - time.perf_counter()
      if sleep > 0:
        await asyncio.sleep(sleep)
      tasks.append(asyncio.create_task(one(client, i, next_t)))
    await asyncio.wait(tasks, timeout=timeout_s)
  return [r if r is not None else {'latency_ms': None, 'reconstructed': False,
                                   'correct': False, 'error': 'lost'}
          for r in records[warmup:]]


class LocalCluster:
  """A head node (frontend, parity replicas) and one node per base replica on this
  machine (`ray.cluster_utils.Cluster`, a Ray developer API), for node failures."""

  def __init__(self, data_nodes: int, head_cpus: int = 4, node_cpus: int = 1):
    from ray.cluster_utils import Cluster  # pylint: disable=g-import-not-at-top
    self.node_cpus = node_cpus
    self.cluster = Cluster(initialize_head=True, head_node_args={
        'num_cpus': head_cpus, 'resources': {cluster.PARITY_RESOURCE: 100},
        'include_dashboard': False})
    for _ in range(data_nodes):
      self.add_data_node()
    self.cluster.wait_for_nodes()
    self.address = self.cluster.address

  def add_data_node(self):
    return self.cluster.add_node(num_cpus=self.node_cpus,
                                 resources={cluster.DATA_RESOURCE: 100})

  def remove(self, node_id: str):
    node = next(n for n in self.cluster.list_all_nodes() if n.node_id == node_id)
    self.cluster.remove_node(node)

  def shutdown(self):
    self.cluster.shutdown()


def run_mode(mode, f, bodies, labels, local=None, score=None, rates=None) -> dict:
  """Deploys `mode`, sets the faults, drives the load at each of `rates` (default
  [--rate]); the summary of the first rate, with `curve` (one summary per rate)."""
  settings = cluster.ServeSettings(
      workdir=f.workdir, mode=mode, m=f.m, deadline_ms=f.deadline_ms, batch_size=f.batch_size,
      replica_cpus=f.replica_cpus, frontend_cpus=0.5,
      placement='domains' if local else 'none', max_replicas_per_node=1 if local else 0,
      policy=json.loads(f.policy) if f.policy else {},
      env=json.loads(f.replica_env) if f.replica_env else {}, parity_nice=f.parity_nice)
  name = f.name
  handle = cluster.deploy(settings, name=name, route_prefix=f'/{name}')
  initial = {i['replica'] for i in cluster.replica_infos(name)}
  kill_at = f.kill_at_s if f.kill == 'replica' else None
  cluster.set_faults(fault_specs(f.slow, f.slow_prob, f.slow_ms, f.slow_dist, f.seed, kill_at),
                     name)
  events = []
  if f.kill == 'node':
    victim = next(i['node'] for i in cluster.replica_infos(name)
                  if i['kind'] == 'base' and i['rank'] == 0)
    events = [(f.kill_at_s, lambda: local.remove(victim)),
              (f.kill_at_s + f.recover_s, local.add_data_node)]
  url = f'http://127.0.0.1:{f.port}/{name}/predict'
  curve = []
  for i, rate in enumerate(rates or [f.rate]):
    n = f.queries if not rates else max(f.queries, int(rate * f.seconds_per_rate))
    summary = _load(f, url, bodies, labels, rate, n, events if i == 0 else [], score)
    summary.update(mode=mode, offered_qps=rate, frontend=handle.stats.remote().result())
    curve.append(summary)
  summary = curve[0]
  replicas = cluster.replica_infos(name)
  for info in replicas:
    info['replacement'] = info['replica'] not in initial
  summary.update(replicas=replicas, replacements_used=sum(
      i['replacement'] and i['served'] > 0 for i in replicas))
  if rates:
    summary['curve'] = [{k: v for k, v in c.items() if k not in RAW + ('frontend',)}
                        for c in curve]
  return summary


def _load(f, url, bodies, labels, rate, n, events, score) -> dict:
  """One open-loop run of `n` queries at `rate` (+ the warm-up), `events` on time."""
  t0 = time.time()
  out = {}
  # The load runs on its own thread; node events on this one (Ray's node start and stop
  # install signal handlers, which only the main thread may).
  load = threading.Thread(target=lambda: out.update(records=asyncio.run(_drive(
      url, bodies, labels, rate, n + f.warmup, f.warmup, f.seed, f.timeout_s,
      score or metrics.CLASSIFICATION))))
  load.start()
  for at_s, fn in events:
    time.sleep(max(0.0, at_s - (time.time() - t0)))
    fn()
  load.join()
  records = out['records']
  wall_s = time.time() - t0
  summary = loadgen.summarize(records)
  server = [r['server_ms'] for r in records if r.get('server_ms') is not None]
  summary['frontend_latency'] = loadgen.latency_summary(server)  # in the ingress
  summary.update(curves.window_rates(records))
  summary.update(wall_s=wall_s)
  summary['latencies_ms'] = sorted(r['latency_ms'] for r in records
                                   if r['latency_ms'] is not None)
  summary['records'] = records
  return summary


RAW = ('latencies_ms', 'records')


def reference_accuracy(workdir, xs, ys, order, k, score=None) -> dict:
  """F's accuracy on the served queries and evaluate's A_d over the same queries grouped
  as served (consecutive k of the query order), computed in-process: what the HTTP
  figures should match."""
  from pmjax.serving.instance import CompiledPredict  # pylint: disable=g-import-not-at-top
  parts = bench.make_parts(workdir, with_data=False)
  f = CompiledPredict(parts.base_fn, parts.base_vars)
  fp = CompiledPredict(parts.parity_fn, parts.parity_vars[0])
  batches = lambda fn, a: np.concatenate([fn(a[i:i + 256]) for i in range(0, len(a), 256)])
  out = batches(f, xs)
  score = score or metrics.CLASSIFICATION
  groups = order[:len(order) // k * k].reshape(-1, k)
  z = batches(fp, np.asarray(parts.encode(xs[groups]))[:, 0])[:, None]
  hits = []
  for miss in range(k):
    avail = np.ones(groups.shape, bool)
    avail[:, miss] = False
    yhat = np.asarray(parts.decode(out[groups], avail, z, np.ones((len(groups), 1), bool)))
    hits += [score.correct_one(o, y) for o, y in zip(yhat[:, miss], ys[groups[:, miss]])]
  return {'A_a': float(np.mean([score.correct_one(o, y) for o, y in zip(out, ys)])),
          'A_d': float(np.mean(hits)),
          'queries': int(len(xs)), 'groups': int(len(groups))}


def main(argv):
  del argv
  f = flags.FLAGS
  logging.getLogger('httpx').setLevel(logging.WARNING)   # no line per request
  if not f.workdir:
    raise app.UsageError('--workdir is required (a parity workdir)')
  modes = bench.parse_modes(f.mode)
  if f.kill == 'node' and f.address:
    raise app.UsageError('--kill=node removes a node of a local ray.cluster_utils.Cluster; '
                         'leave --address empty')
  with cli.user_errors():
    config = runs.read_config(f.workdir)
    splits = pipeline.load_splits(config.data)
    code = runs.make_code(config)
  n = min(len(splits.test_x), f.queries + f.warmup)
  bodies = [encode_body(x, f.body) for x in splits.test_x[:n]]
  labels = splits.test_y[:n]
  local = None
  if f.kill == 'node':
    local = LocalCluster(max(policy.instance_counts(m, f.m, code.k, code.r)[0] for m in modes))
  cluster.init_ray(local.address if local else (f.address or None), f.num_cpus,
                   port=f.port)
  try:
    score = tasks.task_score(config)   # a class, or a box at IoU >= 0.5
    rates = sorted(float(r) for r in f.rates.split(',')) if f.rates else None
    results = {mode: run_mode(mode, f, bodies, labels, local, score, rates)
               for mode in modes}
  finally:
    if f.address:            # a cluster we joined: leave its Serve running
      cluster.serve.delete(f.name)
    else:
      cluster.serve.shutdown()
    cluster.ray.shutdown()
    if local:
      local.shutdown()
  os.makedirs(f.out, exist_ok=True)
  flag_values = {k: getattr(f, k) for k in (
      'workdir', 'mode', 'm', 'rate', 'rates', 'seconds_per_rate', 'batch_size', 'queries',
      'warmup', 'seed', 'body', 'slow', 'slow_prob', 'slow_ms', 'slow_dist', 'kill', 'kill_at_s', 'recover_s', 'deadline_ms', 'replica_cpus',
      'policy', 'replica_env', 'parity_nice')}
  with open(os.path.join(f.out, 'summary.json'), 'w') as fh:
    json.dump({'flags': flag_values, 'backend': 'ray serve, HTTP',
               'results': {m: {k: v for k, v in s.items() if k not in RAW}
                           for m, s in results.items()}}, fh, indent=2)
  with open(os.path.join(f.out, 'samples.json'), 'w') as fh:   # one record per query
    json.dump({m: s['records'] for m, s in results.items()}, fh)
  bench.plot_cdf(results, os.path.join(f.out, 'latency_cdf.png'),
                 f'Ray Serve over HTTP: {config.model} {config.code.name} k={code.k}, '
                 f'{f.rate:g} q/s, slow={f.slow or "-"} p={f.slow_prob} {f.slow_ms:g} ms'
                 + (f', kill {f.kill} at {f.kill_at_s:g} s' if f.kill != 'none' else ''))
  if rates:
    curves.write({m: s['curve'] for m, s in results.items()}, f.out,
                 f'Ray Serve over HTTP: {config.model} {config.code.name} k={code.k}, batch '
                 f'{f.batch_size}, slow={f.slow or "-"} p={f.slow_prob} {f.slow_ms:g} ms')
  cols = ('count', 'lost', 'median_ms', 'p99_ms', 'p99.9_ms', 'frac_reconstructed',
          'accuracy', 'accuracy_reconstructed', 'replacements_used')
  print('| mode | ' + ' | '.join(cols) + ' | errors |')
  print('|---|' + '---|' * (len(cols) + 1))
  for mode, s in results.items():
    cells = [f'{s[c]:.4g}' if isinstance(s[c], float) else str(s[c]) for c in cols]
    print(f'| {mode} | ' + ' | '.join(cells) + f" | {s['errors'] or 0} |")
  if f.reference:
    order = arrivals(f.seed, f.rate, f.queries + f.warmup, n)[1]
    ref = reference_accuracy(f.workdir, splits.test_x[:n], labels, order, code.k, score)
    print(f"reference (in-process, the same {ref['queries']} queries): F's accuracy "
          f"{ref['A_a']:.4f}, A_d over {ref['groups']} groups of them {ref['A_d']:.4f}")
    with open(os.path.join(f.out, 'reference.json'), 'w') as fh:
      json.dump(ref, fh, indent=2)
  print(f'wrote {f.out}/summary.json and {f.out}/latency_cdf.png')


if __name__ == '__main__':
  app.run(main)
