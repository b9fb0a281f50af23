"""Serving frontend semantics with fake instances, bad input, overload, shutdown, failures."""

import threading
import time

import numpy as np
import pytest

from pmjax.codes import make_code
from pmjax.serving import policy
from pmjax.serving.faults import FaultSpec
from pmjax.serving.frontend import Frontend, OverloadError, ShutdownError

C = 4
SHAPE = (2, 3)


def fake_f(slow_s=0.3):
  """A linear F (first C features); sleeps on queries whose first value is 1 (a marker)."""
  def predict(x):
    if np.any(x.reshape(len(x), -1)[:, 0] == 1):
      time.sleep(slow_s)
    return x.reshape(len(x), -1)[:, :C].astype(np.float32)
  return predict


def fake_fp(delay_s=0.0):
  def predict(p):
    time.sleep(delay_s)
    return p.reshape(len(p), -1)[:, :C].astype(np.float32)
  return predict


def sum_codec(k):
  code = make_code('sum', k)
  return (lambda x: np.asarray(code.encode(x.astype(np.float32)))), code.decode


def query(value, marker=0):
  x = np.full(SHAPE, value, np.uint8)
  x.flat[0] = marker if marker else x.flat[0]
  return x


def coded(base, parity, k=2, **kw):
  encode, decode = sum_codec(k)
  return Frontend('coded', base, parity, k=k, encode=encode, decode=decode,
                  query_shape=SHAPE, **kw)


def test_instance_counts():
  assert policy.instance_counts('coded', 2, 2) == (2, 1)
  assert policy.instance_counts('equal', 2, 2) == (3, 0)
  assert policy.instance_counts('hedge', 12, 2) == (18, 0)
  assert policy.instance_counts('none', 2, 2) == (2, 0)
  with pytest.raises(ValueError, match='divisible'):
    policy.instance_counts('coded', 3, 2)
  with pytest.raises(ValueError, match='accepted'):
    policy.instance_counts('replicate', 2, 2)


def test_coded_group_policy_decodes_exactly_at_k_of_k_plus_r():
  g = policy.CodedGroup(3, 1)
  assert g.arrive(0).decode == ()
  a = g.arrive(3)                      # 2 of 4 in: not yet
  assert a.decode == () and not a.resolve_own
  a = g.arrive(2)                      # 3 of 4 in: slot 1 rebuilt, its queued work cancelled
  assert a.resolve_own and a.decode == (1,) and 1 in a.cancel
  assert g.finished and g.reconstructed == [False, True, False]
  assert g.arrive(1).resolve_own is False  # the late original is not served twice
  g = policy.CodedGroup(2, 1)
  g.arrive(0)
  a = g.arrive(1)                      # all data in: the parity is cancelled
  assert a.decode == () and a.cancel == (2,)


def test_first_answer_wins_straggler_is_reconstructed_exactly():
  with coded([fake_f(slow_s=1.5), fake_f(slow_s=1.5)], [fake_fp()]) as fe:
    f0 = fe.submit(query(3))
    f1 = fe.submit(query(5, marker=1))  # its own F takes 1.5 s
    t = time.perf_counter()
    r1 = f1.result(timeout=3)
    assert time.perf_counter() - t < 1.0
    r0 = f0.result(timeout=2)
  assert not r0.reconstructed and r1.reconstructed and r1.instance == 'decoder'
  np.testing.assert_allclose(r1.output, fake_f()(query(5, marker=1)[None])[0], atol=1e-5)
  assert fe.stats()['decode_us_per_group'] is not None


def test_decode_waits_for_the_parity():
  with coded([fake_f(slow_s=1.5), fake_f(slow_s=1.5)], [fake_fp(delay_s=0.3)]) as fe:
    fe.submit(query(3))
    t = time.perf_counter()
    r1 = fe.submit(query(5, marker=1)).result(timeout=3)
    assert r1.reconstructed and 0.29 < time.perf_counter() - t < 1.2


def test_queued_original_is_cancelled_once_reconstructed():
  base = [fake_f(slow_s=0.3)]
  with coded(base, [fake_fp()]) as fe:
    f0 = fe.submit(query(3, marker=1))  # occupies the only base instance for 0.3 s
    f1 = fe.submit(query(4))            # queued behind it
    assert f1.result(timeout=2).reconstructed
    assert not f0.result(timeout=2).reconstructed
    time.sleep(0.05)
    assert fe.stats()['instances']['base0']['served'] == 1  # f1's batch never ran


def test_unneeded_parity_is_cancelled():
  with coded([fake_f(), fake_f()], [fake_fp(delay_s=0.05)]) as fe:
    futs = [fe.submit(query(i % 7 + 2)) for i in range(40)]
    assert not any(f.result(timeout=5).reconstructed for f in futs)
    time.sleep(0.1)
    assert fe.stats()['instances']['parity0']['served'] < 20  # 20 groups, most cancelled


def test_fail_stop_coded_loses_nothing():
  # base0 dies on its first batch; base1 is slow, so base0 surely takes one.
  faults = {'base0': FaultSpec(fail_at_s=0.0), 'base1': FaultSpec(slow_prob=1.0, slow_ms=100)}
  with coded([fake_f(), fake_f()], [fake_fp()], faults=faults) as fe:
    futs = [fe.submit(query(i % 9 + 2)) for i in range(20)]
    results = [f.result(timeout=5) for f in futs]
  assert sum(r.reconstructed for r in results) >= 1
  s = fe.stats()['instances']
  assert not s['base0']['alive'] and s['base0']['lost'] == 1


