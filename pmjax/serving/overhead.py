"""pmjax's serving path against a bare Ray Serve path, in the same run: where the time goes.

    python -m pmjax.serving.overhead --workdir=W_PARITY --queries=400 --clients=16 \
        --seconds=10 --out=DIR

One Ray session holds, side by side, on the same query bodies (test-set queries as
`.npy`):
- `echo`: a bare Serve deployment that answers a vector of F's output size, called
  through its handle from this process (`echo handle`) and through a bare FastAPI
  ingress that parses the `.npy` body, calls the echo handle and answers JSON
  (`echo http`): Serve's own hops, nothing of pmjax;
- pmjax's application (`pmjax.serving.cluster`) in mode `none` (m=1: one F replica, no
  coding) and `coded`, over HTTP.
Latency: one query at a time (closed loop), the median and p99 of each path; pmjax's
*added* median is its median minus the replica's own compute (`service_ms_median`)
minus the bare `echo http` median. Breakdown: the ingress's own latency (`latency_ms`
of the answers, from its parse to its answer) against the client's, and in-process
timings of the body's parse (`.npy` and JSON) and of pmjax's `Frontend` over in-process
instances that answer at once (its batching, policy, queues and threads alone).
Throughput: `--clients` concurrent closed-loop clients for `--seconds`: answers/s of
each path (the saturation throughput of this machine) and the latency under that load
("loaded"), from the bench's own client and,
beside it, from `wrk` (an external HTTP load generator, Debian package `wrk`: the same
number of connections, one `.npy` body) where it is installed. Writes DIR/overhead.json and
prints the table.
"""

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from absl import app, flags
import numpy as np

from pmjax import cli, runs
from pmjax.data import pipeline
from pmjax.serving import bench, bodies, cluster, loadgen

flags.DEFINE_string('workdir', '', 'A parity workdir (F from its base_workdir).')
flags.DEFINE_integer('queries', 300, 'Sequential queries per path (latency).')
flags.DEFINE_integer('clients', 16, 'Concurrent closed-loop clients (throughput).')
flags.DEFINE_float('seconds', 8.0, 'Length of each throughput run.')
flags.DEFINE_integer('num_cpus', 8, 'Logical CPUs of the local Ray cluster.')
flags.DEFINE_string('address', '', 'Join this Ray cluster (default: start a local one).')
flags.DEFINE_integer('port', 8000, 'HTTP port of the Serve proxy.')
flags.DEFINE_string('modes', 'none,coded', 'pmjax modes to measure.')
flags.DEFINE_string('policy', '{"flush_ms": 20, "auto_hold": true, "parity_delay_ms": 50}',
                    'JSON of the coded policy settings.')
flags.DEFINE_string('replica_env', json.dumps(cluster.BENCH_REPLICA_ENV),
                    'JSON of environment variables of the replicas.')
flags.DEFINE_string('out', 'workdirs/overhead', 'overhead.json.')
flags.DEFINE_bool('wrk', True, 'Also drive each HTTP path with `wrk` (Debian package '
                  '`wrk`), --clients connections for --seconds, beside the bench\'s own '
                  'client; skipped with a note where wrk is not installed.')

WRK_LUA = '''wrk.method = "POST"
wrk.headers["Content-Type"] = "%s"
local f = assert(io.open("%s", "rb"))
wrk.body = f:read("*all")
f:close()
'''


def _wrk_ms(text: str) -> float:
  value, unit = re.fullmatch(r'([0-9.]+)(us|ms|s|m)', text).groups()
  return float(value) * {'us': 1e-3, 'ms': 1.0, 's': 1e3, 'm': 6e4}[unit]


