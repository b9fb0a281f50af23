"""Discrete-event simulation of the serving policies at the paper's scale.

    python -m pmjax.serving.sim --config=configs/sim.py --config.calm_s=20 --config.out=DIR

Each mode's policy object (`policy.make_policy`: the same `Coded`, `Hedge`,
`Direct` the real loop runs) decides; `simulate` is its driver over simulated
instances that pull from FIFO pools, with `faults.FaultInjector` for per-batch
slowdowns. Settings: `configs/sim.py` (fields named below). Service times are
drawn from samples measured on real compiled instances of `model` on this
machine (batch 1, random weights: the time does not depend on them), or loaded
from a serving bench run (`service_from=DIR/summary.json`; the samples are in
DIR/samples.json).

Interference model (`interference`): each instance alternates between normal
and interfered periods (exponential durations, means `calm_s` and `busy_s`);
while interfered, its service times are multiplied by `busy_factor`
(background work sharing its machine). Per-batch random slowdowns
(`slow_prob`, `slow_ms`) can be added as in the real loop.

Writes DIR/sim.json (per rate and mode: the loadgen summary) and
DIR/sim_p999.png (p99.9 and p99.9 - median against the rate, coded vs equal).
"""

from __future__ import annotations

import collections
import heapq
import json
import os
import time

from absl import app, flags, logging
import numpy as np

from pmjax import config_utils
from pmjax.serving import loadgen, policy
from pmjax.serving.faults import FaultInjector, FaultSpec


class _Instance:
  def __init__(self, kind, idx, rng, samples_s, faults, interference):
    self.kind, self.name = kind, f'{kind}{idx}'
    self.rng, self.samples = rng, samples_s
    self.faults = FaultInjector(faults)
    self.busy_until = 0.0
    self.idle = True
    self.interference = interference   # None or (calm_s, busy_s, factor)
    self.switch_at, self.interfered = 0.0, False
    if interference:
      self.switch_at = rng.exponential(interference[0])

  def service_time(self, now):
    base = self.samples[self.rng.integers(len(self.samples))]
    if self.interference:
      calm, busy, factor = self.interference
      while self.switch_at <= now:
        self.interfered = not self.interfered
        self.switch_at += self.rng.exponential(busy if self.interfered else calm)
      if self.interfered:
        base *= factor
    return base + self.faults.extra_delay_s()