def test_hedge_answers_despite_slow_instance():
  faults = {'base0': FaultSpec(slow_prob=1.0, slow_ms=1500)}
  fe = Frontend('hedge', [fake_f(), fake_f(), fake_f()], query_shape=SHAPE,
                hedge_delay_s=0.03, faults=faults, k=2).start()
  lat = []
  for i in range(12):
    t = time.perf_counter()
    fe.submit(query(i + 2)).result(timeout=3)
    lat.append(time.perf_counter() - t)
  fe.close(join_timeout_s=0.1)
  assert max(lat) < 1.0 and fe.stats()['hedges_sent'] >= 1


def test_bad_queries_fail_alone():
  encode, decode = sum_codec(2)
  fe = Frontend('coded', [fake_f(), fake_f()], [fake_fp()], k=2, encode=encode,
                decode=decode, query_shape=SHAPE, query_dtype=np.float32).start()
  bad_shape = fe.submit(np.zeros((3, 3), np.float32))
  bad_dtype = fe.submit(np.zeros(SHAPE, np.float64))
  bad_nan = fe.submit(np.full(SHAPE, np.nan, np.float32))
  good = [fe.submit(np.full(SHAPE, 2.0, np.float32)) for _ in range(2)]
  with pytest.raises(ValueError, match=r'expects \(2, 3\)'):
    bad_shape.result(timeout=1)
  with pytest.raises(ValueError, match='dtype'):
    bad_dtype.result(timeout=1)
  with pytest.raises(ValueError, match='NaN'):
    bad_nan.result(timeout=1)
  assert all(not g.result(timeout=2).reconstructed for g in good)
  fe.close()
  with pytest.raises(ShutdownError):
    fe.submit(np.zeros(SHAPE, np.float32))


def test_overload_rejects_instead_of_growing():
  fe = Frontend('none', [fake_f(slow_s=0.2)], query_shape=SHAPE, max_queue=2).start()
  fe.submit(query(2, marker=1))
  time.sleep(0.02)  # the instance has taken the first batch
  fe.submit(query(2))
  fe.submit(query(2))
  with pytest.raises(OverloadError, match='overloaded'):
    fe.submit(query(2))
  fe.close()


def test_shutdown_leaves_no_future_pending():
  fe = Frontend('equal', [fake_f(slow_s=1.0)], query_shape=SHAPE).start()
  futs = [fe.submit(query(2, marker=1)) for _ in range(3)]
  t = time.perf_counter()
  fe.close(drain_timeout_s=0.1, join_timeout_s=0.1)
  assert time.perf_counter() - t < 1.0
  assert all(f.done() for f in futs)
  with pytest.raises(ShutdownError):
    futs[-1].result(timeout=0)
  # A partial batch is failed too.
  fe = Frontend('none', [fake_f()], query_shape=SHAPE, batch_size=4).start()
  f = fe.submit(query(2))
  fe.close(drain_timeout_s=0.1)
  with pytest.raises(ShutdownError, match='filled a batch'):
    f.result(timeout=0)


def test_batched_coded_groups():
  with coded([fake_f(), fake_f()], [fake_fp()], batch_size=3) as fe:
    futs = [fe.submit(query(i + 2, marker=1 if i == 4 else 0)) for i in range(6)]
    res = [f.result(timeout=2) for f in futs]
  # Query 4 sits in batch 1 (queries 3..5), whose F is slow: that batch is rebuilt.
  assert [r.reconstructed for r in res] == [False] * 3 + [True] * 3
  for i, r in enumerate(res):
    np.testing.assert_allclose(
        r.output, fake_f()(query(i + 2, marker=1 if i == 4 else 0)[None])[0], atol=1e-4)


def test_real_loop_killed_instance_loses_nothing():
  """Real compiled models (mlp, random weights), coded mode, base0 dies mid-run."""
  import jax
  from functools import partial
  from pmjax import inference, tasks
  from pmjax.models import get_model
  from pmjax.serving import loadgen
  from pmjax.serving.instance import CompiledPredict
  model = get_model('mlp', 10)
  f_vars = tasks.init_variables(model, 0, (28, 28, 1))
  p_vars = tasks.init_variables(model, 1, (28, 28, 1))
  code = make_code('concat', 2, image_shape=(28, 28, 1))
  base = [CompiledPredict(inference.make_predict(model, 'mnist'), f_vars) for _ in range(2)]
  parity = [CompiledPredict(inference.make_apply(model), p_vars)]
  fe = Frontend('coded', base, parity, k=2, encode=jax.jit(partial(
      inference.encode_raw, code, 'mnist')), decode=jax.jit(code.decode),
      query_shape=(28, 28, 1), faults={'base0': FaultSpec(fail_at_s=0.3)}).start()
  rng = np.random.default_rng(0)
  xs = rng.integers(0, 255, (64, 28, 28, 1)).astype(np.uint8)
  records = loadgen.run_poisson(fe, xs, np.zeros(64, np.int64), rate_qps=400,
                                num_queries=400, seed=0, timeout_s=10)
  fe.close()
  s = loadgen.summarize(records)
  assert s['count'] == 400 and s['answered'] == 400 and s['lost'] == 0
  assert not fe.stats()['instances']['base0']['alive']
  assert s['num_reconstructed'] >= 1


