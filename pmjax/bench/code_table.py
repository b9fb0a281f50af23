"""One table over codes: accuracy with nothing and with 1..S missing, A_o, cost.

    python -m pmjax.bench.code_table --base_workdirs=W_F --k=8 --s=1 \
        [--berrut_nodes=authors,second_kind] [--berrut_protocols=every_pattern,authors] \
        [--parity_workdirs=W1,W2,...] [--out=DIR]

Training-free `berrut` codes (non-systematic as published, and systematic)
are evaluated here on the same trained F (its best checkpoint): every test
group of k consecutive test images, F run on the coded queries, every pattern
of missing outputs; or, with `--berrut_protocols=authors`, ApproxIFER's own
protocol (random groups, S random stragglers per group). Worker nodes:
ApproxIFER's cos(i pi/N) by default (`--berrut_nodes`). Trained runs (`sum`,
`concat`, `linear`, `learned`) are read from their workdirs' results.json
(`python -m pmjax.evaluate`); their codes are loaded (`runs.load_code`) and timed
here. Writes DIR/codes.json and DIR/codes.md.

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

from pmjax import bench, codes, inference, metrics, report, runs
from pmjax.bench import codec_cost
from pmjax.data import builders, pipeline




def _codec_us(encode, decode, x_1xKx, y_1xKxC, z_1xRxC, avail_1xK):
  """Median times of the compiled encode (raw uint8 group -> parity queries) and decode
  of one group."""
  zavail = np.ones(z_1xRxC.shape[:2], bool)
  return (codec_cost.median_us(lambda: encode(x_1xKx), 200),
          codec_cost.median_us(lambda: decode(y_1xKxC, avail_1xK, z_1xRxC, zavail), 200))


PROTOCOLS = ('every_pattern', 'authors')


def _groups(n_test, k, protocol, groups, seed):
  """Test-image indices of each group: consecutive groups (every pattern of missing
  outputs is scored), or, as ApproxIFER's scripts (`Acc_Comparison`), `groups` groups of
  k distinct test images drawn at random."""
  if protocol == 'every_pattern':
    g = n_test // k
    return np.arange(g * k).reshape(g, k)
  rng = np.random.default_rng(seed)
  return np.stack([np.sort(rng.choice(n_test, k, replace=False)) for _ in range(groups)])


def berrut_row(base_workdir, k, s, systematic, batch=500, outputs='logits', nodes='authors',
               protocol='every_pattern', groups=10000, seed=0):
  """Berrut on F's `outputs` ('logits', or 'softmax' probabilities: interpolated instead),
  with the worker `nodes` of `pmjax.codes.berrut.WORKER_NODES` (ApproxIFER's by default).

  `protocol='every_pattern'` (ours): consecutive test groups, every pattern of 1..S
  missing outputs. `'authors'` (ApproxIFER's `Acc_Comparison`, non-systematic only):
  `groups` random groups of k test images, each with S of its K+S outputs missing,
  drawn at random per group; accuracy of all k answers against the true labels.
  """
  if outputs not in ('logits', 'softmax'):
    raise ValueError(f"outputs={outputs!r} is unknown; accepted: ['logits', 'softmax']")
  if protocol not in PROTOCOLS:
    raise ValueError(f'protocol={protocol!r} is unknown; accepted: {list(PROTOCOLS)}')
  if protocol == 'authors' and systematic:
    raise ValueError("protocol='authors' scores the non-systematic code as published; "
                     "use protocol='every_pattern' for the systematic one")
  config, model, variables, _ = runs.load_variables(base_workdir)
  dataset = pipeline.inputs_of(config.data)
  spec = builders.get_spec(dataset)
  splits = pipeline.load_splits(config.data)
  code = codes.make_code('berrut', k, s, image_shape=spec.image_shape, systematic=systematic,
                         nodes=nodes)
  idx_GxK = _groups(len(splits.test_y), k, protocol, groups, seed)
  x_GxK, y_GxK = splits.test_x[idx_GxK], splits.test_y[idx_GxK]
  g = x_GxK.shape[0]
  logits = inference.group_outputs(inference.make_predict(model, dataset), variables, x_GxK,
                                  batch)
  z = inference.batched(inference.make_f_on_coded(model, code, dataset), variables, x_GxK,
                        max(1, batch // code.r))
  encode = jax.jit(partial(inference.encode_raw, code, dataset))
  if outputs == 'softmax':
    logits, z = np.asarray(jax.nn.softmax(logits, -1)), np.asarray(jax.nn.softmax(z, -1))
  decode = jax.jit(code.decode)
  acc_a = float(np.mean(np.argmax(logits, -1) == y_GxK))

  def accuracy(avail, zavail, positions):
    yhat = np.asarray(decode(logits, np.broadcast_to(avail, (g, k)),
                             z, np.broadcast_to(zavail, (g, code.r))))
    return float(np.mean(np.argmax(yhat[:, positions], -1) == y_GxK[:, positions]))

  r = code.r
  none = np.zeros(k, bool)
  if systematic:   # the same patterns and pooling as the trained codes' rows
    acc_none = acc_a
    by_missing = {int(m): v['A_d_top1'] for m, v in metrics.degraded_by_missing(
        code, logits, z, y_GxK).items()}
  elif protocol == 'authors':
    acc_none = accuracy(none, np.ones(r, bool), list(range(k)))
    rng = np.random.default_rng(seed + 1)
    zavail = np.ones((g, r), bool)
    for row in zavail:
      row[rng.choice(r, s, replace=False)] = False
    by_missing = {s: accuracy(none, zavail, list(range(k)))}
  else:
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
                  ('' if nodes == 'authors' else f' [{nodes} nodes]') +
                  ('' if protocol == 'every_pattern' else f', {g} random groups'),
          'dataset': dataset, 'model': config.model, 'k': k, 'r': r, 'stragglers': s,
          'A_a': acc_a, 'acc_none_missing': acc_none, 'A_d_by_missing': by_missing,
          'extra_compute_per_query': s / k, 'workers_per_query': (k + s) / k,
          'encode_us_per_group': enc_us, 'decode_us_per_group': dec_us, 'groups': g,
          'nodes': nodes, 'protocol': protocol}


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
  z = np.zeros((1, code.r, code.parity_width * spec.num_classes), np.float32)
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
  """A_d with m = 1, 2, 3 outputs missing (blank where a row has no such figure: r < m,
  or the authors' protocol, which scores S missing only); A_o from A_d(1)."""
  lines = ['| dataset | F | code | parity model | epochs | k | r | acc, none missing '
           '| A_d 1 missing | A_d 2 missing | A_d 3 missing | A_o(0.05) | A_o(0.1) | A_o(0.2) '
           '| extra compute/query | encode us | decode us |',
           '|' + '---|' * 17]
  fmt = lambda v: '' if v is None else f'{v:.4f}'
  us = lambda v: '' if v is None else f'{v:.0f}'
  for r in rows:
    ad = [r['A_d_by_missing'].get(m) for m in (1, 2, 3)]
    ao = [None if ad[0] is None else (1 - f) * r['acc_none_missing'] + f * ad[0]
          for f in (0.05, 0.1, 0.2)]
    lines.append(f"| {r['dataset']} | {r['model']} | {r['code']} | "
                 f"{r.get('parity_model') or 'none (F on coded queries)'} | "
                 f"{r.get('epochs') or ''} | {r['k']} | {r['r']} | "
                 f"{r['acc_none_missing']:.4f} | " + ' | '.join(map(fmt, ad + ao)) +
                 f" | {r['extra_compute_per_query']:.3f} | {us(r['encode_us_per_group'])} | "
                 f"{us(r['decode_us_per_group'])} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  f = bench.start_table_bench()
  rows = []
  for base in f.base_workdirs.split(','):
    for systematic in (False, True):
      for outputs in f.berrut_outputs.split(','):
        for nodes in f.berrut_nodes.split(','):
          for protocol in f.berrut_protocols.split(','):
            if protocol == 'authors' and systematic:
              continue   # defined for the published, non-systematic code
            rows.append(berrut_row(base, f.k, f.s, systematic, outputs=outputs, nodes=nodes,
                                   protocol=protocol, groups=f.authors_groups))
  for w in filter(None, f.parity_workdirs.split(',')):
    rows.append(parity_row(w))
  report.write_table(f.out, 'codes', rows, markdown(rows))


if __name__ == '__main__':
  flags.DEFINE_string('base_workdirs', None, 'Comma list of trained F workdirs.')
  flags.DEFINE_integer('k', 8, 'K for the Berrut codes.')
  flags.DEFINE_integer('s', 1, 'Stragglers S for the Berrut codes.')
  flags.DEFINE_string('berrut_outputs', 'logits', "F's outputs the Berrut decoder "
                      "interpolates: comma list of 'logits', 'softmax'.")
  flags.DEFINE_string('berrut_nodes', 'authors', "Worker nodes of the Berrut codes: comma "
                      "list of 'authors' (cos(i pi/N), ApproxIFER's scripts), 'second_kind' "
                      "(cos(i pi/(N-1)), pmjax's before 2026-12).")
  flags.DEFINE_string('berrut_protocols', 'every_pattern', "Comma list: 'every_pattern' "
                      "(consecutive test groups, every pattern of 1..S missing) and/or "
                      "'authors' (ApproxIFER's: random groups, S random stragglers each).")
  flags.DEFINE_integer('authors_groups', 10000, "Random groups of the 'authors' protocol "
                       "(ApproxIFER's scripts ran 100).")
  flags.DEFINE_string('parity_workdirs', '', 'Comma list of evaluated parity workdirs.')
  flags.DEFINE_string('out', 'workdirs/codes', 'Output directory.')
  app.run(main)