def run_wrk(url, body: bytes, clients: int, seconds: float, tmp: str) -> dict | None:
  """`wrk --latency` with `clients` connections (one thread) POSTing `body`: answers/s,
  non-2xx count and its latency percentiles (ms); None where wrk is not installed."""
  exe = shutil.which('wrk')
  if exe is None:
    return None
  with open(os.path.join(tmp, 'body.npy'), 'wb') as fh:
    fh.write(body)
  script = os.path.join(tmp, 'post.lua')
  with open(script, 'w') as fh:
    fh.write(WRK_LUA % (bodies.NPY_TYPE, os.path.join(tmp, 'body.npy')))
  r = subprocess.run([exe, '-t1', f'-c{clients}', f'-d{max(1, round(seconds))}s',
                      '--timeout', '60s', '--latency', '-s', script, url],
                     capture_output=True, text=True, timeout=seconds + 120)
  if r.returncode != 0:
    raise RuntimeError(f'wrk failed on {url}: {r.stderr[-500:]}')
  out = {'answers_per_s': float(re.search(r'Requests/sec:\s+([0-9.]+)', r.stdout)[1])}
  bad = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', r.stdout)
  out['errors'] = int(bad[1]) if bad else 0
  for q in ('50', '99'):
    m = re.search(rf'^\s+{q}%\s+(\S+)', r.stdout, re.M)
    out['median_ms' if q == '50' else 'p99_ms'] = _wrk_ms(m[1]) if m else None
  return out


class Echo:
  """The bare replica: answers a vector of `width` float32 zeros (F's output size)."""

  def __init__(self, width: int):
    self.out = np.zeros((1, width), np.float32)

  async def predict(self, x):  # pylint: disable=unused-argument
    return self.out


def echo_app(width: int):
  """The bare Serve application: a FastAPI ingress (parse `.npy`, call the echo
  deployment through its handle, answer JSON) over the `Echo` deployment."""
  from fastapi import FastAPI, Request  # pylint: disable=g-import-not-at-top
  from ray import serve  # pylint: disable=g-import-not-at-top
  http = FastAPI()

  @serve.ingress(http)
  class EchoIngress:
    def __init__(self, echo):
      self.echo = echo

    @http.post('/predict')
    async def predict(self, request: Request):
      x = np.load(io.BytesIO(await request.body()), allow_pickle=False)
      out = await self.echo.predict.remote(x[None])
      return {'logits': np.asarray(out).ravel().tolist()}

  echo = serve.deployment(Echo, name='Echo', num_replicas=1,
                          ray_actor_options={'num_cpus': 0}).bind(width)
  return serve.deployment(EchoIngress, name='EchoIngress', num_replicas=1,
                          max_ongoing_requests=1000,
                          ray_actor_options={'num_cpus': 0}).bind(echo)


async def _sequential(url, bodies_, n):
  import httpx  # pylint: disable=g-import-not-at-top
  client_ms, server_ms = [], []
  async with httpx.AsyncClient(timeout=60) as client:
    for i in range(n + 10):
      body = bodies_[i % len(bodies_)]
      t = time.perf_counter()
      r = await client.post(url, content=body, headers={'content-type': bodies.NPY_TYPE})
      ms = (time.perf_counter() - t) * 1e3
      if r.status_code != 200:
        raise RuntimeError(f'{url}: HTTP {r.status_code} {r.text[:300]}')
      if i >= 10:                        # the first ten warm the connection and the path
        client_ms.append(ms)
        if 'latency_ms' in r.json():
          server_ms.append(r.json()['latency_ms'])
  return client_ms, server_ms


async def _throughput(url, bodies_, clients, seconds):
  import httpx  # pylint: disable=g-import-not-at-top
  done, errors = [], 0
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(timeout=60, limits=limits) as client:
    stop = time.perf_counter() + seconds

    async def worker(w):
      nonlocal errors
      i = w
      while time.perf_counter() < stop:
        t = time.perf_counter()
        r = await client.post(url, content=bodies_[i % len(bodies_)],
                              headers={'content-type': bodies.NPY_TYPE})
        if r.status_code == 200:
          done.append((time.perf_counter() - t) * 1e3)
        else:
          errors += 1
        i += clients
    t0 = time.perf_counter()
    await asyncio.gather(*[worker(w) for w in range(clients)])
    wall = time.perf_counter() - t0
  return {'answers_per_s': len(done) / wall, 'errors': errors,
          **loadgen.latency_summary(done)}