def test_simulation_uses_the_same_policies():
  from pmjax.serving import sim
  service = np.full(50, 0.01)  # 10 ms, deterministic
  calm = sim.summarize(sim.simulate('coded', 4, 2, 50, 2000, service, seed=0))
  assert calm['lost'] == 0 and abs(calm['median_ms'] - 10.0) < 0.5
  kw = dict(seed=1, interference=(2.0, 0.2, 8.0))
  coded = sim.summarize(sim.simulate('coded', 4, 2, 100, 4000, service, **kw))
  equal = sim.summarize(sim.simulate('equal', 4, 2, 100, 4000, service, **kw))
  assert coded['frac_reconstructed'] > 0 and equal['frac_reconstructed'] == 0
  # A group loses its redundancy only when its parity instance is interfered too, so
  # the clear, seed-independent difference is at p99 (2-3x lower here).
  assert coded['p99_ms'] < 0.5 * equal['p99_ms']
  hedge = sim.summarize(sim.simulate('hedge', 4, 2, 100, 4000, service, **kw))
  assert hedge['lost'] == 0
  # r = 2 with a bounded wait for the second parity: still nothing lost, tail still cut.
  for wait_s in (0.0, 0.005):
    r2 = sim.summarize(sim.simulate('coded', 4, 4, 100, 4000, service, r=2,
                                    parity_wait_s=wait_s, **kw))
    assert r2['lost'] == 0 and r2['frac_reconstructed'] > 0
    assert r2['p99_ms'] < 0.5 * equal['p99_ms']


def test_fault_injector_draws_are_reproducible_and_shaped():
  from pmjax.serving.faults import FaultInjector, start_contention
  def draws(spec, n=2000):
    inj = FaultInjector(spec)
    return np.array([inj.extra_delay_s() for _ in range(n)])
  fixed = draws(FaultSpec(slow_prob=0.1, slow_ms=20, seed=3))
  np.testing.assert_array_equal(fixed, draws(FaultSpec(slow_prob=0.1, slow_ms=20, seed=3)))
  assert set(np.round(fixed, 6)) == {0.0, 0.02} and 0.07 < (fixed > 0).mean() < 0.13
  exp = draws(FaultSpec(slow_prob=1.0, slow_dist='exp', slow_ms=10))
  assert 0.008 < exp.mean() < 0.012
  pareto = draws(FaultSpec(slow_prob=1.0, slow_dist='pareto', slow_ms=10))
  assert pareto.min() >= 0.01 and pareto.max() > 0.05   # heavy tail above the minimum
  net = FaultInjector(FaultSpec(net_ms_per_mb=2.0))
  assert net.extra_delay_s(3_000_000) == pytest.approx(0.006)
  assert FaultInjector(FaultSpec(fail_at_s=1.0)).failed(1.0)
  with pytest.raises(ValueError, match='slow_dist'):
    FaultSpec(slow_dist='weibull')
  procs = start_contention(0.0, 0.2)
  for p in procs:
    p.join(timeout=10)
    assert p.exitcode == 0


def test_linear_r2_serving_rebuilds_two_stragglers_exactly():
  """r=2: one parity queue per slot; two slow originals in a group of 4 are both rebuilt."""
  code = make_code('linear', 4, 2, parity_input='sum')
  encode = lambda x: np.asarray(code.encode(x.astype(np.float32)))
  fe = Frontend('coded', [fake_f(slow_s=1.5) for _ in range(4)], [fake_fp(), fake_fp()], k=4,
                r=2, encode=encode, decode=code.decode, query_shape=SHAPE).start()
  queries = [query(3), query(4, marker=1), query(5), query(6, marker=1)]
  t = time.perf_counter()
  futures = [fe.submit(q) for q in queries]
  results = [f.result(timeout=3) for f in futures]
  assert time.perf_counter() - t < 1.0
  fe.close(join_timeout_s=0.1)
  assert [r.reconstructed for r in results] == [False, True, False, True]
  for q, r in zip(queries, results):
    np.testing.assert_allclose(r.output, fake_f()(q[None])[0], atol=1e-3)
  with pytest.raises(ValueError, match='multiple of r'):
    Frontend('coded', [fake_f()], [fake_fp()], k=4, r=2, encode=encode, decode=code.decode,
             query_shape=SHAPE)


@pytest.mark.parametrize('wait_s,both_parities', [(0.0, False), (0.05, False), (2.0, True)])
def test_parity_wait_uses_every_parity_within_the_bound(wait_s, both_parities):
  """r=2, one slow original, parity 1 answers 0.4 s late: without a wait (or with a short
  one) the decoder runs on parity 0 alone; with a longer wait it runs on both, when
  parity 1 arrives (not at the end of the wait)."""
  code = make_code('linear', 4, 2, parity_input='sum')
  encode = lambda x: np.asarray(code.encode(x.astype(np.float32)))
  seen = []

  def decode(y, avail, z, zavail):
    seen.append(np.asarray(zavail)[0].tolist())
    return code.decode(y, avail, z, zavail)

  fe = Frontend('coded', [fake_f(slow_s=3.0) for _ in range(4)],
                [fake_fp(), fake_fp(delay_s=0.4)], k=4, r=2, encode=encode, decode=decode,
                query_shape=SHAPE, parity_wait_s=wait_s).start()
  seen.clear()   # the warm-up decode
  queries = [query(3), query(4, marker=1), query(5), query(6)]
  t = time.perf_counter()
  futures = [fe.submit(q) for q in queries]
  slow = futures[1].result(timeout=5)
  elapsed = time.perf_counter() - t
  fe.close(join_timeout_s=0.1)
  assert slow.reconstructed
  np.testing.assert_allclose(slow.output, fake_f()(queries[1][None])[0], atol=1e-3)
  # Without a wait (or a short one) the decoder ran before parity 1 came in (`seen`); the
  # time to the answer is not bounded there (a bound of 0.35 s failed once under the full
  # suite's load on a 2-core machine). With the 2 s wait it waited for parity 1 (0.4 s
  # late), and no longer.
  assert seen == [[True, True] if both_parities else [True, False]]
  if both_parities:
    assert 0.4 <= elapsed < 1.5
  with pytest.raises(ValueError, match='parity_wait_s'):
    Frontend('coded', [fake_f()], [fake_fp()], k=2, encode=encode, decode=decode,
             query_shape=SHAPE, parity_wait_s=-1)


