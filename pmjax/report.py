"""Summaries of many workdirs: one table (markdown + JSON) and plots.

    python -m pmjax.evaluate --sweep=ROOT [--plots_dir=docs/ROOT_NAME]

Collects every `results.json` below ROOT (written by `pmjax.evaluate`), and
every parity run's `metrics.jsonl`, into ROOT/summary.md, ROOT/summary.json and
three plots: A_d vs k per dataset and code, A_o(f_u) curves, training curves.
"""

from __future__ import annotations

import json
import os

import numpy as np

from pmjax import metrics, plotting


def collect(root: str) -> list:
  rows = []
  for dirpath, _, files in sorted(os.walk(root)):
    if 'results.json' in files and 'config.json' in files:
      with open(os.path.join(dirpath, 'results.json')) as f:
        r = json.load(f)
      r['workdir'] = os.path.relpath(dirpath, root)
      rows.append(r)
  return rows


def criteria(r: dict) -> list:
  """The A_d keys of a parity run's results, primary first: ['A_d_top1', 'A_d_top5'] for
  classification, ['A_d_iou50', 'A_d_iou'] for localisation; [] for a base run."""
  return [key for key, v in r.items() if key.startswith('A_d_') and isinstance(v, float)]


def markdown(rows: list) -> str:
  head = '| dataset | model | code | k | epochs | A_a | A_d | A_d 2nd | recon | A_o(0.1) |'
  lines = [head, '|' + '---|' * 10]
  for r in sorted(rows, key=lambda r: (r['dataset'], r['model'], r.get('code', ''),
                                       r.get('k', 0))):
    keys = criteria(r)
    if not keys:
      lines.append(f"| {r['dataset']} | {r['model']} | (base) | | {r['epochs']} | "
                   f"{r['A_a']:.4f} | | | | |")
      continue
    second = f'{r[keys[1]]:.4f}' if len(keys) > 1 else ''
    recon = r.get('recon_' + keys[0][len('A_d_'):])
    lines.append(f"| {r['dataset']} | {r['model']} | {r['code']} | {r['k']} | {r['epochs']} | "
                 f"{r['A_a']:.4f} | {r[keys[0]]:.4f} | {second} | "
                 f"{'' if recon is None else f'{recon:.4f}'} | {r['A_o']['0.1']:.4f} |")
  lines.append('\nA_d: top-1 accuracy (a localisation run: boxes at IoU >= 0.5); A_d 2nd: '
               'top-5 (mean IoU); recon: agreement with F by the first criterion.')
  return '\n'.join(lines)


def plots(rows: list, root: str, out_dir: str) -> list:
  plt = plotting.pyplot()
  parity = [r for r in rows if criteria(r)]
  datasets = sorted({r['dataset'] for r in parity})
  if not parity:
    return []
  written = []

  def grid(n):
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False)
    return fig, axes[0]

  fig, axes = grid(len(datasets))
  for ax, ds in zip(axes, datasets):
    for key in sorted({(r['model'], r['code']) for r in parity if r['dataset'] == ds}):
      pts = sorted((r['k'], r[criteria(r)[0]]) for r in parity
                   if r['dataset'] == ds and (r['model'], r['code']) == key)
      ax.plot(*zip(*pts), 'o-', label=f'{key[0]} {key[1]}')
    ax.set(title=ds, xlabel='k', ylabel='A_d (test; top-1, or IoU >= 0.5)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  written.append(plotting.save(fig, os.path.join(out_dir, 'ad_vs_k.png'), dpi=110))

  fig, axes = grid(len(datasets))
  f_us = np.linspace(0, 0.5, 11)
  for ax, ds in zip(axes, datasets):
    for r in sorted((r for r in parity if r['dataset'] == ds),
                    key=lambda r: (r['code'], r['k'])):
      ax.plot(f_us, (1 - f_us) * r['A_a'] + f_us * r[criteria(r)[0]],
              label=f"{r['code']} k={r['k']}")
    ax.set(title=ds, xlabel='f_u (fraction of answers decoded)', ylabel='A_o')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
  written.append(plotting.save(fig, os.path.join(out_dir, 'ao_vs_fu.png'), dpi=110))

  fig, axes = grid(len(datasets))
  for ax, ds in zip(axes, datasets):
    for r in sorted((r for r in parity if r['dataset'] == ds),
                    key=lambda r: (r['code'], r['k'])):
      key = 'test_' + criteria(r)[0]
      m = [x for x in metrics.read_metrics(os.path.join(root, r['workdir'])) if key in x]
      ax.plot([x['epoch'] for x in m], [x[key] for x in m],
              label=f"{r['code']} k={r['k']}")
    ax.set(title=ds, xlabel='epoch', ylabel='test A_d (top-1, or IoU >= 0.5)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
  written.append(plotting.save(fig, os.path.join(out_dir, 'training_curves.png'), dpi=110))
  return written


def write_table(directory: str, name: str, rows: list, table: str):
  """DIR/NAME.json (the rows) and DIR/NAME.md (the markdown table), then prints the table."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f'{name}.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(directory, f'{name}.md'), 'w') as f:
    f.write(table + '\n')
  print(table)


def summarize_sweep(root: str, plots_dir: str | None = None) -> dict:
  rows = collect(root)
  if not rows:
    raise FileNotFoundError(f'no results.json below {root}; run `python -m pmjax.evaluate '
                            f'--workdir=W` on the runs first (launch/sweep.py does)')
  write_table(root, 'summary', rows, markdown(rows))
  written = plots(rows, root, plots_dir or os.path.join(root, 'plots'))
  for p in written:
    print('wrote', p)
  return {'rows': rows, 'plots': written}
