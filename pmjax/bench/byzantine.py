"""Accuracy with a wrong (Byzantine) output in every group, false alarms without one.

    python -m pmjax.bench.byzantine --base_workdir=W_F --parity_workdirs=W_COLLAGE \
        [--k=8] [--adversaries=noise,random,scaled] [--false_alarm=0.01] \
        [--groups=1000] [--e_max=2] [--out=DIR]

Berrut (ApproxIFER, non-systematic, its worker nodes) with its error-locating decoder
(`pmjax.codes.byzantine.berrut_robust_decode`), as its authors ran it
(`Workstation-MNIST-Approximate-error-locator.py`, `Plot_K`): N = 2K + 2 e_max + 1
workers, no stragglers, `--groups` random groups of K test images, the wrong output at
a random worker; beside it the plain Berrut decoder on the same outputs. Accuracy of
the K decoded answers against the true labels.

`collage` runs (their first 1..r parity models): every consecutive test group, every
output in, one of the K + r outputs wrong (drawn at random per group, seeded); accuracy
of the K answers with no check and with the parity-consistency check
(`byzantine.collage_check`, threshold calibrated on the clean validation groups for
`--false_alarm`); the measured false-alarm rate on clean test groups, the share of
wrong outputs flagged and the share blamed correctly.

Adversaries (`byzantine.corrupt`): 'noise' (ApproxIFER's: + N(0, 100^2)), 'random'
(fresh logits with the spread of F's), 'scaled' (the right logits x 10).
Writes DIR/byzantine.json and DIR/byzantine.md.
"""

from __future__ import annotations

from absl import app, flags
import jax
import numpy as np

from pmjax import bench, codes, config_utils, inference, report, runs
from pmjax.codes import byzantine as bz
from pmjax.data import builders, pipeline


def _f_logits(run_or_base, x_GxK, batch=1000):
  config, model, variables, _ = run_or_base
  predict = inference.make_predict(model, pipeline.inputs_of(config.data))
  return inference.group_outputs(predict, variables, x_GxK, batch)


def _accuracy(yhat_GxKxC, y_GxK):
  return float(np.mean(np.argmax(np.asarray(yhat_GxKxC), -1) == y_GxK))


