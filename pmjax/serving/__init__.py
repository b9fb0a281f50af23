"""The ParM serving loop: coded redundancy against stragglers and failures.

Policies (every decision): `protocol` (tasks, actions, the `Policy` base class),
`policy` (`Alone`, `Direct`, `Hedge`, the mode table), `coded` (`Coded`, with
`groups` and `hold`). The in-process loop: `frontend.Frontend` (life cycle) with
`batching` (submit), `executor` (the policy's actions), `events` (what instances
report), `instance.ModelInstance` (one compiled model per thread), `timers`,
`errors`. Load and faults: `faults`, `loadgen`; `python -m pmjax.serving.bench`
compares modes (`configs/serving.py`), `sim` runs the same policies as a
discrete-event simulation (`configs/sim.py`), `curves` draws load sweeps. On Ray
Serve: `cluster` (the CLI; a query's path in its docstring), `app`, `ingress`,
`bodies`, `ray_instance`, `replica`, `router`; `cluster_bench` and `overhead` measure it.
"""
