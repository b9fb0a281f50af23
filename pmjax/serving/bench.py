"""Tail latency of the serving loop under stragglers and failures, mode by mode.

    python -m pmjax.serving.bench --config=configs/serving.py --config.workdir=W_PARITY \
        --config.rate=200 --config.faults.slow_instances=base0 --config.faults.slow_prob=0.1 \
        --config.faults.slow_ms=40 --config.out=DIR

Settings: `configs/serving.py`. `W_PARITY` is a parity workdir (F comes from
its base_workdir). Each mode (`coded`: m base + m/k parity instances; `equal`
and `hedge`: m + m/k base instances; `none`: m base; each mode's policy object
from `policy.make_policy`) serves the same open-loop Poisson load over the
test set, with the same faults injected into instances of the same names. Writes
DIR/summary.json (per mode: count, lost, median/mean/p99/p99.5/p99.9 ms,
fraction reconstructed, accuracy of answers and of reconstructed answers,
encode/decode us per group, inference ms per batch) and DIR/latency_cdf.png.
`--config.rates=R1,R2,..` sweeps the offered load instead: DIR/curves.json and
DIR/curves.png (`pmjax.serving.curves`, as `cluster_bench --rates` writes them).
JAX's asynchronous CPU dispatch is off (`cpu_async_dispatch=False`): for
batch-1 serving it only adds a thread hand-off (~20 us) to every call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import time
import zlib
from functools import partial
from typing import Any, Callable

from absl import app, flags
import jax
import numpy as np

from pmjax import cli, config_utils, inference, plotting, runs, tasks
from pmjax.data import builders, pipeline
from pmjax.serving import curves, loadgen, policy
from pmjax.serving.faults import FaultSpec, start_contention
from pmjax.serving.frontend import Frontend
from pmjax.serving.instance import CompiledPredict


@dataclasses.dataclass
class Parts:
  """What a serving run needs from a parity workdir, loaded once."""
  config: Any
  base_fn: Callable          # F's predict (raw queries -> outputs)
  base_vars: dict
  parity_fn: Callable        # what answers a coded query
  parity_vars: list          # its variables for each coded-query slot j < code.r
  code: Any
  encode: Callable           # jitted, raw queries -> coded queries
  decode: Callable           # jitted
  splits: Any                # the data splits (None with `with_data=False`)
  query_shape: tuple = ()    # one raw query (a uint8 image; float32 features for speech)
  query_dtype: Any = np.uint8


def make_parts(parity_workdir: str, with_data: bool = True) -> Parts:
  """F, the parity networks and the code of a parity workdir (`runs.load_run`), and its
  data splits unless `with_data=False` (a model replica needs no data)."""
  config = runs.read_config(parity_workdir)
  if config.stage != 'parity':
    raise config_utils.ConfigError(
        f'{parity_workdir} is a {config.stage!r} workdir; pass the workdir of a parity run '
        f'(its config.base_workdir names F)')
  run = runs.load_run(parity_workdir)
  parity_fn, parity_vars = run.parity_predicts()
  return Parts(config, inference.make_predict(run.base_model, run.dataset), run.base_vars,
               parity_fn, parity_vars, run.code,
               jax.jit(partial(inference.encode_raw, run.code, run.dataset)),
               jax.jit(run.code.decode),
               pipeline.load_splits(config.data) if with_data else None,
               tuple(builders.get_spec(config.data.name).image_shape),
               np.dtype(builders.get_spec(config.data.name).dtype))


def build_frontend(mode, m, parts, faults=None, batch_size=1, max_queue=4096, deadline_s=None,
                   check=None, **policy_params):
  """A Frontend of `mode` (m base instances of the coded mode, equal resources for the
  others) over a parity workdir's `Parts`; `policy_params` as `policy.make_policy`'s."""
  code = parts.code
  n_base, n_parity = policy.instance_counts(mode, m, code.k, code.r)
  devices = jax.devices()
  base = [CompiledPredict(parts.base_fn, parts.base_vars, devices[i % len(devices)])
          for i in range(n_base)]
  parity = [CompiledPredict(parts.parity_fn, parts.parity_vars[i % code.r],
                            devices[(n_base + i) % len(devices)]) for i in range(n_parity)]
  pol = policy.make_policy(mode, code.k, code.r, n_base, **policy_params)
  return Frontend(pol, base, parity, k=code.k, r=code.r, encode=parts.encode,
                  decode=parts.decode, query_shape=parts.query_shape,
                  query_dtype=parts.query_dtype, batch_size=batch_size,
                  max_queue=max_queue, faults=faults, deadline_s=deadline_s,
                  flush_timeout_s=policy_params.get('flush_timeout_s', 0.05),
                  check=check if getattr(pol, 'verify', False) else None)


def fault_specs(faults, m, k, seed) -> dict:
  """FaultSpec per instance name from a serving config's `faults` fields."""
  names = [n for n in (faults.slow_instances or '').split(',') if n]
  wrong = [n for n in (faults.get('wrong_instances') or '').split(',') if n]
  specs = {}
  for i in range(m + m // k + 1):
    for name in (f'base{i}', f'parity{i}'):
      specs[name] = FaultSpec(
          slow_prob=faults.slow_prob if name in names else 0.0, slow_dist=faults.slow_dist,
          slow_ms=faults.slow_ms,
          fail_at_s=faults.fail_at_s if name == faults.fail_instance else None,
          net_ms_per_mb=faults.net_ms_per_mb,
          wrong_prob=faults.get('wrong_prob', 0.0) if name in wrong else 0.0,
          wrong_kind=faults.get('wrong_kind', 'random'),
          seed=seed * 1000 + zlib.crc32(name.encode()) % 997)
  return specs


def run_mode(mode, parts, c) -> dict:
  """Serves config `c`'s load in `mode`; returns the loadgen summary with the stats."""
  splits = parts.splits
  params = policy.policy_params(c.policy)
  check = None
  if params['verify'] and mode == 'coded':
    from pmjax.bench import byzantine  # pylint: disable=g-import-not-at-top
    check = byzantine.make_check(c.workdir, c.get('false_alarm', 0.01))
  fe = build_frontend(mode, c.m, parts, fault_specs(c.faults, c.m, parts.code.k, c.seed),
                      c.batch_size, c.max_queue,
                      deadline_s=c.deadline_ms / 1e3 if c.deadline_ms > 0 else None,
                      check=check, **params)
  fe.start()
  fc = c.faults
  procs = (start_contention(fc.contention_start_s, fc.contention_s, fc.contention_procs)
           if fc.contention_s > 0 else [])
  with collector_pauses() as pauses_ms:
    records = loadgen.run_poisson(fe, splits.test_x, splits.test_y, c.rate,
                                  c.queries + c.warmup, warmup=c.warmup, seed=c.seed,
                                  timeout_s=c.timeout_s, score=tasks.task_score(parts.config))
  fe.close()
  for p in procs:
    p.join()
  summary = loadgen.summarize(records)
  summary.update(curves.window_rates(records), offered_qps=c.rate)
  stats = fe.stats()
  service = {kind: [s for i in fe.instances if i.name.startswith(kind) for s in i.service_s]
             for kind in ('base', 'parity')}
  summary.update(
      mode=mode, instances=stats['instances'], hedges_sent=stats['hedges_sent'],
      verified_groups=stats['verified_groups'], flagged_groups=stats['flagged_groups'],
      blamed=stats['blamed'],
      encode_us_per_group=stats['encode_us_per_group'],
      decode_us_per_group=stats['decode_us_per_group'],
      base_inference_ms_per_batch=1e3 * float(np.median(service['base'])),
      parity_inference_ms_per_batch=(1e3 * float(np.median(service['parity']))
                                     if service['parity'] else None),
      # Python's cycle collector stops every serving thread while it runs.
      gc_pauses_over_2ms=sum(p > 2.0 for p in pauses_ms),
      gc_pause_max_ms=max(pauses_ms, default=0.0))
  summary['base_service_ms_samples'] = [1e3 * x for x in service['base'][:2000]]
  summary['latencies_ms'] = sorted(r['latency_ms'] for r in records
                                   if r['latency_ms'] is not None)
  return summary


@contextlib.contextmanager
def collector_pauses():
  """The durations (ms) of Python's garbage-collector passes while inside (the list
  fills as they happen)."""
  pauses, start = [], [0.0]

  def callback(phase, info):
    del info
    if phase == 'start':
      start[0] = time.perf_counter()
    else:
      pauses.append((time.perf_counter() - start[0]) * 1e3)
  gc.callbacks.append(callback)
  try:
    yield pauses
  finally:
    gc.callbacks.remove(callback)


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


def sweep(modes, parts, c) -> dict:
  """`c.rates`: each mode served at each offered load (max(c.queries, rate x
  c.seconds_per_rate) queries, a fresh frontend per load); curves.json and curves.png."""
  rates = sorted(float(r) for r in str(c.rates).split(','))
  out = {}
  for mode in modes:
    out[mode] = []
    for rate in rates:
      ci = c.copy_and_resolve_references()
      ci.rate, ci.queries = rate, max(c.queries, int(rate * c.seconds_per_rate))
      s = run_mode(mode, parts, ci)
      out[mode].append({k: v for k, v in s.items() if k not in RAW_SAMPLES + ('instances',)})
  fc, config = c.faults, parts.config
  return curves.write(out, c.out, f'in-process: {config.model} {config.code.name} '
                      f'k={config.code.k}, batch {c.batch_size}, slow='
                      f'{fc.slow_instances or "-"} p={fc.slow_prob} {fc.slow_ms:g} ms')


def parse_modes(text: str) -> tuple:
  """'all' or a comma list of serving modes -> the modes (UsageError naming unknown ones)."""
  modes = tuple(policy.POLICIES) if text == 'all' else tuple(text.split(','))
  unknown = [m for m in modes if m not in policy.POLICIES]
  if unknown:
    raise app.UsageError(f'unknown mode(s) {unknown}; accepted: \'all\' or a comma list of '
                         f'{list(policy.POLICIES)}')
  return modes


def main(argv):
  del argv
  c = flags.FLAGS.config
  # Serving runs tiny computations: synchronous CPU dispatch saves ~20 us a call.
  jax.config.update('jax_cpu_enable_async_dispatch', c.cpu_async_dispatch)
  if not c.workdir:
    raise app.UsageError('--config.workdir is required (a parity workdir)')
  modes = parse_modes(c.modes)
  with cli.user_errors():
    parts = make_parts(c.workdir)
  os.makedirs(c.out, exist_ok=True)
  if c.rates:
    sweep(modes, parts, c)
    return
  results = {mode: run_mode(mode, parts, c) for mode in modes}
  with open(os.path.join(c.out, 'summary.json'), 'w') as fh:
    json.dump({'config': c.to_dict(), 'device': str(jax.devices()[0]),
               'results': {m: {k: v for k, v in s.items() if k not in RAW_SAMPLES}
                           for m, s in results.items()}}, fh, indent=2)
  # Raw samples (the simulator's service_from reads them) stay out of the summary.
  with open(os.path.join(c.out, 'samples.json'), 'w') as fh:
    json.dump({m: {k: s[k] for k in RAW_SAMPLES} for m, s in results.items()}, fh)
  config, fc = parts.config, c.faults
  plot_cdf(results, os.path.join(c.out, 'latency_cdf.png'),
           f'{config.model} {config.code.name} k={config.code.k}, {c.rate:g} q/s, '
           f'slow={fc.slow_instances or "-"} p={fc.slow_prob} {fc.slow_ms:g} ms'
           + (f', {fc.fail_instance} fails at {fc.fail_at_s:g} s' if fc.fail_instance else ''))
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
  for mode, s in results.items():
    print(f"{mode}: {s['gc_pauses_over_2ms']} garbage-collector pauses > 2 ms while "
          f"serving (longest {s['gc_pause_max_ms']:.1f} ms)")
  for mode, s in results.items():
    if s['verified_groups']:
      print(f"{mode}: {s['flagged_groups']} of {s['verified_groups']} groups flagged; "
            f"blamed: {s['blamed'] or 'none'}")
  print(f'wrote {c.out}/summary.json and {c.out}/latency_cdf.png')


if __name__ == '__main__':
  config_utils.define_config_flag('configs/serving.py', 'Serving bench config file.')
  app.run(main)
