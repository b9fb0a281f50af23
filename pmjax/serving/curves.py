"""Throughput-latency curves: one summary per offered load, the saturation point, the
plot, and coded's tail against equal resources' at each load (both benches).

    python -m pmjax.serving.curves DIR [DIR ...]   # a sweep's saturation and ratios again
"""

import json
import os

import numpy as np


def window_rates(records) -> dict:
  """Queries sent and answered per second in the window of the sends (first to last):
  an open loop that keeps up answers about what it is sent in that window; one that
  does not falls behind and answers the rest after it. `client_lag_p99_ms`: how late
  the client itself sent (a loaded client is not an open loop any more)."""
  sends = sorted(r['sent_s'] for r in records if r.get('sent_s') is not None)
  if len(sends) < 2:
    return {'sent_qps': 0.0, 'achieved_qps': 0.0, 'client_lag_p99_ms': None}
  lo, hi = sends[0], sends[-1]
  span = max(hi - lo, 1e-9)
  answered = sum(1 for r in records if r['latency_ms'] is not None
                 and r['sent_s'] + r['latency_ms'] / 1e3 <= hi)
  lags = [r['lag_ms'] for r in records if r.get('lag_ms') is not None]
  return {'sent_qps': (len(sends) - 1) / span, 'achieved_qps': answered / span,
          'client_lag_p99_ms': float(np.percentile(lags, 99)) if lags else None}


def saturation(curve, tolerance=0.9) -> float | None:
  """The highest offered rate a mode keeps up with: no error or lost query and answers/s
  within `tolerance` of the rate actually sent (both in the window of the sends);
  None: not even the first rate."""
  best = None
  for c in curve:
    if c['errors'] or c['lost'] or c['achieved_qps'] < tolerance * c['sent_qps']:
      break
    best = c['offered_qps']
  return best


def versus(curves: dict, mode: str = 'coded', other: str = 'equal') -> list:
  """`mode`'s tail over `other`'s at each offered load both ran: rows of offered q/s,
  whether it is below `mode`'s saturation, queries, and the p99 and p99.9 ratios."""
  if mode not in curves or other not in curves:
    return []
  sat = saturation(curves[mode])
  theirs = {c['offered_qps']: c for c in curves[other]}
  rows = []
  for c in curves[mode]:
    o = theirs.get(c['offered_qps'])
    if o is None or not c.get('p99.9_ms') or not o.get('p99.9_ms'):
      continue
    row = {'offered_qps': c['offered_qps'], 'answered': c['answered'],
           'below_saturation': sat is not None and c['offered_qps'] <= sat,
           'p99_ratio': c['p99_ms'] / o['p99_ms'],
           'p99.9_ratio': c['p99.9_ms'] / o['p99.9_ms']}
    mine, yours = c.get('frontend_latency') or {}, o.get('frontend_latency') or {}
    if mine.get('p99.9_ms') and yours.get('p99.9_ms'):   # the server's own (Ray: ingress)
      row['ingress_p99.9_ratio'] = mine['p99.9_ms'] / yours['p99.9_ms']
    rows.append(row)
  return rows


