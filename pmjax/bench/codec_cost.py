"""Encode + decode time per coding group against one batch's inference, isolated.

    python -m pmjax.bench.codec_cost --models=mlp,resnet8 --code=concat --k=2 --batch_size=1

Times, on this machine, the serving loop's own compiled pieces one after the
other: `jit(encode_raw)` on a group of k raw batches, `jit(code.decode)` with
one output missing, and F's `CompiledPredict` on one batch (random weights:
the time does not depend on them). Median of `--calls` calls each. JAX's
asynchronous CPU dispatch is off by default (`--cpu_async_dispatch`), as in the
serving bench: it adds ~20 us to each tiny call.
"""

from __future__ import annotations

import json
import time
from functools import partial

from absl import app, flags
import jax
import numpy as np

from pmjax import codes, inference, models, tasks
from pmjax.models import get_model
from pmjax.serving.instance import CompiledPredict


def median_us(fn, calls: int) -> float:
  """Median wall time (us) of `fn()` over `calls` calls after one warm-up call, each
  call waited for (`jax.block_until_ready`)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return 1e6 * float(np.median(times))


def forward_flops(model, variables, input_shape) -> float:
  """FLOPs of one eval-mode forward pass on one input of `input_shape` (H, W, C), by
  XLA's cost analysis of the compiled function on this backend, every convolution
  counted as XLA's own (`models.xla_convolutions`)."""
  x = jax.numpy.zeros((1, *input_shape), jax.numpy.float32)
  with models.xla_convolutions():
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables,
                                                                         x).compile()
  return compiled_flops(compiled)


def compiled_flops(compiled) -> float:
  """FLOPs of a compiled function by XLA's cost analysis (0 where it gives none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def measure(model_name, code_name='concat', k=2, batch_size=1, calls=500):
  shape = (28, 28, 1)
  code = codes.make_code(code_name, k, image_shape=shape)
  encode = jax.jit(partial(inference.encode_raw, code, 'mnist'))
  decode = jax.jit(code.decode)
  model = get_model(model_name, 10)
  predict = CompiledPredict(inference.make_predict(model, 'mnist'),
                            tasks.init_variables(model, 0, shape))
  x_group = np.zeros((batch_size, k, *shape), np.uint8)
  x_batch = np.zeros((batch_size, *shape), np.uint8)
  y = np.zeros((batch_size, k, 10), np.float32)
  z = np.zeros((batch_size, 1, 10), np.float32)
  avail = np.ones((batch_size, k), bool)
  avail[:, 0] = False
  zavail = np.ones((batch_size, 1), bool)
  enc_us = median_us(lambda: np.asarray(encode(x_group)), calls)
  dec_us = median_us(lambda: np.asarray(decode(y, avail, z, zavail)), calls)
  inf_us = median_us(lambda: predict(x_batch), calls)
  return {'model': model_name, 'code': code_name, 'k': k, 'batch_size': batch_size,
          'encode_us': enc_us, 'decode_us': dec_us, 'inference_us': inf_us,
          'codec_fraction_of_inference': (enc_us + dec_us) / inf_us}


def main(argv):
  del argv
  f = flags.FLAGS
  # Serving runs tiny computations: synchronous CPU dispatch saves ~20 us a call.
  jax.config.update('jax_cpu_enable_async_dispatch', f.cpu_async_dispatch)
  rows = [measure(m, f.code, f.k, f.batch_size, f.calls) for m in f.models.split(',')]
  print(json.dumps(rows))
  print('| model | batch | encode us/group | decode us/group | F inference us/batch | '
        '(encode+decode)/inference |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['model']} | {r['batch_size']} | {r['encode_us']:.1f} | {r['decode_us']:.1f} | "
          f"{r['inference_us']:.1f} | {100 * r['codec_fraction_of_inference']:.1f}% |")


if __name__ == '__main__':
  flags.DEFINE_string('models', 'mlp,resnet8', 'Comma list of base models.')
  flags.DEFINE_string('code', 'concat', 'Code.')
  flags.DEFINE_integer('k', 2, 'Group size.')
  flags.DEFINE_integer('batch_size', 1, 'Queries per batch.')
  flags.DEFINE_integer('calls', 500, 'Timed calls per function.')
  flags.DEFINE_bool('cpu_async_dispatch', False, 'JAX asynchronous dispatch on CPU.')
  app.run(main)
