"""The ParM serving loop: coded redundancy against stragglers and failures.

`frontend.Frontend` batches queries, forms coding groups, and answers each
query with its own output or a reconstruction, whichever comes first;
`instance.ModelInstance` serves one compiled model on its own thread;
`faults` injects slowdowns and failures; `loadgen` drives a Poisson load;
`python -m pmjax.serving.bench` compares modes (`configs/serving.py`). Every
decision is a policy object's (`policy`: `Coded`, `Hedge`, `Direct`, `Alone`,
registered by mode with `register_policy`), driven alike by the frontend and
by the discrete-event simulation in `sim` (`configs/sim.py`).
"""