def test_coded_group_parity_wait_policy():
  g = policy.CodedGroup(4, 2, parity_wait=True)
  for s in (0, 1, 2):
    assert not g.arrive(s).decode
  first = g.arrive(4)                       # k outputs in, parity 5 not yet: wait
  assert first.start_wait and not first.decode
  done = g.arrive(5)                        # every parity in: decode now
  assert done.decode == (3,) and not done.start_wait
  g = policy.CodedGroup(4, 2, parity_wait=True)
  for s in (0, 1, 2, 4):
    g.arrive(s)
  expired = g.expire()                      # the bound passed: decode with parity 4 alone
  assert expired.decode == (3,) and 5 in expired.cancel
  g = policy.CodedGroup(4, 2, parity_wait=True)
  for s in (0, 1, 2, 4):
    g.arrive(s)
  own = g.arrive(3)                         # the original itself arrived during the wait
  assert own.resolve_own and not own.decode and 5 in own.cancel and g.finished
  assert not policy.CodedGroup(4, 1, parity_wait=True).parity_wait   # r = 1: nothing to wait for


# ---------------------------------------------------------------------------
# No stranded query: failing models, partial batches and groups, deadlines.
# ---------------------------------------------------------------------------

def raising_f(after=0, gate=None):
  """A model that raises on every call after the first `after` ones (each call from an
  instance's thread first waits for `gate`, a threading.Event, when one is given)."""
  calls = []
  def predict(x):
    if gate is not None and threading.current_thread() is not threading.main_thread():
      assert gate.wait(5), 'the test never opened the gate'
    calls.append(1)
    if len(calls) > after:
      raise RuntimeError('CUDA error: an illegal memory access')
    return fake_f()(x)
  return predict


def _all_settled(futs, timeout=5):
  deadline = time.perf_counter() + timeout
  for f in futs:
    try:
      f.result(timeout=max(0.0, deadline - time.perf_counter()))
    except Exception:  # pylint: disable=broad-except
      pass
  return all(f.done() for f in futs)


@pytest.mark.parametrize('mode', ['equal', 'none', 'hedge'])
def test_instance_that_raises_is_dead_and_its_batch_is_served_by_another(mode):
  # base1 is busy 50 ms per query, so base0 surely takes (and fails) one.
  fe = Frontend(mode, [raising_f(), fake_f(slow_s=0.05)], query_shape=SHAPE,
                k=2).start(warmup=False)
  futs = [fe.submit(query(i % 9 + 2, marker=1)) for i in range(8)]
  assert _all_settled(futs)
  for i, f in enumerate(futs):
    np.testing.assert_allclose(f.result().output,
                               fake_f(slow_s=0)(query(i % 9 + 2, marker=1)[None])[0])
  s = fe.stats()['instances']['base0']
  assert not s['alive'] and 'illegal memory access' in s['error']
  fe.close()


def test_coded_instance_that_raises_is_decoded():
  fe = coded([raising_f(), fake_f(slow_s=0.05)], [fake_fp()]).start(warmup=False)
  futs = [fe.submit(query(i % 9 + 2, marker=1)) for i in range(8)]
  assert _all_settled(futs)
  for i, f in enumerate(futs):
    np.testing.assert_allclose(f.result().output,
                               fake_f(slow_s=0)(query(i % 9 + 2, marker=1)[None])[0], atol=1e-4)
  assert not fe.stats()['instances']['base0']['alive']
  fe.close()


@pytest.mark.parametrize('mode', ['coded', 'equal'])
def test_when_every_instance_raises_every_query_fails_and_new_ones_are_refused(mode):
  from pmjax.serving.frontend import InstanceError, NoInstanceError
  gate = threading.Event()
  if mode == 'coded':
    fe = coded([raising_f(gate=gate), raising_f(gate=gate)], [raising_f(gate=gate)])
  else:
    fe = Frontend('equal', [raising_f(gate=gate), raising_f(gate=gate)], query_shape=SHAPE)
  # Every query is accepted before any instance runs (the gate holds the models), then
  # each fails. Without the gate an instance could die between two submits and a later
  # query be refused with NoInstanceError (the frontend's lock does not hold instances:
  # they call the model outside it).
  fe.start(warmup=False)
  futs = [fe.submit(query(i + 2)) for i in range(6)]
  gate.set()
  assert _all_settled(futs)   # none pending
  for f in futs:
    with pytest.raises(InstanceError):
      f.result()
  s = fe.stats()['instances']
  assert not s['base0']['alive'] and not s['base1']['alive']
  with pytest.raises(NoInstanceError, match='no base instance is alive.*illegal memory'):
    fe.submit(query(2))
  fe.close()