def print_versus(curves: dict, mode: str = 'coded', other: str = 'equal'):
  rows = versus(curves, mode, other)
  if not rows:
    return
  print(f'| offered q/s | queries | below {mode}\'s saturation | {mode} / {other} p99 | '
        f'{mode} / {other} p99.9 | the same in the ingress, p99.9 |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    ing = r.get('ingress_p99.9_ratio')
    print(f"| {r['offered_qps']:g} | {r['answered']} | {'yes' if r['below_saturation'] else 'no'}"
          f" | {r['p99_ratio']:.2f} | {r['p99.9_ratio']:.2f} | "
          f"{'-' if ing is None else f'{ing:.2f}'} |")


def plot_curves(curves: dict, path: str, title: str):
  """p50 / p99 / p99.9 against the offered load, one line per mode, saturation dotted."""
  from pmjax import plotting  # pylint: disable=g-import-not-at-top
  fig, axes = plotting.pyplot().subplots(1, 3, figsize=(12, 3.6), sharey=True)
  for ax, key in zip(axes, ('median_ms', 'p99_ms', 'p99.9_ms')):
    for mode, curve in curves.items():
      xs = [c['offered_qps'] for c in curve]
      line, = ax.plot(xs, [c[key] for c in curve], 'o-', label=mode)
      sat = saturation(curve)
      if sat is not None:
        ax.axvline(sat, color=line.get_color(), ls=':', lw=1)
    ax.set_title(key.replace('_ms', '').replace('median', 'p50'))
    ax.set_xlabel('offered load (queries/s)')
    ax.set_yscale('log')
  axes[0].set_ylabel('latency (ms)')
  axes[-1].legend(title='dotted: saturation')
  fig.suptitle(title, fontsize=9)
  plotting.save(fig, path)


def write(curves: dict, out_dir: str, title: str) -> dict:
  """DIR/curves.json (each mode's curve and saturation) and DIR/curves.png; prints the
  table, each mode's saturation and coded's and hedge's tails over equal's."""
  res = {m: {'curve': c, 'saturation_qps': saturation(c),
             **({'versus_equal': versus(curves, m)} if m != 'equal' else {})}
         for m, c in curves.items()}
  with open(os.path.join(out_dir, 'curves.json'), 'w') as fh:
    json.dump(res, fh, indent=2)
  plot_curves(curves, os.path.join(out_dir, 'curves.png'), title)
  print('| mode | offered q/s | sent/s | answered/s | client lag p99 ms | median ms | '
        'p99 ms | p99.9 ms | reconstructed | errors |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for mode, curve in curves.items():
    for c in curve:
      lag = c['client_lag_p99_ms']
      print(f"| {mode} | {c['offered_qps']:g} | {c['sent_qps']:.1f} | "
            f"{c['achieved_qps']:.1f} | {'-' if lag is None else f'{lag:.1f}'} | "
            f"{c['median_ms']:.1f} | {c['p99_ms']:.1f} | {c['p99.9_ms']:.1f} | "
            f"{c['frac_reconstructed']:.3f} | {c['errors'] or 0} |")
  for mode, curve in curves.items():
    print(f'saturation ({mode}): {saturation(curve)} q/s')
  for mode in ('coded', 'hedge'):
    print_versus(curves, mode, 'equal')
  return res


def read(out_dir: str) -> dict:
  """{mode: curve} of a sweep's directory (its curves.json, else its summary.json)."""
  path = os.path.join(out_dir, 'curves.json')
  if os.path.exists(path):
    return {m: v['curve'] for m, v in json.load(open(path)).items()}
  path = os.path.join(out_dir, 'summary.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{out_dir} holds no curves.json or summary.json: pass the '
                            '--out of a `cluster_bench --rates` or `serving.bench '
                            '--config.rates` run')
  results = json.load(open(path))['results']
  missing = [m for m, s in results.items() if 'curve' not in s]
  if missing:
    raise ValueError(f'{path}: modes {missing} have no curve (a run without --rates)')
  return {m: s['curve'] for m, s in results.items()}


def main(argv):
  """python -m pmjax.serving.curves DIR [DIR ...]: each sweep's tables again."""
  if len(argv) < 2:
    raise SystemExit('usage: python -m pmjax.serving.curves DIR [DIR ...] (sweep outputs)')
  for out_dir in argv[1:]:
    try:
      c = read(out_dir)
    except (OSError, ValueError, KeyError) as e:
      raise SystemExit(f'error: {e}') from None
    print(f'## {out_dir}: saturation ' + ', '.join(f'{m} {saturation(v)} q/s'
                                                  for m, v in c.items()))
    for mode in ('coded', 'hedge'):
      print_versus(c, mode, 'equal')


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  main(sys.argv)