def handle_latency(handle, xs, n) -> list:
  out = []
  for i in range(n + 10):
    t = time.perf_counter()
    handle.predict.remote(xs[i % len(xs)][None]).result()
    if i >= 10:
      out.append((time.perf_counter() - t) * 1e3)
  return out


def parse_timings(xs, query_shape, dtype, n=300) -> dict:
  """Microseconds per body: `.npy` and JSON parse + check (the ingress's own parser)."""
  parser = bodies.QueryParser(query_shape, dtype, lambda q: np.array(q, copy=True))
  npy = [bodies.encode(x, 'npy')[0] for x in xs[:n]]
  js = [bodies.encode(x, 'json')[0] for x in xs[:n]]
  res = {}
  for name, bs, ctype in (('npy', npy, bodies.NPY_TYPE), ('json', js, 'application/json')):
    t = time.perf_counter()
    for b in bs:
      parser.parse(b, ctype)
    res[f'parse_{name}_us'] = (time.perf_counter() - t) / len(bs) * 1e6
    res[f'body_{name}_bytes'] = int(np.mean([len(b) for b in bs]))
  return res


def frontend_alone(parts, xs, n) -> dict:
  """pmjax's in-process `Frontend` (mode none, batch 1) over an instance answering at
  once: the median of submit -> answer, its own batching, queues and threads alone."""
  from pmjax.serving.frontend import Frontend  # pylint: disable=g-import-not-at-top
  out = np.zeros((1, 10), np.float32)
  fe = Frontend('none', [lambda x: out], query_shape=parts.query_shape,
                query_dtype=parts.query_dtype).start()
  lat = []
  try:
    for i in range(n + 10):
      t = time.perf_counter()
      fe.submit(xs[i % len(xs)]).result(timeout=10)
      if i >= 10:
        lat.append((time.perf_counter() - t) * 1e3)
  finally:
    fe.close()
  return loadgen.latency_summary(lat)


