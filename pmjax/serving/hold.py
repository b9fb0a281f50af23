"""The adaptive parity hold: how long a coded group's parity waits before it is sent,
learnt from the data outputs' measured latencies (`policy.Coded(auto_hold=True)`)."""

import collections

import numpy as np


class AutoHold:
  """The parity hold learnt from the data outputs' latencies (send to output, queueing
  included): `factor` x their `quantile` over the last `window` outputs, within
  [floor_s, cap_s]; `initial_s` until `min_samples` are in. A quantile below 1 - the
  straggling fraction ignores the stragglers themselves: with the default 0.8, up to
  a fifth of the outputs may be slow without raising the hold; the factor keeps the
  parity work of a fault-free load to the outputs later than twice that quantile."""

  def __init__(self, quantile: float = 0.8, factor: float = 2.0, window: int = 512,
               min_samples: int = 32, initial_s: float = 0.0, floor_s: float = 1e-3,
               cap_s: float = 2.0, every: int = 16):
    if not 0 < quantile < 1 or factor <= 0:
      raise ValueError(f'hold_quantile={quantile} must be in (0, 1) and hold_factor='
                       f'{factor} > 0')
    self.quantile, self.factor = quantile, factor
    self.min_samples, self.floor_s, self.cap_s, self.every = min_samples, floor_s, cap_s, every
    self._recent = collections.deque(maxlen=window)
    self._delay_s = initial_s
    self.count = 0

  @property
  def ready(self) -> bool:
    return self.count >= self.min_samples

  def add(self, seconds: float):
    self._recent.append(seconds)
    self.count += 1
    if self.ready and (self.count - self.min_samples) % self.every == 0:
      q = float(np.quantile(np.fromiter(self._recent, float), self.quantile))
      self._delay_s = min(self.cap_s, max(self.floor_s, self.factor * q))

  def delay_s(self) -> float:
    return self._delay_s
