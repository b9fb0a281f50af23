"""One table over codes: accuracy with nothing and with 1..S missing, A_o, cost.

    python -m pmjax.bench.code_table --base_workdir=W_F --k=8 --s=1 \
        [--parity_workdirs=W1,W2,...] [--out=DIR]

Training-free `berrut` codes (non-systematic as published, and systematic)
are evaluated here on the same trained F (its best checkpoint): every test
group of k consecutive test images, F run on the coded queries, every pattern
of missing outputs. Trained runs (`sum`, `concat`, `linear`, `learned`) are
read from their workdirs' results.json (`python -m pmjax.evaluate`); their
codes are loaded (`runs.load_code`) and timed here. Writes DIR/codes.json
and DIR/codes.md.

Columns: acc none missing (for non-systematic codes already an
approximation), A_d with m missing (accuracy of the answers that had to be
decoded, over every erasure pattern), A_o(f_u) = (1-f_u) acc + f_u A_d(1),
extra compute per query (r/k; non-systematic: every worker runs a coded
query, (k+s)/k in all), encode/decode time per group (median, this CPU).
"""

from __future__ import annotations

import itertools
import json
import os
from functools import partial

from absl import app, flags
import jax
import numpy as np

from pmjax import codes, inference, metrics, runs
from pmjax.bench import codec_cost
from pmjax.data import builders, pipeline




def _codec_us(encode, decode, x_1xKx, y_1xKxC, z_1xRxC, avail_1xK):
  """Median times of the compiled encode (raw uint8 group -> parity queries) and decode
  of one group."""
  zavail = np.ones(z_1xRxC.shape[:2], bool)
  return (codec_cost.median_us(lambda: encode(x_1xKx), 200),
          codec_cost.median_us(lambda: decode(y_1xKxC, avail_1xK, z_1xRxC, zavail), 200))