def simulate(mode, m, k, rate, num_queries, base_samples_s, parity_samples_s=None, *,
             r=1, seed=0, interference=None, slow=None, warmup=0, encode_s=0.0, decode_s=0.0,
             **policy_params) -> dict:
  """Returns per-query latencies (s) and whether each was reconstructed.

  The mode's policy (`policy.make_policy(mode, k, r, n_base, **policy_params)`:
  hedge_delay_s; parity_wait_s, flush_timeout_s) decides; this function is its
  driver, as `frontend.Frontend` is in the real loop: batches of one query,
  FIFO pools of instances (the base instances; for each parity slot j, the
  parity instances i with i % r == j), encode and decode times added to the
  parity path and to reconstructed answers."""
  rng = np.random.default_rng(seed)
  n_base, n_parity = policy.instance_counts(mode, m, k, r)
  pol = policy.make_policy(mode, k, r, n_base, **policy_params)
  parity_samples_s = base_samples_s if parity_samples_s is None else parity_samples_s
  slow = slow or {}

  def make(kind, i, samples):
    spec = FaultSpec(seed=seed * 7919 + i + (1000 if kind == 'parity' else 0), **slow)
    return _Instance(kind, i, np.random.default_rng(rng.integers(2**31)), samples, spec,
                     interference)

  pools = {None: [make('base', i, base_samples_s) for i in range(n_base)]}
  for i in range(n_parity):
    pools.setdefault(i % r, []).append(make('parity', i, parity_samples_s))
  for inst_pool, insts in pools.items():
    for inst in insts:
      inst.pool = inst_pool
  queues = {p: collections.deque() for p in pools}
  events = []   # (time, seq, kind, payload)
  seq = 0

  def push(t, kind, payload):
    nonlocal seq
    seq += 1
    heapq.heappush(events, (t, seq, kind, payload))

  arrivals = np.cumsum(rng.exponential(1.0 / rate, num_queries))
  latency = np.full(num_queries, np.nan)
  reconstructed = np.zeros(num_queries, bool)

  def answer(queries, t, recon):
    for q in queries:
      if np.isnan(latency[q]):
        latency[q] = t - arrivals[q]
        reconstructed[q] = recon

  def dispatch(pool, now):
    for inst in pools[pool]:
      if not inst.idle:
        continue
      while queues[pool]:
        task = queues[pool].popleft()
        if not (task.cancelled or task.done):
          inst.idle = False
          push(now + inst.service_time(now), 'done', (inst, task))
          break
      if not queues[pool]:
        break

  def carry_out(actions, now):
    for a in actions:
      if isinstance(a, policy.Send):
        if a.task.sent_s is None:
          a.task.sent_s = now
        queues[a.pool].append(a.task)
        dispatch(a.pool, now)
      elif isinstance(a, policy.Answer):
        answer(a.task.queries, now, False)
      elif isinstance(a, policy.Decode):
        for i in a.slots:
          answer(a.group.tasks[i].queries, now + decode_s, True)
      elif isinstance(a, policy.Later):
        push(now + a.delay_s, 'timer', a.event)
      elif isinstance(a, policy.Encode):
        push(now + encode_s, 'encoded', a.group)
      # Cancel: the flags are set (dispatch skips them); Fail: the queries stay
      # unanswered (counted lost); Pad: no values to fill in a simulation.

  for q, t in enumerate(arrivals):
    push(t, 'arrive', q)
  while events:
    now, _, kind, payload = heapq.heappop(events)
    if kind == 'arrive':
      carry_out(pol.on_batch(policy.Task(None, [payload])), now)
    elif kind == 'done':
      inst, task = payload
      inst.idle = True
      if not task.done:
        pol.observe(task, now - task.sent_s)
      carry_out(pol.on_output(task), now)
      dispatch(inst.pool, now)
    elif kind == 'timer':
      carry_out(pol.on_timer(payload), now)
    elif kind == 'encoded':
      carry_out(pol.on_encoded(payload), now)
  lat = latency[warmup:]
  return {'latency_s': lat, 'reconstructed': reconstructed[warmup:], 'policy': pol.stats()}


def summarize(result) -> dict:
  lat = result['latency_s']
  s = loadgen.latency_summary(lat[~np.isnan(lat)] * 1e3)
  return {'count': int(lat.size), 'lost': int(np.isnan(lat).sum()), **s,
          'gap_p99.9_median_ms': s['p99.9_ms'] - s['median_ms'],
          'frac_reconstructed': float(result['reconstructed'].mean())}


def measure_service_samples(model_name: str, n: int = 300, dataset: str = 'mnist',
                            batch_size: int = 1) -> np.ndarray:
  """Service times (s) of a real compiled instance of `model_name` on this machine."""
  from pmjax import inference, tasks  # pylint: disable=g-import-not-at-top
  from pmjax.data import builders  # pylint: disable=g-import-not-at-top
  from pmjax.models import get_model  # pylint: disable=g-import-not-at-top
  from pmjax.serving.instance import CompiledPredict  # pylint: disable=g-import-not-at-top
  spec = builders.get_spec(dataset)
  model = get_model(model_name, spec.num_classes)
  predict = CompiledPredict(inference.make_predict(model, dataset),
                            tasks.init_variables(model, 0, spec.image_shape))
  x = np.zeros((batch_size, *spec.image_shape), np.dtype(spec.dtype))
  for _ in range(5):
    predict(x)
  out = []
  for _ in range(n):
    t = time.perf_counter()
    predict(x)
    out.append(time.perf_counter() - t)
  return np.asarray(out)