def test_partial_batch_is_flushed():
  fe = Frontend('none', [fake_f()], query_shape=SHAPE, batch_size=4,
                flush_timeout_s=0.02).start()
  t = time.perf_counter()
  r = fe.submit(query(5)).result(timeout=2)
  assert time.perf_counter() - t < 1.0
  np.testing.assert_allclose(r.output, fake_f()(query(5)[None])[0])
  assert fe.stats()['flushed_batches'] == 1
  fe.close()


def test_partial_group_is_padded_and_still_protected():
  """A lone query whose F straggles: its group is padded with F(0) and the parity
  rebuilds it exactly, long before its own answer."""
  with coded([fake_f(slow_s=1.5)], [fake_fp()], flush_timeout_s=0.02) as fe:
    t = time.perf_counter()
    r = fe.submit(query(5, marker=1)).result(timeout=3)
    assert time.perf_counter() - t < 1.0
    assert r.reconstructed and fe.stats()['flushed_groups'] == 1
  np.testing.assert_allclose(r.output, fake_f(slow_s=0)(query(5, marker=1)[None])[0],
                             atol=1e-5)


def test_deadline_fails_a_query_that_is_not_answered_in_time():
  from pmjax.serving.frontend import DeadlineExceededError
  fe = Frontend('equal', [fake_f(slow_s=1.0)], query_shape=SHAPE, deadline_s=0.05).start()
  t = time.perf_counter()
  with pytest.raises(DeadlineExceededError, match='50.0 ms'):
    fe.submit(query(2, marker=1)).result(timeout=2)
  assert time.perf_counter() - t < 0.5
  # A per-query deadline overrides the server's.
  assert fe.submit(query(3), deadline_s=5.0).result(timeout=3).output is not None
  assert fe.stats()['deadlines_missed'] == 1
  fe.close(join_timeout_s=0.1)


def test_fail_stop_of_the_only_instance_strands_nothing():
  """A silent crash loses the batch in flight (a deadline bounds it); what was queued
  behind it and what comes after gets an error, not an endless wait."""
  from pmjax.serving.frontend import DeadlineExceededError, InstanceError, NoInstanceError
  faults = {'base0': FaultSpec(fail_at_s=0.05)}
  fe = Frontend('none', [fake_f(slow_s=0.2)], query_shape=SHAPE, faults=faults,
                deadline_s=1.0).start(warmup=False)
  futs = [fe.submit(query(2, marker=1)) for _ in range(3)]
  assert _all_settled(futs, timeout=3)
  errors = [type(f.exception()) for f in futs]
  assert set(errors) <= {DeadlineExceededError, InstanceError} and InstanceError in errors
  with pytest.raises(NoInstanceError):
    fe.submit(query(2))
  fe.close()


def test_submit_copies_the_callers_buffer():
  fe = Frontend('none', [fake_f(slow_s=0.2)], query_shape=SHAPE).start()
  fe.submit(query(2, marker=1))      # keeps the instance busy
  buf = query(7)
  f = fe.submit(buf)
  buf[:] = 9                         # the caller reuses its buffer
  np.testing.assert_allclose(f.result(timeout=2).output, fake_f()(query(7)[None])[0])
  fe.close()


def test_hedge_budget_is_the_extra_capacity_of_equal_resources():
  assert policy.hedge_capacity(3, 2) == 1 and policy.hedge_capacity(18, 2) == 6
  assert policy.hedge_capacity(6, 4, 2) == 2
  budget = policy.HedgeBudget(1)
  assert budget.acquire() and not budget.acquire()
  budget.release()
  assert budget.acquire() and budget.in_flight == 1


def test_a_policy_registered_in_a_test_runs_in_both_drivers():
  """A policy is written once: registered here only, the real loop and the simulator
  both run it (and `make_policy` validates its settings)."""
  from pmjax.serving import sim

  class Twice(policy.Policy):
    """Every batch goes to two instances at once; the first answer wins."""

    def __init__(self, k=1, r=0, n_base=1, copies: int = 2):
      super().__init__(k, r, n_base)
      self.n_copies, self.sent = copies, 0

    def on_batch(self, task):
      task.copies = self.n_copies
      self.sent += 1
      return [policy.Send(task) for _ in range(self.n_copies)]

    def on_lost(self, task, can_retry, why):
      if not task.done and task.copies > 1:
        task.copies -= 1
        return []
      return super().on_lost(task, can_retry, why)

  policy.register_policy('twice')(Twice)
  try:
    assert policy.instance_counts('twice', 2, 2) == (3, 0)
    with pytest.raises(ValueError, match="unknown serving policy setting.*'copys'"):
      policy.make_policy('twice', 2, 1, 3, copys=3)
    # The real loop: base0 sleeps 1.5 s on every batch; every query still answers fast.
    faults = {'base0': FaultSpec(slow_prob=1.0, slow_ms=1500)}
    with Frontend('twice', [fake_f(), fake_f()], query_shape=SHAPE, faults=faults) as fe:
      lat = []
      for i in range(6):
        t = time.perf_counter()
        out = fe.submit(query(i + 2)).result(timeout=3)
        lat.append(time.perf_counter() - t)
        assert out.instance == 'base1' and out.output[0] == i + 2
      assert max(lat) < 1.0 and fe.policy.sent == 6
      fe.close(join_timeout_s=0.1)
    # The simulator: the same class against stragglers, nothing lost, tail cut.
    service = np.full(50, 0.01)
    kw = dict(seed=0, slow=dict(slow_prob=0.05, slow_ms=50))
    twice = sim.summarize(sim.simulate('twice', 2, 2, 30, 2000, service, **kw))
    alone = sim.summarize(sim.simulate('none', 2, 2, 30, 2000, service, **kw))
    assert twice['lost'] == 0 and alone['lost'] == 0
    assert twice['p99_ms'] < 0.5 * alone['p99_ms']
  finally:
    policy.POLICIES.pop('twice')


