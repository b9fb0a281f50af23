"""Codes: pure, jittable, batch-first encode / target / decode functions.

A `Code` bundles what coded computation needs around a parity model F_P:

  encode(x_BxKx...)                      -> p_BxRx...   the parity queries
  target(y_BxKxC)                        -> t_BxRxC     what F_P must output
  decode(y_BxKxC, avail_BxK, z_BxRxC, zavail_BxR) -> yhat_BxKxC

`decode` returns available rows unchanged and rebuilds the missing ones from
the available outputs and the available parity outputs. A row that cannot be
rebuilt (more rows missing than parities available) comes back as NaN under
`jit`; called with concrete masks, `decode` raises `ValueError` instead.

    from pmjax.codes import make_code
    code = make_code('concat', k=2, image_shape=(28, 28, 1))
    encode = jax.jit(code.encode)           # the "imported jitted codec"

ParM's codes (r = 1): `sum` (P = X1 + .. + Xk) and `concat` (the k images
downsampled and tiled into one image of the original size); both train F_P
towards the sum of the k outputs and decode by subtraction.

`berrut` (ApproxIFER, training-free, S stragglers): queries are interpolated
with Berrut's rational interpolant; every worker runs the unchanged F.

`linear` (any r >= 1, systematic): parity model j answers a parity query (by
default the `concat` tiling; `parity_input='sum'` gives sum_i C[j,i] X_i) and
is trained towards t_j = sum_i C[j,i] F(X_i), where C (r x k, see
`coefficient_matrix`) has every square submatrix invertible; decoding solves
the small (masked, batched, least-squares when over-determined) system for
up to r missing outputs. With r = 1, C = ones: exactly ParM.

`collage` (any r >= 1, systematic): the `concat` tiling as parity query, and each
of the r parity models answers every cell (z_BxRx(K*C), trained towards F's own k
outputs); a missing answer is the mean of the available parity answers for its cell,
so one parity output rebuilds any number of missing ones (`Code.rebuilds_all`).
`cell='half'` tiles half-size images (16x16 on 32x32) into a larger coded query
(`cell_shape`, `coded_query_shape`).

Codes are registered (`register_code(CodeSpec(...))`): a spec names the
builder, its typed parameters (`config.code = code_config(name, k, r, **params)`
in a run config: `code_params(config.code)` gives them back, checked),
the largest r for a k, and what the code needs (a trained parity model or
not). `make_code` builds any registered code; `CODE_SPECS` lists them. The
`r` argument of `make_code` has one meaning for every code: how many missing
outputs a group tolerates (Berrut's S stragglers); `Code.r` is how many coded
queries the code adds (Berrut non-systematic: K + S, every worker runs one).
"""

from __future__ import annotations

# The abstraction and the registry, then the codes (importing a module registers it).
from pmjax.codes.core import (CODE_SPECS, Code, CodeSpec, Param, check_decode_args,
                              code_config, code_params, coded_query_shape, describe_code,
                              get_code_spec,
                              make_code, migrate_code_config, one_parity_per_missing,
                              raise_if_undecodable, register_code)
from pmjax.codes.parm import CELLS, cell_shape, concat_grid, resize_matrix
from pmjax.codes.linear import (COEFFICIENTS, PARITY_INPUTS, coefficient_matrix,
                                solve_small)
from pmjax.codes import collage  # noqa: F401  (registers 'collage')
from pmjax.codes.berrut import (authors_nodes, berrut_weights, chebyshev_first,
                                chebyshev_second)

__all__ = ['CELLS', 'CODE_SPECS', 'COEFFICIENTS', 'Code', 'CodeSpec', 'PARITY_INPUTS', 'Param',
           'authors_nodes', 'berrut_weights', 'chebyshev_first', 'chebyshev_second',
           'check_decode_args',
           'cell_shape', 'code_config', 'code_params', 'coded_query_shape',
           'coefficient_matrix', 'concat_grid',
           'describe_code', 'get_code_spec', 'make_code', 'migrate_code_config',
           'one_parity_per_missing', 'raise_if_undecodable', 'register_code',
           'resize_matrix', 'solve_small']

# A code made of trained networks (pmjax.learned): registered for its parameters and its
# training task; `pmjax.runs.load_code` builds it from a trained run.
register_code(CodeSpec(
    'learned', None, trained=True, max_r=lambda k: k, r_rule='1 <= r <= k', task='learned',
    params=(Param('loss', 'mse', ('mse', 'kl', 'ce'), 'learned_loss', 'mse'),
            Param('encoder', 'mlp', ('mlp', 'conv'), 'learned_encoder', 'mlp'),
            Param('train_parity', False, (True, False), 'learned_train_parity', False)),
    describe=lambda r, loss, encoder, train_parity: f'learned ({encoder} encoder, {loss} loss)',
    how_to_make="code 'learned' is made of trained networks: train it with "
                "`python -m pmjax.train ... code=learned` and load it with "
                "pmjax.runs.load_code(WORKDIR) (or pmjax.learned.make_learned_code)"))
