"""The ParM serving loop: coded redundancy against stragglers and failures.

`frontend.Frontend` batches queries, forms coding groups, and answers each
query with its own output or a reconstruction, whichever comes first;
`instance.ModelInstance` serves one compiled model on its own thread;
`faults` injects slowdowns and failures; `loadgen` drives a Poisson load;
`python -m pmjax.serving.bench` compares modes. `policy` holds the decisions
shared with the discrete-event simulation in `sim`.
"""
