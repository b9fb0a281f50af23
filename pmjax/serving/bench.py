"""Tail latency of the serving loop under stragglers and failures, mode by mode.

    python -m pmjax.serving.bench --workdir=W_PARITY --mode=all --rate=200 --queries=4000 \
        --slow_instances=base0 --slow_prob=0.1 --slow_ms=40 --out=DIR

`W_PARITY` is a parity workdir (F comes from its base_workdir). Each mode
(`coded`: m base + m/k parity instances; `equal` and `hedge`: m + m/k base
instances; `none`: m base) serves the same open-loop Poisson load over the test
set, with the same faults injected into instances of the same names. Writes
DIR/summary.json (per mode: count, lost, median/mean/p99/p99.5/p99.9 ms,
fraction reconstructed, accuracy of answers and of reconstructed answers,
encode/decode us per group, inference ms per batch) and DIR/latency_cdf.png.
JAX's asynchronous CPU dispatch is off (`--cpu_async_dispatch=false`): for
batch-1 serving it only adds a thread hand-off (~20 us) to every call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from functools import partial
from typing import Any, Callable

from absl import app, flags
import jax
import numpy as np

from pmjax import inference, plotting, runs
from pmjax.data import pipeline
from pmjax.serving import loadgen, policy
from pmjax.serving.faults import FaultSpec, start_contention
from pmjax.serving.frontend import Frontend
from pmjax.serving.instance import CompiledPredict


@dataclasses.dataclass
class Parts:
  """What a serving run needs from a parity workdir, loaded once."""
  config: Any
  base_fn: Callable          # F's predict (raw uint8 queries -> outputs)
  base_vars: dict
  parity_fn: Callable        # what answers a coded query
  parity_vars: list          # its variables for each coded-query slot j < code.r
  code: Any
  encode: Callable           # jitted, raw queries -> coded queries
  decode: Callable           # jitted
  splits: Any


def make_parts(parity_workdir: str) -> Parts:
  """F, the parity networks and the code of a parity workdir (`runs.load_run`)."""
  config = runs.read_config(parity_workdir)
  if config.stage != 'parity':
    raise ValueError(f'{parity_workdir} is a {config.stage!r} workdir; pass the workdir of a '
                     f'parity run (its config.base_workdir names F)')
  run = runs.load_run(parity_workdir)
  parity_fn, parity_vars = run.parity_predicts()
  return Parts(config, inference.make_predict(run.base_model, run.dataset), run.base_vars,
               parity_fn, parity_vars, run.code,
               jax.jit(partial(inference.encode_raw, run.code, run.dataset)),
               jax.jit(run.code.decode), pipeline.load_splits(config.data))


def build_frontend(mode, m, parts, faults, batch_size=1, hedge_delay_s=0.0, max_queue=4096,
                   parity_wait_s=0.0, flush_timeout_s=0.05, deadline_s=None):
  code = parts.code
  n_base, n_parity = policy.instance_counts(mode, m, code.k, code.r)
  devices = jax.devices()
  base = [CompiledPredict(parts.base_fn, parts.base_vars, devices[i % len(devices)])
          for i in range(n_base)]
  parity = [CompiledPredict(parts.parity_fn, parts.parity_vars[i % code.r],
                            devices[(n_base + i) % len(devices)]) for i in range(n_parity)]
  return Frontend(mode, base, parity, k=code.k, r=code.r, encode=parts.encode,
                  decode=parts.decode, query_shape=parts.splits.test_x.shape[1:],
                  query_dtype=parts.splits.test_x.dtype,
                  batch_size=batch_size, hedge_delay_s=hedge_delay_s, max_queue=max_queue,
                  faults=faults, parity_wait_s=parity_wait_s if mode == 'coded' else 0.0,
                  flush_timeout_s=flush_timeout_s, deadline_s=deadline_s)


def fault_specs(f, m, k) -> dict:
  names = [n for n in (f.slow_instances or '').split(',') if n]
  specs = {}
  for i in range(m + m // k + 1):
    for name in (f'base{i}', f'parity{i}'):
      specs[name] = FaultSpec(
          slow_prob=f.slow_prob if name in names else 0.0, slow_dist=f.slow_dist,
          slow_ms=f.slow_ms, fail_at_s=f.fail_at_s if name == f.fail_instance else None,
          net_ms_per_mb=f.net_ms_per_mb, seed=f.seed * 1000 + zlib.crc32(name.encode()) % 997)
  return specs


def run_mode(mode, parts, f) -> dict:
  splits = parts.splits
  fe = build_frontend(mode, f.m, parts, fault_specs(f, f.m, parts.code.k), f.batch_size,
                      f.hedge_delay_ms / 1e3, parity_wait_s=f.parity_wait_ms / 1e3,
                      flush_timeout_s=f.flush_ms / 1e3,
                      deadline_s=f.deadline_ms / 1e3 if f.deadline_ms > 0 else None)
  fe.start()
  procs = (start_contention(f.contention_start_s, f.contention_s, f.contention_procs)
           if f.contention_s > 0 else [])
  records = loadgen.run_poisson(fe, splits.test_x, splits.test_y, f.rate, f.queries + f.warmup,
                                warmup=f.warmup, seed=f.seed, timeout_s=f.timeout_s)
  fe.close()
  for p in procs:
    p.join()
  summary = loadgen.summarize(records)
  stats = fe.stats()
  service = {kind: [s for i in fe.instances if i.name.startswith(kind) for s in i.service_s]
             for kind in ('base', 'parity')}
  summary.update(
      mode=mode, instances=stats['instances'], hedges_sent=stats['hedges_sent'],
      encode_us_per_group=stats['encode_us_per_group'],
      decode_us_per_group=stats['decode_us_per_group'],
      base_inference_ms_per_batch=1e3 * float(np.median(service['base'])),
      parity_inference_ms_per_batch=(1e3 * float(np.median(service['parity']))
                                     if service['parity'] else None))
  summary['base_service_ms_samples'] = [1e3 * x for x in service['base'][:2000]]
  summary['latencies_ms'] = sorted(r['latency_ms'] for r in records
                                   if r['latency_ms'] is not None)
  return summary


RAW_SAMPLES = ('latencies_ms', 'base_service_ms_samples')


def plot_cdf(results: dict, path: str, title: str):
  fig, ax = plotting.pyplot().subplots(figsize=(6, 4))
  for mode, s in results.items():
    lat = np.asarray(s['latencies_ms'])
    if lat.size:
      ax.plot(lat, np.arange(1, lat.size + 1) / lat.size,
              label=f"{mode} (p99.9 {s['p99.9_ms']:.1f} ms)")
  ax.set_xscale('log')
  ax.set_xlabel('latency (ms)')
  ax.set_ylabel('fraction of queries')
  ax.set_ylim(0.9, 1.001)
  ax.set_title(title, fontsize=9)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(loc='lower right', fontsize=8)
  plotting.save(fig, path)


def main(argv):
  del argv
  f = flags.FLAGS
  # Serving runs tiny computations: synchronous CPU dispatch saves ~20 us a call.
  jax.config.update('jax_cpu_enable_async_dispatch', f.cpu_async_dispatch)
  if not f.workdir:
    raise app.UsageError('--workdir is required (a parity workdir)')
  modes = policy.MODES if f.mode == 'all' else tuple(f.mode.split(','))
  parts = make_parts(f.workdir)
  results = {mode: run_mode(mode, parts, f) for mode in modes}
  os.makedirs(f.out, exist_ok=True)
  flag_values = {name: f[name].value for name in (
      'workdir', 'm', 'rate', 'queries', 'warmup', 'batch_size', 'hedge_delay_ms', 'parity_wait_ms',
      'flush_ms', 'deadline_ms',
      'slow_instances', 'slow_prob', 'slow_dist', 'slow_ms', 'fail_instance', 'fail_at_s',
      'net_ms_per_mb', 'contention_start_s', 'contention_s', 'seed')}
  with open(os.path.join(f.out, 'summary.json'), 'w') as fh:
    json.dump({'flags': flag_values, 'device': str(jax.devices()[0]),
               'results': {m: {k: v for k, v in s.items() if k not in RAW_SAMPLES}
                           for m, s in results.items()}}, fh, indent=2)
  # Raw samples (the simulator's --service_from reads them) stay out of the summary.
  with open(os.path.join(f.out, 'samples.json'), 'w') as fh:
    json.dump({m: {k: s[k] for k in RAW_SAMPLES} for m, s in results.items()}, fh)
  config = parts.config
  plot_cdf(results, os.path.join(f.out, 'latency_cdf.png'),
           f'{config.model} {config.code} k={config.k}, {f.rate:g} q/s, '
           f'slow={f.slow_instances or "-"} p={f.slow_prob} {f.slow_ms:g} ms'
           + (f', {f.fail_instance} fails at {f.fail_at_s:g} s' if f.fail_instance else ''))
  cols = ('count', 'lost', 'median_ms', 'p99_ms', 'p99.9_ms', 'frac_reconstructed',
          'accuracy', 'accuracy_reconstructed')
  print('| mode | ' + ' | '.join(cols) + ' |')
  print('|---|' + '---|' * len(cols))
  for mode, s in results.items():
    cells = [f'{s[c]:.4g}' if isinstance(s[c], float) else str(s[c]) for c in cols]
    print(f'| {mode} | ' + ' | '.join(cells) + ' |')
  for mode, s in results.items():
    if s['encode_us_per_group'] is not None:
      print(f"{mode}: encode {s['encode_us_per_group']:.0f} us + decode "
            f"{s['decode_us_per_group'] or 0:.0f} us per group; F inference "
            f"{s['base_inference_ms_per_batch']:.3f} ms per batch")
  print(f'wrote {f.out}/summary.json and {f.out}/latency_cdf.png')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Parity workdir (F from its base_workdir).')
  flags.DEFINE_string('mode', 'all', "coded, equal, hedge, none, a comma list, or 'all'.")
  flags.DEFINE_integer('m', 2, 'Base instances of the coded mode (m/k parity instances).')
  flags.DEFINE_float('rate', 100.0, 'Poisson arrival rate, queries/s.')
  flags.DEFINE_integer('queries', 2000, 'Queries per mode (after warm-up).')
  flags.DEFINE_integer('warmup', 200, 'Queries discarded at the start.')
  flags.DEFINE_integer('batch_size', 1, 'Queries per batch.')
  flags.DEFINE_float('flush_ms', 50.0, 'A partial batch or coding group is sent after this '
                     'long (a partial group padded with zero queries).')
  flags.DEFINE_float('deadline_ms', 0.0, 'Fail a query not answered within this (0 = none).')
  policy.define_flags()   # hedge_delay_ms, parity_wait_ms
  flags.DEFINE_string('slow_instances', '', 'Comma list of instances given slowdowns.')
  flags.DEFINE_float('slow_prob', 0.0, 'Probability a batch of a slow instance is delayed.')
  flags.DEFINE_enum('slow_dist', 'fixed', ['fixed', 'exp', 'pareto'], 'Delay distribution.')
  flags.DEFINE_float('slow_ms', 0.0, 'Delay scale (ms).')
  flags.DEFINE_string('fail_instance', '', 'Instance that fails (fail-stop).')
  flags.DEFINE_float('fail_at_s', 1.0, 'When it fails, seconds after start.')
  flags.DEFINE_float('net_ms_per_mb', 0.0, 'Network-style delay per MB of payload.')
  flags.DEFINE_float('contention_start_s', 0.0, 'Background CPU contention start.')
  flags.DEFINE_float('contention_s', 0.0, 'Background CPU contention duration (0 = none).')
  flags.DEFINE_integer('contention_procs', 1, 'CPU-burning processes.')
  flags.DEFINE_float('timeout_s', 30.0, 'Wait this long for the last answers.')
  flags.DEFINE_integer('seed', 0, 'Seed of arrivals and faults.')
  flags.DEFINE_string('out', 'workdirs/serving', 'Output directory.')
  flags.DEFINE_bool('cpu_async_dispatch', False, 'JAX asynchronous dispatch on CPU.')
  app.run(main)
