"""Fault injection, per instance and reproducible from a seed.

(a) slowdowns: with probability `slow_prob` a batch takes an extra delay drawn
    from `slow_dist` ('fixed', 'exp' or 'pareto', scale `slow_ms`);
(b) contention: a CPU-burning process competing with the serving process for
    [`contention_start_s`, + `contention_s`) (on a small machine it slows
    every instance);
(c) fail-stop: the instance dies at `fail_at_s` after start; its in-flight
    batch is lost;
(d) network delay: `net_ms_per_mb` per MB of payload, each way it travels;
(e) wrong outputs (a Byzantine instance): with probability `wrong_prob` an output is
    replaced as `pmjax.codes.byzantine.corrupt` does (`wrong_kind`: 'noise', 'random',
    'scaled').
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time

import numpy as np


@dataclasses.dataclass
class FaultSpec:
  slow_prob: float = 0.0
  slow_dist: str = 'fixed'
  slow_ms: float = 0.0
  pareto_shape: float = 1.5
  fail_at_s: float | None = None
  net_ms_per_mb: float = 0.0
  wrong_prob: float = 0.0
  wrong_kind: str = 'random'
  seed: int = 0

  def __post_init__(self):
    if self.slow_dist not in ('fixed', 'exp', 'pareto'):
      raise ValueError(f"slow_dist={self.slow_dist!r} is unknown; accepted: 'fixed', 'exp', "
                       f"'pareto'")
    if not 0.0 <= self.slow_prob <= 1.0:
      raise ValueError(f'slow_prob={self.slow_prob} must be in [0, 1]')
    if not 0.0 <= self.wrong_prob <= 1.0:
      raise ValueError(f'wrong_prob={self.wrong_prob} must be in [0, 1]')
    from pmjax.codes.byzantine import ADVERSARIES  # pylint: disable=g-import-not-at-top
    if self.wrong_kind not in ADVERSARIES:
      raise ValueError(f'wrong_kind={self.wrong_kind!r} is unknown; accepted: '
                       f'{list(ADVERSARIES)}')


class FaultInjector:
  """Draws the extra delay of each batch of one instance (seconded, reproducible)."""

  def __init__(self, spec: FaultSpec):
    self.spec = spec
    self.rng = np.random.default_rng(spec.seed)
    self.corrupted = 0           # outputs replaced by wrong ones

  def extra_delay_s(self, payload_bytes: int = 0) -> float:
    s = self.spec
    delay = s.net_ms_per_mb * payload_bytes / 1e6 / 1e3
    if s.slow_prob and self.rng.random() < s.slow_prob:
      if s.slow_dist == 'fixed':
        delay += s.slow_ms / 1e3
      elif s.slow_dist == 'exp':
        delay += self.rng.exponential(s.slow_ms) / 1e3
      else:  # Pareto with minimum slow_ms
        delay += s.slow_ms * (1.0 + self.rng.pareto(s.pareto_shape)) / 1e3
    return delay

  def maybe_corrupt(self, out):
    """`out`, or with probability wrong_prob a wrong output in its place (same shape;
    'random' logits get the spread of `out`)."""
    if not self.spec.wrong_prob or self.rng.random() >= self.spec.wrong_prob:
      return out
    from pmjax.codes.byzantine import corrupt  # pylint: disable=g-import-not-at-top
    out = np.asarray(out)
    self.corrupted += 1
    return corrupt(out, self.spec.wrong_kind, self.rng,
                   logit_std=float(np.std(out)) or 1.0).astype(out.dtype)

  def failed(self, elapsed_s: float) -> bool:
    return self.spec.fail_at_s is not None and elapsed_s >= self.spec.fail_at_s


def _burn(start_s, duration_s):
  time.sleep(start_s)
  end = time.time() + duration_s
  x = 0
  while time.time() < end:
    x += 1


def start_contention(start_s: float, duration_s: float, processes: int = 1):
  """Starts CPU-burning processes after `start_s` for `duration_s`; returns them."""
  procs = [multiprocessing.get_context('spawn').Process(target=_burn, args=(start_s, duration_s),
                                                        daemon=True)
           for _ in range(processes)]
  for p in procs:
    p.start()
  return procs
