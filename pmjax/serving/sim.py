"""Discrete-event simulation of the serving policies at the paper's scale.

    python -m pmjax.serving.sim --model=resnet18 --k=2 --m=12 --queries=100000 \
        --rates=150,210,270,330,390 --out=DIR

Each mode runs the same policies as the real loop (`policy.CodedGroup` for
first-answer-wins / decode at k of k+r / cancellation, `policy.HedgeBudget`,
`faults.FaultInjector` for per-batch slowdowns) over simulated instances that
pull from shared FIFO queues. Service times are drawn from samples measured
on real compiled instances of `--model` on this machine (batch 1, random
weights: the time does not depend on them), or loaded from a serving bench
summary (`--service_from=DIR/summary.json`; the samples are in DIR/samples.json).

Interference model (`--interference`): each instance alternates between
normal and interfered periods (exponential durations, means `--calm_s` and
`--busy_s`); while interfered, its service times are multiplied by
`--busy_factor` (background work sharing its machine). Per-batch random
slowdowns (`--slow_prob`, `--slow_ms`) can be added as in the real loop.

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


class _Task:
  __slots__ = ('group', 'slot', 'queries', 'cancelled', 'done', 'copies')

  def __init__(self, group, slot, queries):
    self.group, self.slot, self.queries = group, slot, queries
    self.cancelled = self.done = False
    self.copies = 1


def simulate(mode, m, k, rate, num_queries, base_samples_s, parity_samples_s=None, *,
             r=1, seed=0, interference=None, slow=None, hedge_delay_s=0.0,
             encode_s=0.0, decode_s=0.0, warmup=0, parity_wait_s=0.0) -> dict:
  """Returns per-query latencies (s) and whether each was reconstructed.

  `parity_wait_s` > 0 (r >= 2): a missing output waits up to that long for every
  parity, as in the real frontend."""
  rng = np.random.default_rng(seed)
  n_base, n_parity = policy.instance_counts(mode, m, k, r)
  parity_samples_s = base_samples_s if parity_samples_s is None else parity_samples_s
  slow = slow or {}

  def make(kind, i, samples):
    spec = FaultSpec(seed=seed * 7919 + i + (1000 if kind == 'parity' else 0), **slow)
    return _Instance(kind, i, np.random.default_rng(rng.integers(2**31)), samples, spec,
                     interference)

  base = [make('base', i, base_samples_s) for i in range(n_base)]
  parity = [make('parity', i, parity_samples_s) for i in range(n_parity)]
  queues = {'base': collections.deque(), 'parity': collections.deque()}
  pools = {'base': base, 'parity': parity}
  events = []   # (time, seq, kind, payload)
  seq = 0

  def push(t, kind, payload):
    nonlocal seq
    seq += 1
    heapq.heappush(events, (t, seq, kind, payload))

  arrivals = np.cumsum(rng.exponential(1.0 / rate, num_queries))
  latency = np.full(num_queries, np.nan)
  reconstructed = np.zeros(num_queries, bool)
  hedges = policy.HedgeBudget(policy.hedge_capacity(n_base, k, r) if mode == 'hedge' else 0)

  def answer(q, t, recon):
    if np.isnan(latency[q]):
      latency[q] = t - arrivals[q]
      reconstructed[q] = recon

  def dispatch(kind, now):
    for inst in pools[kind]:
      if not inst.idle:
        continue
      while queues[kind]:
        task = queues[kind].popleft()
        if not (task.cancelled or task.done):
          inst.idle = False
          push(now + inst.service_time(now), 'done', (inst, task))
          break
      if not queues[kind]:
        break

  def carry_out(act, group, now):
    """Decodes, cancels and starts the parity wait as a policy decision says."""
    tasks = group[1]
    for i in act.decode:
      for q in tasks[i].queries:
        answer(q, now + decode_s, True)
    for j in act.cancel:
      if tasks[j] is not None:
        tasks[j].cancelled = True
    if act.start_wait:
      push(now + parity_wait_s, 'expire', group)

  group = None
  for q, t in enumerate(arrivals):
    push(t, 'arrive', q)
  while events:
    now, _, kind, payload = heapq.heappop(events)
    if kind == 'arrive':
      q = payload
      if mode == 'coded':
        if group is None:
          group = (policy.CodedGroup(k, r, parity_wait_s > 0), [None] * (k + r))
        task = _Task(group, sum(x is not None for x in group[1][:k]), [q])
        group[1][task.slot] = task
        if task.slot == k - 1:
          push(now + encode_s, 'parity', group)
          group = None
      else:
        task = _Task(None, 0, [q])
        if mode == 'hedge':
          push(now + hedge_delay_s, 'hedge', task)
      queues['base'].append(task)
      dispatch('base', now)
    elif kind == 'parity':
      g, tasks = payload
      if not g.finished:
        for j in range(r):
          tasks[k + j] = _Task((g, tasks), k + j, [])
          queues['parity'].append(tasks[k + j])
        dispatch('parity', now)
    elif kind == 'expire':
      carry_out(payload[0].expire(), payload, now)
    elif kind == 'hedge':
      task = payload
      if not task.done and hedges.acquire():
        task.copies += 1
        queues['base'].append(task)
        dispatch('base', now)
    elif kind == 'done':
      inst, task = payload
      inst.idle = True
      if mode == 'coded':
        g, tasks = task.group
        task.done = True
        act = g.arrive(task.slot)
        if act.resolve_own:
          for q in task.queries:
            answer(q, now, False)
        carry_out(act, task.group, now)
      elif not task.done:
        task.done = True
        if task.copies > 1:
          hedges.release()
        for q in task.queries:
          answer(q, now, False)
      dispatch(inst.kind, now)
  lat = latency[warmup:]
  return {'latency_s': lat, 'reconstructed': reconstructed[warmup:]}


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
  x = np.zeros((batch_size, *spec.image_shape), np.uint8)
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
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  if f.service_from:
    base_samples = np.asarray(service_samples_ms(f.service_from)) / 1e3
    source = f'measured by the serving bench ({f.service_from})'
  else:
    base_samples = measure_service_samples(f.model)
    source = f'{f.model}, batch 1, measured here on {len(base_samples)} calls'
  rates = [float(r) for r in f.rates.split(',')]
  modes = f.modes.split(',')
  interference = (f.calm_s, f.busy_s, f.busy_factor) if f.interference else None
  slow = dict(slow_prob=f.slow_prob, slow_ms=f.slow_ms) if f.slow_prob else None
  results, t0 = {}, time.time()
  for rate in rates:
    results[str(rate)] = {}
    for mode in modes:
      res = simulate(mode, f.m, f.k, rate, f.queries, base_samples, r=f.r, seed=f.seed,
                     interference=interference, slow=slow, hedge_delay_s=f.hedge_delay_ms / 1e3,
                     encode_s=f.encode_us / 1e6, decode_s=f.decode_us / 1e6,
                     warmup=f.queries // 100, parity_wait_s=f.parity_wait_ms / 1e3)
      results[str(rate)][mode] = summarize(res)
  elapsed = time.time() - t0
  os.makedirs(f.out, exist_ok=True)
  meta = {'service_times': source, 'service_median_ms': float(np.median(base_samples) * 1e3),
          'service_p99_ms': float(np.percentile(base_samples, 99) * 1e3),
          'm': f.m, 'k': f.k, 'r': f.r, 'parity_wait_ms': f.parity_wait_ms,
          'queries': f.queries, 'interference': interference,
          'slow': slow, 'seed': f.seed, 'sim_seconds': elapsed}
  with open(os.path.join(f.out, 'sim.json'), 'w') as fh:
    json.dump({'meta': meta, 'results': results}, fh, indent=2)
  plot(results, rates, os.path.join(f.out, 'sim_p999.png'),
       f'simulated, k={f.k}, r={f.r}, m={f.m}, {f.queries} queries, service: {source[:60]}')
  print(f'service time: {source}; median {meta["service_median_ms"]:.2f} ms; '
        f'simulated {len(rates) * len(modes)} runs in {elapsed:.1f} s')
  print('| rate | ' + ' | '.join(f'{m} p99.9 | {m} gap' for m in modes) +
        (' | gap equal / gap coded |' if {'coded', 'equal'} <= set(modes) else ' |'))
  print('|---|' + '---|---|' * len(modes) + ('---|' if {'coded', 'equal'} <= set(modes) else ''))
  best = 0.0
  for rate in rates:
    row = results[str(rate)]
    cells = [f"{row[m]['p99.9_ms']:.1f} | {row[m]['gap_p99.9_median_ms']:.1f}" for m in modes]
    line = f'| {rate:g} | ' + ' | '.join(cells)
    if {'coded', 'equal'} <= set(modes):
      ratio = row['equal']['gap_p99.9_median_ms'] / row['coded']['gap_p99.9_median_ms']
      best = max(best, ratio)
      line += f' | {ratio:.2f}x'
    print(line + ' |')
  if best:
    print(f'largest reduction of the p99.9 - median gap, coded vs equal: {best:.2f}x')


if __name__ == '__main__':
  flags.DEFINE_string('model', 'resnet18', 'Model whose service times are measured.')
  flags.DEFINE_string('service_from', '', 'Serving bench summary.json with service samples.')
  flags.DEFINE_integer('k', 2, 'Group size.')
  flags.DEFINE_integer('r', 1, 'Parity queries per group (m*r must be divisible by k).')
  policy.define_flags()   # hedge_delay_ms, parity_wait_ms
  flags.DEFINE_integer('m', 12, 'Base instances of the coded mode.')
  flags.DEFINE_integer('queries', 100000, 'Queries per run.')
  flags.DEFINE_string('rates', '150,210,270,330,390', 'Query rates (queries/s).')
  flags.DEFINE_string('modes', 'coded,equal,hedge,none', 'Modes to simulate.')
  flags.DEFINE_bool('interference', True, 'On/off background interference per instance.')
  flags.DEFINE_float('calm_s', 5.0, 'Mean calm period (s).')
  flags.DEFINE_float('busy_s', 0.5, 'Mean interfered period (s).')
  flags.DEFINE_float('busy_factor', 5.0, 'Service-time factor while interfered.')
  flags.DEFINE_float('slow_prob', 0.0, 'Per-batch slowdown probability.')
  flags.DEFINE_float('slow_ms', 0.0, 'Per-batch slowdown (ms).')
  flags.DEFINE_float('encode_us', 0.0, 'Encode time per group added to the parity path.')
  flags.DEFINE_float('decode_us', 0.0, 'Decode time added to reconstructed answers.')
  flags.DEFINE_integer('seed', 0, 'Seed.')
  flags.DEFINE_string('out', 'workdirs/sim', 'Output directory.')
  app.run(main)