def berrut_row(base_workdir, k, s, systematic, batch=500, outputs='logits', nodes='authors'):
  """Berrut on F's `outputs` ('logits', or 'softmax' probabilities: interpolated instead),
  with the worker `nodes` of `pmjax.codes.berrut.WORKER_NODES` (ApproxIFER's by default)."""
  if outputs not in ('logits', 'softmax'):
    raise ValueError(f"outputs={outputs!r} is unknown; accepted: ['logits', 'softmax']")
  config, model, variables, _ = runs.load_variables(base_workdir)
  dataset = config.data.name
  spec = builders.get_spec(dataset)
  splits = pipeline.load_splits(config.data)
  code = codes.make_code('berrut', k, s, image_shape=spec.image_shape, systematic=systematic,
                         nodes=nodes)
  x_GxK, y_GxK = inference.fixed_groups(splits.test_x, splits.test_y, k)
  g = x_GxK.shape[0]
  predict = inference.make_predict(model, dataset)
  apply = inference.make_apply(model)
  logits = inference.batched(predict, variables, splits.test_x[:g * k], batch).reshape(g, k, -1)
  encode = jax.jit(partial(inference.encode_raw, code, dataset))

  def coded_outputs(v, x_chunk):
    p = encode(x_chunk)
    return apply(v, p.reshape(-1, *p.shape[2:])).reshape(p.shape[0], p.shape[1], -1)
  z = inference.batched(coded_outputs, variables, x_GxK, max(1, batch // code.r))
  if outputs == 'softmax':
    logits, z = np.asarray(jax.nn.softmax(logits, -1)), np.asarray(jax.nn.softmax(z, -1))
  decode = jax.jit(code.decode)
  acc_a = float(np.mean(np.argmax(logits, -1) == y_GxK))

  def accuracy(avail, zavail, positions):
    yhat = np.asarray(decode(logits, np.broadcast_to(avail, (g, k)),
                             z, np.broadcast_to(zavail, (g, code.r))))
    return float(np.mean(np.argmax(yhat[:, positions], -1) == y_GxK[:, positions]))

  r = code.r
  if systematic:   # the same patterns and pooling as the trained codes' rows
    acc_none = acc_a
    by_missing = {int(m): v['A_d_top1'] for m, v in metrics.degraded_by_missing(
        code, logits, z, y_GxK).items()}
  else:
    none = np.zeros(k, bool)
    acc_none = accuracy(none, np.ones(r, bool), list(range(k)))
    by_missing = {}
    for m in range(1, s + 1):
      scores = []
      for erased in itertools.combinations(range(r), m):
        zavail = np.ones(r, bool)
        zavail[list(erased)] = False
        scores.append(accuracy(none, zavail, list(range(k))))
      by_missing[m] = float(np.mean(scores))
  avail1 = np.ones((1, k), bool) if systematic else np.zeros((1, k), bool)
  if systematic:
    avail1[0, 0] = False
  enc_us, dec_us = _codec_us(encode, decode, x_GxK[:1], logits[:1], z[:1], avail1)
  return {'code': 'berrut' + ('-systematic' if systematic else '') +
                  ('' if outputs == 'logits' else f' ({outputs})') +
                  ('' if nodes == 'authors' else f' [{nodes} nodes]'), 'dataset': dataset,
          'model': config.model, 'k': k, 'r': r, 'stragglers': s, 'A_a': acc_a,
          'acc_none_missing': acc_none, 'A_d_by_missing': by_missing,
          'extra_compute_per_query': s / k, 'workers_per_query': (k + s) / k,
          'encode_us_per_group': enc_us, 'decode_us_per_group': dec_us, 'groups': g}


def _code_label(config) -> str:
  """The code's name with the parameters that tell its variants apart."""
  return codes.describe_code(config.code.name, config.code.r, codes.code_params(config.code))


def parity_row(workdir):
  """A trained run's row: accuracies from its results.json, its code timed on one group
  (one output missing)."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: run `python -m pmjax.evaluate '
                            f'--workdir={workdir}` first')
  with open(path) as f:
    res = json.load(f)
  code = runs.load_code(workdir)
  spec = builders.get_spec(res['dataset'])
  avail = np.ones((1, code.k), bool)
  avail[0, 0] = False
  y = np.zeros((1, code.k, spec.num_classes), np.float32)
  z = np.zeros((1, code.r, spec.num_classes), np.float32)
  enc_us, dec_us = _codec_us(jax.jit(partial(inference.encode_raw, code, res['dataset'])),
                             jax.jit(code.decode),
                             np.zeros((1, code.k, *spec.image_shape), np.uint8), y, z, avail)
  by_missing = {1: res['A_d_top1']}
  for m, v in res.get('A_d_by_missing', {}).items():
    by_missing[int(m)] = v['A_d_top1']
  return {'code': _code_label(runs.read_config(workdir)), 'dataset': res['dataset'],
          'model': res['model'],
          'k': res['k'], 'r': res['r'], 'stragglers': res['r'], 'A_a': res['A_a'],
          'acc_none_missing': res['A_a'], 'A_d_by_missing': by_missing,
          'extra_compute_per_query': res['r'] / res['k'], 'workers_per_query':
          (res['k'] + res['r']) / res['k'], 'encode_us_per_group': enc_us,
          'decode_us_per_group': dec_us, 'groups': res.get('num_groups'),
          'epochs': res.get('epochs'), 'parity_model': res.get('parity_model')}


def markdown(rows):
  lines = ['| dataset | F | code | parity model | epochs | k | r | acc, none missing '
           '| A_d 1 missing | A_d 2 missing | A_o(0.05) | A_o(0.1) | A_o(0.2) '
           '| extra compute/query | encode us | decode us |',
           '|' + '---|' * 16]
  for r in rows:
    ad1 = r['A_d_by_missing'][1]
    ad2 = r['A_d_by_missing'].get(2)
    ao = [(1 - f) * r['acc_none_missing'] + f * ad1 for f in (0.05, 0.1, 0.2)]
    fmt = lambda v: '' if v is None else f'{v:.4f}'
    us = lambda v: '' if v is None else f'{v:.0f}'
    lines.append(f"| {r['dataset']} | {r['model']} | {r['code']} | "
                 f"{r.get('parity_model') or 'none (F on coded queries)'} | "
                 f"{r.get('epochs') or ''} | {r['k']} | {r['r']} | "
                 f"{r['acc_none_missing']:.4f} | {ad1:.4f} | {fmt(ad2)} | "
                 + ' | '.join(f'{a:.4f}' for a in ao) +
                 f" | {r['extra_compute_per_query']:.3f} | {us(r['encode_us_per_group'])} | "
                 f"{us(r['decode_us_per_group'])} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  rows = []
  for base in f.base_workdirs.split(','):
    for systematic in (False, True):
      for outputs in f.berrut_outputs.split(','):
        for nodes in f.berrut_nodes.split(','):
          rows.append(berrut_row(base, f.k, f.s, systematic, outputs=outputs, nodes=nodes))
  for w in filter(None, f.parity_workdirs.split(',')):
    rows.append(parity_row(w))
  os.makedirs(f.out, exist_ok=True)
  table = markdown(rows)
  with open(os.path.join(f.out, 'codes.json'), 'w') as fh:
    json.dump(rows, fh, indent=2)
  with open(os.path.join(f.out, 'codes.md'), 'w') as fh:
    fh.write(table + '\n')
  print(table)


if __name__ == '__main__':
  flags.DEFINE_string('base_workdirs', None, 'Comma list of trained F workdirs.')
  flags.DEFINE_integer('k', 8, 'K for the Berrut codes.')
  flags.DEFINE_integer('s', 1, 'Stragglers S for the Berrut codes.')
  flags.DEFINE_string('berrut_outputs', 'logits', "F's outputs the Berrut decoder "
                      "interpolates: comma list of 'logits', 'softmax'.")
  flags.DEFINE_string('berrut_nodes', 'authors', "Worker nodes of the Berrut codes: comma "
                      "list of 'authors' (cos(i pi/N), ApproxIFER's scripts), 'second_kind' "
                      "(cos(i pi/(N-1)), pmjax's before 2026-12).")
  flags.DEFINE_string('parity_workdirs', '', 'Comma list of evaluated parity workdirs.')
  flags.DEFINE_string('out', 'workdirs/codes', 'Output directory.')
  app.run(main)