def plot(results, rates, path, title):
  from pmjax import plotting  # pylint: disable=g-import-not-at-top
  fig, axes = plotting.pyplot().subplots(1, 2, figsize=(9, 3.5))
  for mode in results[str(rates[0])]:
    axes[0].plot(rates, [results[str(r)][mode]['p99.9_ms'] for r in rates], 'o-', label=mode)
    axes[1].plot(rates, [results[str(r)][mode]['gap_p99.9_median_ms'] for r in rates], 'o-',
                 label=mode)
  axes[0].set_ylabel('p99.9 latency (ms)')
  axes[1].set_ylabel('p99.9 - median (ms)')
  for ax in axes:
    ax.set_xlabel('query rate (queries/s)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  plotting.save(fig, path)


def service_samples_ms(path: str) -> list:
  """Base-model service times (ms) recorded by a serving bench run: its samples.json
  (beside `path`, a summary.json) or, in summaries written before it, the summary."""
  samples = os.path.join(os.path.dirname(path), 'samples.json')
  if os.path.exists(samples):
    with open(samples) as fh:
      return next(iter(json.load(fh).values()))['base_service_ms_samples']
  with open(path) as fh:
    return next(iter(json.load(fh)['results'].values()))['base_service_ms_samples']


def main(argv):
  del argv
  c = flags.FLAGS.config
  logging.set_verbosity(logging.WARNING)
  if c.service_from:
    base_samples = np.asarray(service_samples_ms(c.service_from)) / 1e3
    source = f'measured by the serving bench ({c.service_from})'
  else:
    base_samples = measure_service_samples(c.model)
    source = f'{c.model}, batch 1, measured here on {len(base_samples)} calls'
  rates = [float(r) for r in str(c.rates).split(',')]
  modes = c.modes.split(',')
  interference = (c.calm_s, c.busy_s, c.busy_factor) if c.interference else None
  slow = dict(slow_prob=c.slow_prob, slow_ms=c.slow_ms) if c.slow_prob else None
  params = policy.policy_params(c.policy)
  results, t0 = {}, time.time()
  for rate in rates:
    results[str(rate)] = {}
    for mode in modes:
      res = simulate(mode, c.m, c.k, rate, c.queries, base_samples, r=c.r, seed=c.seed,
                     interference=interference, slow=slow, encode_s=c.encode_us / 1e6,
                     decode_s=c.decode_us / 1e6, warmup=c.queries // 100, **params)
      results[str(rate)][mode] = summarize(res)
  elapsed = time.time() - t0
  os.makedirs(c.out, exist_ok=True)
  meta = {'service_times': source, 'service_median_ms': float(np.median(base_samples) * 1e3),
          'service_p99_ms': float(np.percentile(base_samples, 99) * 1e3),
          'config': c.to_dict(), 'sim_seconds': elapsed}
  with open(os.path.join(c.out, 'sim.json'), 'w') as fh:
    json.dump({'meta': meta, 'results': results}, fh, indent=2)
  plot(results, rates, os.path.join(c.out, 'sim_p999.png'),
       f'simulated, k={c.k}, r={c.r}, m={c.m}, {c.queries} queries, service: {source[:60]}')
  print(f'service time: {source}; median {meta["service_median_ms"]:.2f} ms; '
        f'simulated {len(rates) * len(modes)} runs in {elapsed:.1f} s')
  both = {'coded', 'equal'} <= set(modes)
  print('| rate | ' + ' | '.join(f'{m} p99.9 | {m} gap' for m in modes) +
        (' | gap equal / gap coded |' if both else ' |'))
  print('|---|' + '---|---|' * len(modes) + ('---|' if both else ''))
  best = 0.0
  for rate in rates:
    row = results[str(rate)]
    cells = [f"{row[m]['p99.9_ms']:.1f} | {row[m]['gap_p99.9_median_ms']:.1f}" for m in modes]
    line = f'| {rate:g} | ' + ' | '.join(cells)
    if both:
      ratio = row['equal']['gap_p99.9_median_ms'] / row['coded']['gap_p99.9_median_ms']
      best = max(best, ratio)
      line += f' | {ratio:.2f}x'
    print(line + ' |')
  if best:
    print(f'largest reduction of the p99.9 - median gap, coded vs equal: {best:.2f}x')


if __name__ == '__main__':
  config_utils.define_config_flag('configs/sim.py', 'Simulation config file.')
  app.run(main)