def test_verifying_loop_flags_groups_with_a_wrong_output_and_blames_its_instance():
  """policy.verify: every group's parity is computed and each complete group checked
  (the collage code's consistency check): groups holding an output of the instance
  that answers wrongly are flagged, and it is blamed where the pattern allows; clean
  groups are not flagged."""
  import jax
  from pmjax.codes import byzantine
  k = 2
  code = make_code('collage', k)
  encode = lambda x: x.reshape(x.shape[0], 1, -1).astype(np.float32)

  def fake_collage(p):      # a parity model that answers every cell as F does
    return p.reshape(len(p), k, -1)[:, :, :C].reshape(len(p), -1).astype(np.float32)
  check = lambda y, a, z, za: jax.device_get(byzantine.collage_check(y, a, z, za, 1.0))
  faults = {'base1': FaultSpec(wrong_prob=1.0, wrong_kind='scaled')}
  with pytest.raises(ValueError, match='needs check='):
    Frontend(policy.make_policy('coded', k, 1, 2, verify=True), [fake_f(), fake_f()],
             [fake_collage], k=k, encode=encode, decode=code.decode, query_shape=SHAPE)
  fe = Frontend(policy.make_policy('coded', k, 1, 2, verify=True), [fake_f(), fake_f()],
                [fake_collage], k=k, encode=encode, decode=code.decode, query_shape=SHAPE,
                faults=faults, check=check).start()
  futures = []
  for v in range(3, 23):
    futures.append(fe.submit(query(v)))
    time.sleep(0.002)
  who = [f.result(timeout=5).instance for f in futures]
  deadline = time.perf_counter() + 5
  while fe.verified_groups < 10 and time.perf_counter() < deadline:
    time.sleep(0.01)      # the last parity outputs come after the answers
  fe.close()
  s = fe.stats()
  assert s['verified_groups'] == 10
  groups = [who[i:i + k] for i in range(0, len(who), k)]
  assert s['flagged_groups'] == sum('base1' in g for g in groups) > 0
  assert s['blamed'].get('base1', 0) == sum(g.count('base1') == 1 for g in groups)
  # Both outputs wrong at k=2: the only parity disagrees with every cell, and is blamed.
  assert s['blamed'].get('parity0', 0) == sum(g.count('base1') == 2 for g in groups)
  assert set(s['blamed']) <= {'base1', 'parity0'}


def test_collage_decodes_with_a_parity_still_missing():
  """A coded output wider than an answer (collage: k answers): a straggler rebuilt from
  the first parity while the other is still out (placeholders shaped per kind)."""
  k = 2
  code = make_code('collage', k, 2)
  encode = lambda x: np.repeat(x.reshape(x.shape[0], 1, -1).astype(np.float32), 2, axis=1)

  def fake_collage(delay_s):
    def predict(p):
      time.sleep(delay_s)
      return p.reshape(len(p), k, -1)[:, :, :C].reshape(len(p), -1).astype(np.float32)
    return predict
  fe = Frontend('coded', [fake_f(slow_s=1.5), fake_f(slow_s=1.5)],
                [fake_collage(0.0), fake_collage(1.5)], k=k, r=2, encode=encode,
                decode=code.decode, query_shape=SHAPE).start()
  queries = [query(3), query(4, marker=1)]
  results = [f.result(timeout=3) for f in [fe.submit(q) for q in queries]]
  fe.close(join_timeout_s=0.1)
  assert [r.reconstructed for r in results] == [False, True]
  np.testing.assert_allclose(results[1].output, fake_f()(queries[1][None])[0])


def test_a_failure_while_handling_an_output_fails_its_group_instead_of_hanging(capsys):
  """A decode that raises (a bug) fails the open queries of its group with a message;
  the instances keep serving the next groups."""
  encode, decode = sum_codec(2)
  calls = []

  def broken_decode(*args):
    calls.append(1)
    if len(calls) == 2:     # the warm-up call passes, the first real decode raises
      raise RuntimeError('decode exploded')
    return decode(*args)
  fe = Frontend('coded', [fake_f(slow_s=1.0), fake_f(slow_s=1.0)], [fake_fp()], k=2,
                encode=encode, decode=broken_decode, query_shape=SHAPE).start()
  first = [fe.submit(query(3)), fe.submit(query(4, marker=1))]
  from pmjax.serving.frontend import InstanceError
  assert first[0].result(timeout=3).output is not None
  with pytest.raises(InstanceError, match='decode exploded'):
    first[1].result(timeout=3)
  again = [fe.submit(query(5)), fe.submit(query(6, marker=1))]
  assert [f.result(timeout=3).reconstructed for f in again] == [False, True]
  fe.close(join_timeout_s=0.1)
  assert all(i['alive'] for i in fe.stats()['instances'].values())
  assert 'decode exploded' in capsys.readouterr().err