def berrut_rows(base_workdir, k, adversaries, groups, e_max, seed=0, batch=500):
  """ApproxIFER's robust decoder and the plain one, 0 and 1 wrong outputs per group."""
  base = runs.load_variables(base_workdir)
  config, model = base[0], base[1]
  dataset = pipeline.inputs_of(config.data)
  spec = builders.get_spec(dataset)
  splits = pipeline.load_splits(config.data)
  n = bz.approxifer_workers(k, e_max)
  code = codes.make_code('berrut', k, n - k, image_shape=spec.image_shape, systematic=False)
  rng = np.random.default_rng(seed)
  idx = np.stack([np.sort(rng.choice(len(splits.test_y), k, replace=False))
                  for _ in range(groups)])
  x_GxK, y_GxK = splits.test_x[idx], splits.test_y[idx]
  clean = _f_logits(base, x_GxK)
  z = inference.batched(inference.make_f_on_coded(model, code, dataset), base[2], x_GxK,
                        max(1, batch // n))                                       # G x N x C
  returned = np.arange(n)
  plain = jax.jit(code.decode)
  none_k, all_n = np.zeros((groups, k), bool), np.ones((groups, n), bool)
  std = float(np.std(clean))
  dummy_y = np.zeros((groups, k, z.shape[-1]), np.float32)   # no data slot is computed
  rows = []
  for kind in ('none',) + tuple(adversaries):
    zz = z.copy()
    if kind != 'none':
      wrong = rng.integers(0, n, groups)
      zz[np.arange(groups), wrong] = bz.corrupt(zz[np.arange(groups), wrong], kind, rng,
                                               logit_std=std)
    robust, _ = bz.berrut_robust_decode(zz, returned, k, n, e_max, n_errors=1)
    rows.append({'code': f'berrut (ApproxIFER, N = 2K + 2 e_max + 1 = {n})',
                 'dataset': dataset, 'F': config.model, 'A_a': _accuracy(clean, y_GxK),
                 'adversary': kind, 'groups': groups, 'workers': n,
                 'extra_workers': n - k,
                 'acc_plain_decoder': _accuracy(plain(dummy_y, none_k, zz, all_n), y_GxK),
                 'acc_robust_decoder': _accuracy(robust, y_GxK)})
  return rows


def _collage_outputs(workdir, splits_wanted=('val', 'test'), batch=1000):
  """(run, {split: (F's outputs y_GxKxC, parity outputs z_GxRx(KC), labels_GxK)}) over
  the consecutive groups of a collage workdir's splits."""
  run = runs.load_run(workdir, 'best')
  config = run.config
  if config.code.name != 'collage':
    raise config_utils.ConfigError(
        f'{workdir} trains code {config.code.name!r}; the consistency check is the collage '
        f"code's (train one with code=collage)")
  splits = pipeline.load_splits(config.data)
  out = {}
  for name in splits_wanted:
    x, y = getattr(splits, f'{name}_x'), getattr(splits, f'{name}_y')
    x_GxK, y_GxK = inference.fixed_groups(x, y, config.code.k)
    base = (config, run.base_model, run.base_vars, None)
    out[name] = (_f_logits(base, x_GxK), run.parity_outputs(batch)(x_GxK)[1], y_GxK)
  return run, out


def make_check(workdir, false_alarm: float):
  """The serving loop's check for a collage workdir: `collage_check` with the threshold
  calibrated on its clean validation groups for `false_alarm`."""
  _, out = _collage_outputs(workdir, ('val',))
  yv, zv, _ = out['val']
  tau = bz.calibrate_threshold(yv, zv, false_alarm)
  return lambda y, avail, z, zavail: jax.device_get(bz.collage_check(y, avail, z, zavail, tau))


def collage_rows(workdir, adversaries, false_alarm, seed=0, batch=1000):
  run, out = _collage_outputs(workdir, batch=batch)
  config = run.config
  k, r_full = config.code.k, config.code.r
  (yv, zv, _), (yt, zt, labels) = out['val'], out['test']
  g = yt.shape[0]
  std = float(np.std(yt))
  cell = codes.code_params(config.code).get('cell', 'fit')
  cell_label = '' if cell == 'fit' else f', {cell}-size cells'   # a 'half' run apart
  rows = []
  for r in range(1, r_full + 1):
    tau = bz.calibrate_threshold(yv, zv[:, :r], false_alarm)
    zr = zt[:, :r]
    all_k, all_r = np.ones((g, k), bool), np.ones((g, r), bool)
    clean = jax.device_get(bz.collage_check(yt, all_k, zr, all_r, tau))
    rng = np.random.default_rng(seed)
    for kind in ('none',) + tuple(adversaries):
      y2, z2 = yt.copy(), zr.copy()
      wrong = rng.integers(0, k + r, g) if kind != 'none' else np.full(g, -1)
      for i in range(g):
        if 0 <= wrong[i] < k:
          y2[i, wrong[i]] = bz.corrupt(y2[i, wrong[i]][None], kind, rng, logit_std=std)[0]
        elif wrong[i] >= k:
          cells = z2[i, wrong[i] - k].reshape(k, -1)
          z2[i, wrong[i] - k] = bz.corrupt(cells, kind, rng, logit_std=std).reshape(-1)
      res = jax.device_get(bz.collage_check(y2, all_k, z2, all_r, tau))
      hit = wrong >= 0
      blamed = np.where(res['blamed_data'] >= 0, res['blamed_data'],
                        np.where(res['blamed_parity'] >= 0, k + res['blamed_parity'], -1))
      rows.append({'code': f'collage{cell_label}, r={r}' + (f' (first {r} of {r_full})'
                                                      if r < r_full else ''),
                   'dataset': config.data.name, 'F': config.model,
                   'A_a': _accuracy(yt, labels), 'adversary': kind, 'groups': g,
                   'workers': k + r, 'extra_workers': r, 'threshold': tau,
                   'acc_plain_decoder': _accuracy(y2, labels),
                   'acc_robust_decoder': _accuracy(res['yhat'], labels),
                   'false_alarm_test': float(np.mean(clean['flagged'])),
                   'flagged': float(np.mean(res['flagged'])),
                   'blamed_right': float(np.mean(blamed[hit] == wrong[hit])) if hit.any()
                                   else None})
  return rows


def markdown(rows):
  lines = ['| dataset (F, A_a) | code | workers (extra) | wrong output | acc, no check '
           '(plain decoder) | acc, robust decoding | groups flagged | wrong output blamed '
           '| false alarms (clean test) |', '|' + '---|' * 9]
  pct = lambda v: '' if v is None else f'{100 * v:.1f}%'
  for r in rows:
    lines.append(f"| {r['dataset']} ({r['F']}, {r['A_a']:.4f}) | {r['code']} | "
                 f"{r['workers']} ({r['extra_workers']}) | {r['adversary']} | "
                 f"{r['acc_plain_decoder']:.4f} | **{r['acc_robust_decoder']:.4f}** | "
                 f"{pct(r.get('flagged'))} | {pct(r.get('blamed_right'))} | "
                 f"{pct(r.get('false_alarm_test'))} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  f = bench.start_table_bench()
  adversaries = tuple(filter(None, f.adversaries.split(',')))
  for a in adversaries:
    if a not in bz.ADVERSARIES:
      raise app.UsageError(f'--adversaries: {a!r} is unknown; accepted: {list(bz.ADVERSARIES)}')
  rows = berrut_rows(f.base_workdir, f.k, adversaries, f.groups, f.e_max)
  for w in filter(None, f.parity_workdirs.split(',')):
    rows += collage_rows(w, adversaries, f.false_alarm)
  report.write_table(f.out, 'byzantine', rows, markdown(rows))


if __name__ == '__main__':
  flags.DEFINE_string('base_workdir', None, 'The trained F workdir (Berrut rows).')
  flags.DEFINE_string('parity_workdirs', '', 'Comma list of collage workdirs on that F.')
  flags.DEFINE_integer('k', 8, 'K for the Berrut code.')
  flags.DEFINE_string('adversaries', 'noise,random,scaled', 'Comma list of wrong outputs.')
  flags.DEFINE_float('false_alarm', 0.01, 'False-alarm rate the threshold is set for.')
  flags.DEFINE_integer('groups', 1000, "Random groups for Berrut (ApproxIFER ran 100).")
  flags.DEFINE_integer('e_max', 2, "ApproxIFER's e_max (their experiment: 2).")
  flags.DEFINE_string('out', 'workdirs/byzantine', 'Output directory.')
  flags.mark_flag_as_required('base_workdir')
  app.run(main)