def main(argv):
  del argv
  f = flags.FLAGS
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger('httpx').setLevel(logging.WARNING)
  logging.getLogger('absl').setLevel(logging.WARNING)   # orbax's restore notes
  if not f.workdir:
    raise app.UsageError('--workdir is required (a parity workdir)')
  with cli.user_errors():
    config = runs.read_config(f.workdir)
    splits = pipeline.load_splits(config.data)
  parts = bench.make_parts(f.workdir, with_data=False)
  xs = splits.test_x[:max(64, min(f.queries, len(splits.test_x)))]
  bodies_ = [bodies.encode(x, 'npy')[0] for x in xs]
  width = int(np.asarray(parts.base_fn(parts.base_vars, xs[:1])).shape[-1])
  res = {'flags': {k: getattr(f, k) for k in ('workdir', 'queries', 'clients', 'seconds',
                                               'modes', 'policy', 'replica_env')},
         'in_process': {**parse_timings(xs, parts.query_shape, parts.query_dtype),
                        'frontend_alone': frontend_alone(parts, xs, f.queries)},
         'paths': {}}
  cluster.init_ray(f.address or None, f.num_cpus, port=f.port)
  base = f'http://127.0.0.1:{f.port}'
  try:
    handle = cluster.serve.run(echo_app(width), name='echo', route_prefix='/echo')
    echo = cluster.serve.get_deployment_handle('Echo', 'echo')
    del handle
    res['paths']['echo handle'] = {'latency': loadgen.latency_summary(
        handle_latency(echo, xs, f.queries))}
    paths = [('echo http', f'{base}/echo/predict', None)]
    for mode in f.modes.split(','):
      settings = cluster.ServeSettings(
          workdir=f.workdir, mode=mode, m=1 if mode == 'none' else 2, replica_cpus=0,
          frontend_cpus=0, policy=json.loads(f.policy) if mode == 'coded' else {},
          env=json.loads(f.replica_env) if f.replica_env else {})
      cluster.deploy(settings, name=f'pm_{mode}', route_prefix=f'/pm_{mode}')
      paths.append((f'pmjax {mode}', f'{base}/pm_{mode}/predict', f'pm_{mode}'))
    for name, url, appname in paths:
      client_ms, server_ms = asyncio.run(_sequential(url, bodies_, f.queries))
      entry = {'latency': loadgen.latency_summary(client_ms)}
      if server_ms:
        entry['ingress_latency'] = loadgen.latency_summary(server_ms)
      if appname:
        infos = cluster.replica_infos(appname)
        entry['replica_service_ms_median'] = float(np.median(
            [i['service_ms_median'] for i in infos if i['kind'] == 'base' and i['served']]))
      entry['throughput'] = asyncio.run(_throughput(url, bodies_, f.clients, f.seconds))
      if f.wrk:
        with tempfile.TemporaryDirectory() as tmp:
          entry['wrk'] = run_wrk(url, bodies_[0], f.clients, f.seconds, tmp)
      res['paths'][name] = entry
      print(f'{name}: median {entry["latency"]["median_ms"]:.2f} ms, '
            f'{entry["throughput"]["answers_per_s"]:.0f} answers/s', flush=True)
  finally:
    if f.address:               # a cluster we joined: leave it and its Serve running
      for name in ['echo'] + [f'pm_{m}' for m in f.modes.split(',')]:
        cluster.serve.delete(name)
    else:
      cluster.serve.shutdown()
    cluster.ray.shutdown()
  bare = res['paths']['echo http']
  for name, entry in res['paths'].items():
    if name.startswith('pmjax'):
      added = (entry['latency']['median_ms'] - entry['replica_service_ms_median']
               - bare['latency']['median_ms'])
      entry['added_median_ms'] = added
      entry['added_over_bare'] = added / bare['latency']['median_ms']
      entry['throughput_over_bare'] = (entry['throughput']['answers_per_s'] /
                                       bare['throughput']['answers_per_s'])
  os.makedirs(f.out, exist_ok=True)
  with open(os.path.join(f.out, 'overhead.json'), 'w') as fh:
    json.dump(res, fh, indent=2)
  print('| path | median ms | p99 ms | ingress median ms | replica compute ms | added median '
        'ms (x bare) | answers/s (x bare) | loaded median / p99 ms | wrk answers/s | '
        'wrk median / p99 ms |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for name, e in res['paths'].items():
    lat, thr = e['latency'], e.get('throughput')
    ing = e.get('ingress_latency', {}).get('median_ms')
    cells = [f'{lat["median_ms"]:.2f}', f'{lat["p99_ms"]:.2f}',
             f'{ing:.2f}' if ing is not None else '-',
             f'{e["replica_service_ms_median"]:.2f}' if 'replica_service_ms_median' in e else '-',
             (f'{e["added_median_ms"]:.2f} ({e["added_over_bare"]:.2f}x)'
              if 'added_median_ms' in e else '-'),
             (f'{thr["answers_per_s"]:.0f}' + (f' ({e["throughput_over_bare"]:.2f}x)'
                                              if 'throughput_over_bare' in e else '')
              if thr else '-'),
             f'{thr["median_ms"]:.2f} / {thr["p99_ms"]:.2f}' if thr else '-']
    wrk = e.get('wrk')
    cells += ([f'{wrk["answers_per_s"]:.0f}' + (f' ({wrk["errors"]} non-2xx)'
                                               if wrk['errors'] else ''),
               f'{wrk["median_ms"]:.2f} / {wrk["p99_ms"]:.2f}'] if wrk else ['-', '-'])
    print(f'| {name} | ' + ' | '.join(cells) + ' |')
  ip = res['in_process']
  print(f"in-process: .npy parse {ip['parse_npy_us']:.0f} us ({ip['body_npy_bytes']} B), "
        f"JSON parse {ip['parse_json_us']:.0f} us ({ip['body_json_bytes']} B), "
        f"Frontend alone median {ip['frontend_alone']['median_ms']:.3f} ms")
  print(f'wrote {f.out}/overhead.json')


if __name__ == '__main__':
  app.run(main)
