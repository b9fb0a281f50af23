"""Open-loop Poisson load over real test data, and the latency summary.

Arrivals follow a Poisson process at `rate_qps` regardless of how fast the
server answers (open loop); each query records its latency, whether it was
reconstructed, and whether its answer is correct (the task's score: the top-1
class, or a box at IoU >= 0.5 with the true one). The first `warmup` queries are
discarded from the summary.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from pmjax.serving.errors import OverloadError


def run_poisson(frontend, xs_NxD, labels_N, rate_qps: float, num_queries: int,
                warmup: int = 0, seed: int = 0, timeout_s: float = 30.0, score=None) -> list:
  """Submits `num_queries` queries (cycling through xs) at Poisson times; returns
  one record per query after the warm-up: latency_ms (None if lost), reconstructed,
  correct (by `score.correct_one`; default: the top-1 class), error, sent_s (its
  submit time from the start) and lag_ms (how late it was submitted)."""
  if score is None:
    from pmjax import metrics  # pylint: disable=g-import-not-at-top
    score = metrics.CLASSIFICATION
  if rate_qps <= 0 or num_queries < 1:
    raise ValueError(f'rate_qps={rate_qps} must be > 0 and num_queries={num_queries} >= 1')
  rng = np.random.default_rng(seed)
  gaps = rng.exponential(1.0 / rate_qps, num_queries)
  records = [None] * num_queries
  done = threading.Semaphore(0)

  def finish(i, t_submit, label, sent):
    def callback(future):
      latency = (time.perf_counter() - t_submit) * 1e3
      try:
        resp = future.result()
        records[i] = {'latency_ms': latency, 'reconstructed': resp.reconstructed,
                      'correct': score.correct_one(resp.output, label), 'error': None,
                      **sent}
      except Exception as e:  # pylint: disable=broad-except
        records[i] = {'latency_ms': None, 'reconstructed': False, 'correct': False,
                      'error': type(e).__name__, **sent}
      done.release()
    return callback

  start = time.perf_counter()
  next_t = start
  for i in range(num_queries):
    next_t += gaps[i]
    sleep = next_t - time.perf_counter()
    if sleep > 0:
      time.sleep(sleep)
    j = i % len(xs_NxD)
    t = time.perf_counter()
    sent = {'sent_s': t - start, 'lag_ms': (t - next_t) * 1e3}   # lag: the generator's own
    try:
      fut = frontend.submit(xs_NxD[j])
    except OverloadError:
      records[i] = {'latency_ms': None, 'reconstructed': False, 'correct': False,
                    'error': 'OverloadError', **sent}
      done.release()
      continue
    fut.add_done_callback(finish(i, t, labels_N[j], sent))
  deadline = time.perf_counter() + timeout_s
  answered = 0
  while answered < num_queries and done.acquire(timeout=max(0.0, deadline - time.perf_counter())):
    answered += 1
  out = []
  for rec in records[warmup:]:
    out.append(rec if rec is not None else
               {'latency_ms': None, 'reconstructed': False, 'correct': False, 'error': 'lost'})
  return out


def latency_summary(latencies_ms) -> dict:
  """Median, mean and tail percentiles (ms) of the answered queries' latencies (the
  real loop's and the simulator's summaries both use it)."""
  lat = np.asarray(latencies_ms, float)
  pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: None)
  return {'median_ms': pct(50), 'mean_ms': float(lat.mean()) if lat.size else None,
          'p99_ms': pct(99), 'p99.5_ms': pct(99.5), 'p99.9_ms': pct(99.9)}


def summarize(records: list) -> dict:
  """count, lost, errors, latency percentiles (ms), fraction reconstructed, accuracy."""
  lat = np.array([r['latency_ms'] for r in records if r['latency_ms'] is not None])
  recon = [r for r in records if r['reconstructed']]
  errors = {}
  for r in records:
    if r['error']:
      errors[r['error']] = errors.get(r['error'], 0) + 1
  return {
      'count': len(records), 'answered': int(lat.size),
      'lost': errors.get('lost', 0) + errors.get('ShutdownError', 0), 'errors': errors,
      **latency_summary(lat),
      'frac_reconstructed': len(recon) / max(1, lat.size),
      'accuracy': sum(r['correct'] for r in records) / max(1, lat.size),
      'accuracy_reconstructed': (sum(r['correct'] for r in recon) / len(recon)) if recon else None,
      'num_reconstructed': len(recon),
  }