def test_deferred_parity_is_sent_only_for_groups_still_missing_an_output():
  calls = []

  def counting_fp(p):
    calls.append(len(p))
    return fake_fp()(p)
  pol = policy.make_policy('coded', 2, 1, 2, parity_delay_s=0.2, flush_timeout_s=0.05)
  encode, decode = sum_codec(2)
  with Frontend(pol, [fake_f(1.5), fake_f(1.5)], [counting_fp], k=2, encode=encode,
                decode=decode, query_shape=SHAPE) as fe:
    warm = len(calls)                                  # start() warms the parity once
    a, b = fe.submit(query(3)), fe.submit(query(4))    # both outputs come in time
    assert not a.result(timeout=2).reconstructed and not b.result(timeout=2).reconstructed
    time.sleep(0.4)
    assert len(calls) == warm                          # its parity was never computed
    fe.submit(query(3))
    t = time.perf_counter()
    r1 = fe.submit(query(5, marker=1)).result(timeout=3)   # a straggler: parity sent late
    elapsed = time.perf_counter() - t
  assert r1.reconstructed and 0.19 < elapsed < 1.2
  np.testing.assert_allclose(r1.output, fake_f()(query(5, marker=1)[None])[0], atol=1e-5)
  assert len(calls) == warm + 1
  stats = fe.stats()   # held: complete groups whose outputs were not all in yet
  assert stats['parity_held'] - stats['parity_skipped'] == 1


def test_a_query_past_its_deadline_is_not_computed():
  """A batch whose deadline passed while it waited in the queue is skipped by the
  instance (never computed), counted, and the next queries are served."""
  from pmjax.serving.frontend import DeadlineExceededError
  calls = []

  def counting_f(x):
    calls.append(x.reshape(len(x), -1)[0, 1])
    return fake_f(slow_s=0.5)(x)
  fe = Frontend('hedge', [counting_f, counting_f], query_shape=SHAPE, k=2, r=1,
                hedge_delay_s=10.0).start()
  warm = len(calls)
  slow = [fe.submit(query(2, marker=1)), fe.submit(query(3, marker=1))]   # both busy
  late = fe.submit(query(7), deadline_s=0.1)            # waits behind them, expires
  with pytest.raises(DeadlineExceededError):
    late.result(timeout=2)
  assert all(f.result(timeout=3).output is not None for f in slow)
  assert fe.submit(query(4)).result(timeout=3).output is not None
  fe.close(join_timeout_s=0.1)
  assert 7 not in calls[warm:]                          # the expired query never ran
  stats = fe.stats()
  assert stats['expired_not_computed'] == 1
  assert sum(i['expired'] for i in stats['instances'].values()) == 1


def test_an_expired_hedged_task_gives_its_budget_back():
  pol = policy.make_policy('hedge', 2, 1, 3)
  task = policy.Task()
  assert [type(a) for a in pol.on_batch(task)] == [policy.Send, policy.Send]
  assert pol.budget.in_flight == 1
  assert pol.on_expired(task) == [] and pol.budget.in_flight == 0
  pol.on_expired(task)                                  # its second copy: once only
  assert pol.budget.in_flight == 0


@pytest.mark.parametrize('dist', ['lognormal', 'straggling'])
def test_auto_hold_converges_to_the_quantile_of_the_service_times(dist):
  """The hold learnt from a synthetic service-time distribution: factor x its quantile
  (within 10%), ignoring a straggling tenth of the outputs, and it follows a shift."""
  from pmjax.serving.hold import AutoHold
  rng = np.random.default_rng(0)
  hold = AutoHold(quantile=0.8, factor=2.0, window=512, initial_s=0.05)
  assert hold.delay_s() == 0.05 and not hold.ready

  def draw(scale, n):
    t = scale * rng.lognormal(0.0, 0.3, n)
    if dist == 'straggling':
      t = np.where(rng.random(n) < 0.1, t + 0.5, t)     # 10% of outputs +500 ms
    return t
  for t in draw(0.02, 2000):
    hold.add(t)
  clean = 0.02 * rng.lognormal(0.0, 0.3, 200_000)
  want = 2.0 * np.quantile(np.where(rng.random(clean.size) < 0.1, clean + 0.5, clean)
                           if dist == 'straggling' else clean, 0.8)
  assert hold.ready and abs(hold.delay_s() - want) < 0.1 * want
  assert hold.delay_s() < 0.2                           # the stragglers do not set it
  for t in draw(0.04, 2000):                            # the machine got 2x slower
    hold.add(t)
  assert abs(hold.delay_s() - 2 * want) < 0.15 * 2 * want


