"""The K=8 goal table: our systematic codes against the faithful Berrut code (ApproxIFER)
on the same F, for every number of stragglers S, with the extra compute.

    python -m pmjax.bench.goal_table --base_workdirs=W_F1,W_F2 \
        --parity_workdirs=W1,W2 [--k=8] [--s=1,2,3] [--authors_groups=10000] [--out=DIR]

For each F (a base workdir) and each S:

- Berrut, non-systematic as published, ApproxIFER's worker nodes: accuracy of the
  decoded answers with S of the K+S workers missing, in ApproxIFER's protocol (random
  groups of K test images, S random stragglers each: `code_table.berrut_row`) and
  over every pattern of S missing workers on consecutive test groups;
- each parity workdir trained on that F, with the first S of its r parity models
  (S <= r; allowed only where the first S parities' targets are those of the same code
  built with r = S, checked on random outputs: `collage`, whose parity models answer
  every cell independently, qualifies; a `linear` run does not, its coefficients
  depend on r): A_d with S data outputs missing and every parity in (the answers a
  group had to rebuild, every such pattern), and pooled over every pattern of S
  missing among the K+S outputs that misses a data output (`metrics.degraded_by_missing`).

Beside it, the accuracy of all K answers of a group with S data outputs missing (ours:
K - S of them F's own, exact; Berrut's: every answer interpolated, which is what
ApproxIFER's protocol scores).

Compute: FLOPs of one parity model on one coded query / FLOPs of F on one query, by
XLA's cost analysis (`codec_cost.forward_flops`); Berrut's extra workers each run F
(1.0). Beside it, the coded query's size (pixels) over one query's: 1 for Berrut and
most codes, 2 for a K=8 `collage` with cell='half'. The margin is ours minus the better
of Berrut's two protocols, in points; the goal is >= +5 at every (dataset, S). Writes
DIR/goal.json and DIR/goal.md, and the training curves beside Berrut's figures,
DIR/goal_curves.png (`curves`).
"""

from __future__ import annotations

import os

from absl import app, flags
import jax.numpy as jnp
import numpy as np

from pmjax import bench, codes, inference, metrics, models, plotting, report, runs, tasks
from pmjax.bench import code_table, codec_cost
from pmjax.data import builders, pipeline


def _flops(model, variables, shape):
  return codec_cost.forward_flops(model, variables, shape)


def base_flops(base_workdir) -> float:
  config, model, variables, _ = runs.load_variables(base_workdir)
  return _flops(model, variables, builders.get_spec(config.data.name).image_shape)


def sub_code(config, s):
  """The code of a parity run's config built with r = s, if its first s parity targets
  are the run's (checked on random outputs); else None."""
  spec = builders.get_spec(config.data.name)
  params = codes.code_params(config.code)
  full = runs.make_code(config)
  try:
    sub = codes.make_code(config.code.name, config.code.k, s, image_shape=spec.image_shape,
                          **params)
  except ValueError:
    return None
  y = jnp.asarray(np.random.default_rng(0).normal(size=(2, full.k, spec.num_classes)),
                  jnp.float32)
  if s > full.r or not np.allclose(full.target(y)[:, :s], sub.target(y), atol=1e-5):
    return None
  return sub


def parity_rows(workdir, s_list, batch=1000):
  """Rows of one parity workdir, one per S it can serve (its first S parity models)."""
  run = runs.load_run(workdir, 'best')
  config = run.config
  splits = pipeline.load_splits(config.data)
  x_GxK, y_GxK = inference.fixed_groups(splits.test_x, splits.test_y, config.code.k)
  g, k = y_GxK.shape
  logits = inference.group_outputs(inference.make_predict(run.base_model, run.dataset),
                                  run.base_vars, x_GxK, batch)
  _, z = run.parity_outputs(batch)(x_GxK)
  shape = builders.get_spec(config.data.name).image_shape
  query_shape = codes.coded_query_shape(run.code, shape)   # what each parity model takes
  slot_vars = run.parity_predicts()[1]     # one parity model's variables
  one = run.parity_model.base if isinstance(run.parity_model, models.Stacked) \
      else run.parity_model
  ratio = _flops(one, slot_vars[0], query_shape) / _flops(run.base_model, run.base_vars, shape)
  rows_m = metrics.read_metrics(workdir)
  epochs = rows_m[-1]['epoch'] if rows_m else None
  rows = []
  for s in s_list:
    code = sub_code(config, s)
    if code is None:
      continue
    by_m = metrics.degraded_by_missing(code, jnp.asarray(logits), jnp.asarray(z[:, :s]),
                                       jnp.asarray(y_GxK))[str(s)]
    strict = by_m['by_kind'][f'{s} data missing, {s} of {s} parities in']
    acc_a = float(np.mean(np.argmax(logits, -1) == y_GxK))
    rows.append({'dataset': config.data.name, 'F': config.model, 'A_a': acc_a, 'S': s,
                 # All K answers of a group with S data outputs missing, every pattern:
                 # each position is available in (K-S)/K of the patterns (F's own answer).
                 'all_answers_S_missing': ((k - s) * acc_a + s * strict) / k,
                 'code': codes.describe_code(config.code.name, s,
                                             codes.code_params(config.code)),
                 'parity_model': runs.model_names(config)[1],
                 'copies': f'first {s} of the run\'s r={config.code.r}' if s < config.code.r
                           else f'all {s}',
                 # The parity loss: MSE to F's outputs, + w x a true-label cross-entropy.
                 'label_weight': tasks.label_weight(config),
                 'epochs': epochs, 'best_epoch': run.epoch,
                 'flops_ratio_per_extra_worker': ratio, 'A_d_S_data_missing': strict,
                 # The coded query's size (pixels) over one query's: Berrut's is 1.
                 'query_size_ratio': float(np.prod(query_shape) / np.prod(shape)),
                 'A_d_pooled_S_missing': by_m['A_d_top1'], 'groups': g,
                 'workdir': os.path.abspath(workdir),
                 'base_workdir': os.path.abspath(config.base_workdir)})
  return rows


