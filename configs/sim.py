"""The serving simulator: the serving policies at the paper's scale, by simulation.

    python -m pmjax.serving.sim --config=configs/sim.py --config.model=resnet18 \
        --config.calm_s=20 --config.out=DIR

k=2, 12 base + 6 parity instances (coded) vs 18 (equal, hedge) or 12 (none),
100,000 Poisson queries per rate, service times of `model` measured here (or
from a serving bench run: `service_from=DIR/summary.json`), under the on/off
interference model. `smoke`: a few hundred queries of an mlp, for tests.
"""

import ml_collections

from pmjax.config_utils import parse_arg
from pmjax.serving import policy


def get_config(arg=None):
  a = parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.model = 'resnet18'          # model whose batch-1 service times are measured here
  c.service_from = ''           # or: a serving bench's summary.json (samples beside it)
  c.k, c.r = 2, 1               # group size and parity queries per group
  c.m = 12                      # base instances of the coded mode (m*r divisible by k)
  c.queries = 100000            # queries per run
  c.rates = '150,210,270,330,390'   # query rates (queries/s)
  c.modes = 'coded,equal,hedge,none'
  c.interference = True         # on/off background interference per instance
  c.calm_s = 5.0                # mean calm period (s)
  c.busy_s = 0.5                # mean interfered period (s)
  c.busy_factor = 5.0           # service-time factor while interfered
  c.slow_prob = 0.0             # per-batch slowdown probability
  c.slow_ms = 0.0               # per-batch slowdown (ms)
  c.encode_us = 0.0             # encode time per group, added to the parity path
  c.decode_us = 0.0             # decode time, added to reconstructed answers
  c.seed = 0
  c.out = 'workdirs/sim'        # sim.json and sim_p999.png
  c.policy = policy.default_config()
  if a.smoke:
    c.model, c.m, c.queries, c.rates = 'mlp', 2, 300, '100'
  return c