def test_auto_hold_runs_in_both_drivers():
  """The adaptive hold in the real loop and in the simulator: learnt from the outputs,
  no parity computed while every output is on time, a straggler still rebuilt."""
  from pmjax.serving import sim
  calls = []

  def counting_fp(p):
    calls.append(len(p))
    return fake_fp()(p)
  pol = policy.make_policy('coded', 2, 1, 2, auto_hold=True, parity_delay_s=0.5,
                           flush_timeout_s=0.05)
  encode, decode = sum_codec(2)
  with Frontend(pol, [fake_f(1.0), fake_f(1.0)], [counting_fp], k=2, encode=encode,
                decode=decode, query_shape=SHAPE) as fe:
    warm = len(calls)
    for i in range(40):
      fe.submit(query(2 + i % 50)).result(timeout=3)
    time.sleep(0.1)
    learnt = pol.hold.delay_s()
    assert pol.hold.ready and learnt < 0.1 and len(calls) == warm
    fe.submit(query(3))
    t = time.perf_counter()
    r = fe.submit(query(5, marker=1)).result(timeout=3)
    assert r.reconstructed and time.perf_counter() - t < 0.5   # not the 0.5 s initial
  assert fe.stats()['auto_hold_ms'] == pytest.approx(learnt * 1e3)
  kw = dict(m=2, k=2, rate=20, num_queries=3000, base_samples_s=np.full(10, 0.004),
            slow={'slow_prob': 0.05, 'slow_ms': 400.0}, warmup=500, flush_timeout_s=0.02)
  held = sim.simulate('coded', parity_delay_s=0.2, **kw)
  auto = sim.simulate('coded', parity_delay_s=0.2, auto_hold=True, **kw)
  assert 8.0 <= auto['policy']['auto_hold_ms'] < 12.0    # 2 x the 4 ms service, + queues
  # a reconstruction waits for the hold: the fixed 0.2 s, or the learnt ~8 ms
  rebuilt = lambda res: np.median(res['latency_s'][res['reconstructed']])
  assert rebuilt(held) > 0.2 > 0.05 > rebuilt(auto)


def test_held_parity_is_encoded_only_when_a_data_output_is_still_missing():
  """With a hold, a complete group is not encoded at once: after the hold it is encoded
  only if a data output is still missing (no encode work for groups that came in time),
  and at once when a data instance fails."""
  pol = policy.make_policy('coded', 2, 1, 2, parity_delay_s=0.1, flush_timeout_s=None)
  kinds = lambda acts: [type(a).__name__ for a in acts]
  a, b = policy.Task(), policy.Task()
  pol.on_batch(a)
  acts = pol.on_batch(b)
  assert kinds(acts) == ['Send', 'Later'] and acts[1].event[0] == 'parity'
  pol.on_output(a)
  pol.on_output(b)
  assert pol.on_timer(acts[1].event) == []            # all in time: never encoded
  c, d = policy.Task(), policy.Task()
  pol.on_batch(c)
  later = pol.on_batch(d)[1]
  pol.on_output(c)                                     # d straggles
  assert kinds(pol.on_timer(later.event)) == ['Encode']
  assert pol.on_timer(later.event) == []               # once only
  e, g = policy.Task(), policy.Task()
  pol.on_batch(e)
  later = pol.on_batch(g)[1]
  assert 'Encode' in kinds(pol.on_lost(e, False, 'died'))  # a failure: encoded at once
  assert pol.on_timer(later.event) == []
  assert pol.stats()['parity_held'] == 3 and pol.stats()['parity_skipped'] == 1


def test_curves_saturation_and_coded_over_equal():
  """The sweep's saturation is the last load kept up with (no error or loss, answers/s
  within 10% of what was sent); coded's tail over equal's is taken load by load."""
  from pmjax.serving import curves

  def point(rate, achieved, p999, lost=0):
    return {'offered_qps': rate, 'sent_qps': rate, 'achieved_qps': achieved, 'errors': {},
            'lost': lost, 'answered': 100, 'p99_ms': p999 / 2, 'p99.9_ms': p999}
  coded = [point(10, 10, 30), point(20, 19, 44), point(40, 30, 400)]
  equal = [point(10, 10, 30), point(20, 20, 40), point(40, 39, 80)]
  assert curves.saturation(coded) == 20 and curves.saturation(equal) == 40
  assert curves.saturation([point(10, 10, 30, lost=1)]) is None
  rows = curves.versus({'coded': coded, 'equal': equal})
  assert [r['below_saturation'] for r in rows] == [True, True, False]
  assert [round(r['p99.9_ratio'], 2) for r in rows] == [1.0, 1.1, 5.0]
  records = [{'sent_s': t, 'latency_ms': 100.0, 'lag_ms': 0.0} for t in np.arange(0, 10, 0.1)]
  w = curves.window_rates(records)   # 10 q/s sent; those answered after the last send excluded
  assert w['sent_qps'] == pytest.approx(10.0, rel=0.02)
  assert w['achieved_qps'] == pytest.approx(99 / 9.9, rel=0.02)


def test_served_coding_groups_are_freed_without_the_cycle_collector():
  """A task and its coding group refer to each other; once a group is served the
  frontend drops the group's side, so served tasks are freed by reference counting (the
  collector's passes stop every serving thread). With the collector off, almost none of
  200 served tasks remain; a reconstructed group frees too."""
  import gc
  from pmjax.serving.protocol import Task
  gc.collect()
  gc.disable()
  try:
    with coded([fake_f(slow_s=0.05), fake_f(slow_s=0.05)], [fake_fp()]) as fe:
      futs = [fe.submit(query(i % 7 + 2, marker=1 if i == 10 else 0)) for i in range(200)]
      res = [f.result(timeout=5) for f in futs]
      time.sleep(0.1)   # the straggler's late output comes in
      left = sum(isinstance(o, Task) for o in gc.get_objects())
  finally:
    gc.enable()
  assert sum(r.reconstructed for r in res) >= 1
  assert left <= 10, f'{left} tasks of 200 wait for the cycle collector'
