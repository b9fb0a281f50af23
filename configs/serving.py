"""The serving bench: tail latency of every mode over a parity workdir's models.

    python -m pmjax.serving.bench --config=configs/serving.py --config.workdir=W_PARITY \
        --config.rate=200 --config.faults.slow_instances=base0 --config.faults.slow_prob=0.1 \
        --config.faults.slow_ms=40 --config.out=DIR

`workdir` is a parity workdir (F comes from its base_workdir). Each mode of
`modes` ('all' or a comma list of coded, equal, hedge, none) serves the same
open-loop Poisson load over the test set with the same faults. `smoke` (as
`--config=configs/serving.py:smoke`): a few hundred queries, for tests.
`--config.rates=100,200,400` sweeps the offered load (a fresh frontend per rate) and
writes curves.json and curves.png (p50 / p99 / p99.9 vs offered q/s, saturation marked,
coded's and hedge's tails over equal's at each load).
`--config.policy.verify=True` (a `collage` workdir) checks every coding group for a
wrong output and counts the flagged groups; `faults.wrong_instances` makes instances
answer wrongly with probability `faults.wrong_prob`.
"""

import ml_collections

from pmjax.config_utils import parse_arg
from pmjax.serving import policy


def get_config(arg=None):
  a = parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.workdir = ''                # a parity workdir (required)
  c.modes = 'all'               # 'all' or a comma list of coded, equal, hedge, none
  c.m = 2                       # base instances of the coded mode (m*r/k parity instances)
  c.batch_size = 1              # queries per batch
  c.max_queue = 4096            # batches queued per pool before OverloadError
  c.rate = 100.0                # Poisson arrival rate, queries/s
  c.rates = ''                  # a sweep: comma list of rates, each mode served at each
                                # (curves.json, curves.png: p50 / p99 / p99.9 vs load)
  c.seconds_per_rate = 10.0     # a sweep's queries per rate: max(queries, rate x this)
  c.queries = 2000              # queries per mode, after the warm-up
  c.warmup = 200                # queries discarded at the start
  c.deadline_ms = 0.0           # fail a query not answered within this (0 = none)
  c.timeout_s = 30.0            # wait this long for the last answers
  c.seed = 0                    # arrivals and faults
  c.out = 'workdirs/serving'    # summary.json, samples.json, latency_cdf.png
  c.cpu_async_dispatch = False  # JAX asynchronous dispatch on CPU (adds ~20 us a call)
  c.policy = policy.default_config()
  c.false_alarm = 0.01          # policy.verify: the check's threshold gives this rate on
                                # clean validation groups (collage codes)
  c.faults = ml_collections.ConfigDict(dict(
      slow_instances='',        # comma list of instances given slowdowns (base0, parity0, ...)
      slow_prob=0.0,            # probability a batch of a slow instance is delayed
      slow_dist='fixed',        # delay distribution: fixed, exp or pareto
      slow_ms=0.0,              # delay scale (ms)
      fail_instance='',         # instance that fails (fail-stop)
      fail_at_s=1.0,            # when it fails, seconds after start
      net_ms_per_mb=0.0,        # network-style delay per MB of payload
      wrong_instances='',       # comma list of instances whose outputs are sometimes wrong
      wrong_prob=0.0,           # probability an output of such an instance is wrong
      wrong_kind='random',      # noise, random or scaled (pmjax.codes.byzantine.corrupt)
      contention_start_s=0.0,   # background CPU contention start
      contention_s=0.0,         # its duration (0 = none)
      contention_procs=1,       # CPU-burning processes
  ))
  if a.smoke:
    c.queries, c.warmup, c.rate = 60, 10, 200.0
  return c
