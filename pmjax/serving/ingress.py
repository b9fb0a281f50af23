"""The HTTP ingress of the Ray Serve application: `CodedFrontend` parses and checks
requests, runs the in-process `Frontend` over the replicas' handles and answers JSON.

`POST /predict` takes a JSON `{"x": nested list}` or one `.npy` array (no pickles), one
query or a batch of up to 64 (parsed by `bodies.QueryParser`); `X-Deadline-Ms` sets a
sooner deadline. Errors map to statuses: a bad body 400, overload or no instance 503, a
passed deadline 504, a failed instance 502. `GET /healthz`, `GET /stats`; the Python
handle API (`predict`) answers the same dict.
"""

import asyncio
import gc
import threading
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from pmjax.serving import bodies
from pmjax.serving import policy as policy_lib
from pmjax.serving.errors import (DeadlineExceededError, InstanceError, NoInstanceError,
                                  OverloadError, ShutdownError)
from pmjax.serving.ray_instance import RayInstance, RemotePredict


def _policy_config(overrides: dict):
  c = policy_lib.default_config()
  c.update(overrides or {})
  return c


def _error_response(status, message):
  return JSONResponse({'error': message}, status_code=status)


http_app = FastAPI(title='pmjax coded serving')


@serve.ingress(http_app)
class CodedFrontend:
  """The ingress: parses and checks requests (`bodies.QueryParser`), runs the in-process
  `Frontend` over the replicas' handles, answers JSON. The frontend's batcher
  (`batch_size`, and the policy's flush) forms the batches of data and parity replicas
  alike, whatever the requests carried; each batch carries its queries' latest deadline
  (wall clock) to the replica, which does not compute a batch whose deadline has passed."""

  def __init__(self, settings: dict, base_handle, *parity_handles):
    from pmjax import tasks  # pylint: disable=g-import-not-at-top
    from pmjax.serving import bench  # pylint: disable=g-import-not-at-top
    # app.py imports this module (build_app binds CodedFrontend): its settings come late.
    from pmjax.serving.app import ServeSettings  # pylint: disable=g-import-not-at-top
    from pmjax.serving.frontend import Frontend  # pylint: disable=g-import-not-at-top
    s = ServeSettings(**settings)
    self.settings = s
    parts = bench.make_parts(s.workdir, with_data=False)
    self.score = tasks.task_score(parts.config)   # 'label' (a class) or 'box' answers
    code = parts.code
    self.query_shape, self.query_dtype = parts.query_shape, np.dtype(parts.query_dtype)
    n_base, n_parity = policy_lib.instance_counts(s.mode, s.m, code.k, code.r)
    params = policy_lib.policy_params(_policy_config(s.policy))
    pol = policy_lib.make_policy(s.mode, code.k, code.r, n_base, **params)
    base = [RemotePredict(base_handle) for _ in range(n_base)]
    per_slot = n_parity // code.r if code.r else 0
    parity = [RemotePredict(parity_handles[i % code.r]) for i in range(per_slot * code.r)]
    self.frontend = Frontend(
        pol, base, parity, k=code.k, r=code.r, encode=parts.encode, decode=parts.decode,
        query_shape=self.query_shape, query_dtype=self.query_dtype,
        batch_size=s.batch_size, max_queue=s.max_queue, deadline_s=s.deadline_ms / 1e3,
        flush_timeout_s=params['flush_timeout_s'], instance_cls=RayInstance)
    self.parser = bodies.QueryParser(self.query_shape, self.query_dtype,
                                     self.frontend.validate, s.max_body_bytes)
    self.error = None
    self.ready = threading.Event()
    # Warming up calls the replicas through their handles: not from Serve's event loop.
    threading.Thread(target=self._start, daemon=True, name='warmup').start()

  def _start(self):
    try:
      self.frontend.start()
      gc.freeze()   # start-up's objects (JAX, the models) out of the collector's sweeps
    except Exception as e:  # pylint: disable=broad-except
      self.error = f'{type(e).__name__}: {e}'
    self.ready.set()

  # ---------------------------------------------------------------- queries

  def parse(self, body: bytes, content_type: str) -> tuple:
    """(queries (n, *query_shape), batched) of a request body (ValueError naming the
    problem)."""
    return self.parser.parse(body, content_type)

  def deadline_s(self, header: str | None) -> float:
    """The query's deadline: the server's, or the `X-Deadline-Ms` header's if sooner."""
    server = self.settings.deadline_ms / 1e3
    if not header:
      return server
    try:
      ms = float(header)
    except ValueError:
      ms = float('nan')
    if not ms > 0:
      raise ValueError(f'X-Deadline-Ms: {header!r} must be a number of milliseconds > 0')
    return min(server, ms / 1e3)

  async def _answer(self, xs, batched=False, deadline_s=None) -> dict:
    t0 = time.perf_counter()
    if not self.ready.is_set():
      await asyncio.get_running_loop().run_in_executor(None, self.ready.wait, 600)
    if self.error:
      raise NoInstanceError(f'the frontend failed to start: {self.error}')
    futures = [self.frontend.submit(x, deadline_s) for x in xs]
    answers = []
    for f in futures:
      response = await asyncio.wrap_future(f)
      logits = np.asarray(response.output, np.float32).ravel()
      answers.append({**self.score.describe(logits), 'logits': logits.tolist(),
                      'reconstructed': bool(response.reconstructed),
                      'instance': response.instance})
    latency_ms = (time.perf_counter() - t0) * 1e3
    if batched:
      return {'answers': answers, 'latency_ms': latency_ms}
    return {**answers[0], 'latency_ms': latency_ms}

  async def predict(self, x, deadline_ms: float | None = None) -> dict:
    """The Python handle API: one raw query (array-like), or a batch of them with a
    leading axis -> the HTTP answer's dict."""
    xs, batched = self.parser.check(x)
    return await self._answer(xs, batched, self.deadline_s(deadline_ms and str(deadline_ms)))

  @http_app.post('/predict')
  async def predict_http(self, request: Request):
    try:
      xs, batched = self.parse(await request.body(), request.headers.get('content-type', ''))
      return await self._answer(xs, batched, self.deadline_s(request.headers.get('x-deadline-ms')))
    except ValueError as e:
      return _error_response(400, str(e))
    except (OverloadError, NoInstanceError, ShutdownError) as e:
      return _error_response(503, f'{type(e).__name__}: {e}')
    except DeadlineExceededError as e:
      return _error_response(504, str(e))
    except InstanceError as e:
      return _error_response(502, str(e))
    except Exception as e:  # pylint: disable=broad-except
      return _error_response(500, f'{type(e).__name__}: {e}')

  @http_app.get('/healthz')
  async def healthz(self):
    if self.error:
      return _error_response(503, f'frontend failed to start: {self.error}')
    if not self.ready.is_set():
      return _error_response(503, 'warming up')
    alive = [i.name for i in self.frontend.instances if i.alive]
    return {'ok': True, 'mode': self.settings.mode, 'instances': alive}

  @http_app.get('/stats')
  async def stats_http(self):
    return self.stats()

  def stats(self) -> dict:
    s = self.frontend.stats()
    for inst in self.frontend.instances:
      s['instances'][inst.name]['cancelled_queued'] = inst.cancelled_queued
    return s

  def check_health(self):
    if self.error:
      raise RuntimeError(f'frontend failed to start: {self.error}')