def berrut_rows(base_workdir, k, s, authors_groups):
  out = {}
  for protocol in ('authors', 'every_pattern'):
    row = code_table.berrut_row(base_workdir, k, s, systematic=False, protocol=protocol,
                                groups=authors_groups)
    out[protocol] = row['A_d_by_missing'][s]
    out['A_a'] = row['A_a']
  return out


def markdown(rows):
  lines = ['| dataset (F, its accuracy) | S | code | parity model (copies) | epochs (best) | '
           'FLOPs per extra worker / F | coded query / query (size) | ours: A_d, S data '
           'missing | ours: A_d pooled over S of K+S missing | Berrut: ApproxIFER protocol | '
           'Berrut: every pattern | margin (points) | +5? | all K answers, S missing: ours / '
           'Berrut |', '|' + '---|' * 14]
  for r in rows:
    b = r['berrut']
    if r.get('code') is None:   # a cell with no parity run
      lines.append(f"| {r['dataset']} ({r['F']}, {b['A_a']:.4f}) | {r['S']} | - | - | - | 1.00 "
                   f"(Berrut) | 1 (Berrut) | | | {b['authors']:.4f} | {b['every_pattern']:.4f} | "
                   f"| no run | |")
      continue
    margin = 100 * (r['A_d_S_data_missing'] - max(b['authors'], b['every_pattern']))
    label = f"; {tasks.label_term(r['label_weight'])}" if r.get('label_weight') else ''
    lines.append(
        f"| {r['dataset']} ({r['F']}, {r['A_a']:.4f}) | {r['S']} | {r['code']} | "
        f"{r['parity_model']} ({r['copies']}{label}) | {r['epochs']} ({r['best_epoch']}) | "
        f"{r['flops_ratio_per_extra_worker']:.2f} | {r.get('query_size_ratio', 1.0):g} | "
        f"**{r['A_d_S_data_missing']:.4f}** | "
        f"{r['A_d_pooled_S_missing']:.4f} | {b['authors']:.4f} | {b['every_pattern']:.4f} | "
        f"{margin:+.1f} | {'yes' if margin >= 5 else 'no'} | "
        f"{r['all_answers_S_missing']:.4f} / {b['authors']:.4f} |")
  return '\n'.join(lines)


def curves(rows, out_dir) -> str:
  """DIR/goal_curves.png, one panel per F: each parity run's validation and test A_d
  (all its r parity models) per evaluated epoch, Berrut's A_d at each S as dashed lines
  and ours at each S (the best checkpoint, S data missing) as points at its epoch."""
  plt = plotting.pyplot()
  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    mine = [r for r in rows if r['dataset'] == ds]
    for w in dict.fromkeys(r['workdir'] for r in mine if r.get('code')):
      m = metrics.read_metrics(w)
      for split, style in (('val', ':'), ('test', '-')):
        pts = [(x['epoch'], x[f'{split}_A_d_top1']) for x in m if f'{split}_A_d_top1' in x]
        if pts:
          ax.plot(*zip(*pts), style, label=f'{os.path.basename(w)} {split} A_d (all r)')
    drawn = set()
    for r in mine:
      color = f"C{r['S'] + 2}"
      if r['S'] not in drawn:   # one Berrut line per S (the better of its two protocols)
        drawn.add(r['S'])
        ax.axhline(max(r['berrut']['authors'], r['berrut']['every_pattern']), ls='--',
                   c=color, lw=1, label=f"Berrut S={r['S']}")
      if r.get('code'):
        ax.plot([r['best_epoch']], [r['A_d_S_data_missing']], 'o', c=color,
                label=f"ours S={r['S']} (test, best)")
    ax.set(title=f"{ds} ({mine[0]['F']})", xlabel='epoch', ylabel='A_d top-1')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  return plotting.save(fig, os.path.join(out_dir, 'goal_curves.png'), dpi=110)


def main(argv):
  del argv
  f = bench.start_table_bench()
  s_list = [int(v) for v in f.s.split(',')]
  parity = [row for w in filter(None, f.parity_workdirs.split(','))
            for row in parity_rows(w, s_list)]
  rows = []
  for base in f.base_workdirs.split(','):
    config = runs.read_config(base)
    for s in s_list:
      b = berrut_rows(base, f.k, s, f.authors_groups)
      mine = [dict(r, berrut=b) for r in parity
              if r['base_workdir'] == os.path.abspath(base) and r['S'] == s]
      rows += mine or [{'dataset': config.data.name, 'F': config.model, 'S': s,
                        'code': None, 'berrut': b}]
  report.write_table(f.out, 'goal', rows, markdown(rows))
  curves(rows, f.out)


if __name__ == '__main__':
  flags.DEFINE_string('base_workdirs', None, 'Comma list of trained F workdirs.')
  flags.DEFINE_string('parity_workdirs', '', 'Comma list of parity workdirs on those Fs.')
  flags.DEFINE_integer('k', 8, 'K (queries per group).')
  flags.DEFINE_string('s', '1,2,3', 'Comma list of S (stragglers; our r).')
  flags.DEFINE_integer('authors_groups', 10000, "Random groups of ApproxIFER's protocol.")
  flags.DEFINE_string('out', 'workdirs/goal', 'Output directory.')
  app.run(main)
