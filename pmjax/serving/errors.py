"""What a serving query resolves to: a `Response`, or one of these errors (`settle`,
`settle_all` answer its future)."""

from __future__ import annotations

from concurrent.futures import InvalidStateError
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


def settle(future, result=None, error=None):
  if future.done():
    return
  try:
    if error is not None:
      future.set_exception(error)
    else:
      future.set_result(result)
  except InvalidStateError:
    pass  # already answered or cancelled


def settle_all(answers):
  """Answers futures: (futures, outputs or an exception, reconstructed, who) each."""
  for futures, values, reconstructed, who in answers:
    for q, f in enumerate(futures):
      if isinstance(values, BaseException):
        settle(f, error=values)
      else:
        settle(f, Response(values[q], reconstructed, who))
