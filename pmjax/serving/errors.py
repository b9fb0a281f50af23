"""What a serving query resolves to: a `Response`, or one of these errors."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class OverloadError(RuntimeError):
  """The server's queue is full: the query was rejected, not queued."""


class ShutdownError(RuntimeError):
  """The server shut down before the query was answered."""


class InstanceError(RuntimeError):
  """Every instance that could answer the query failed on it."""


class NoInstanceError(RuntimeError):
  """No live instance can serve queries: the query was refused, not queued."""


class DeadlineExceededError(TimeoutError):
  """The query was not answered within its deadline."""


class Response(NamedTuple):
  output: np.ndarray       # the query's output (logits)
  reconstructed: bool      # True when decoded from the other outputs and the parity
  instance: str            # who answered ('decoder' for reconstructions)
