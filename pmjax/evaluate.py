"""Evaluate a workdir's best checkpoints: A_a, A_d (every group, every erased position), A_o.

    python -m pmjax.evaluate --workdir=W [--split=test]

For a parity workdir: loads F_P's best checkpoint and F's (from the run's
base_workdir), evaluates every group of k consecutive examples of the split
with each position erased in turn, and writes W/results.json with dataset,
model, code, code_description (its variant, e.g. collage's cell size), label_weight
(the parity loss's true-label term, 0: MSE only), k, r, epochs, A_a, A_a_top5,
A_d_top1, A_d_top5, recon_top1, A_d_by_position and A_o (f_u -> overall accuracy)
(a localisation run: A_a, A_a_iou, A_d_iou50, A_d_iou, recon_iou50, recon_iou: IoU >= 0.5 fractions and
mean IoUs); `epochs` is the number of
epochs trained, `best_epoch` the one whose checkpoint was evaluated. For a base workdir: A_a
only. For a workdir of stage `all`: evaluates W/parity, writes W/results.json.
`--split=val` writes W/results_val.json instead. `--sweep=ROOT` summarises
every evaluated workdir below ROOT (see pmjax.report).
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
import jax
import jax.numpy as jnp

from pmjax import codes, inference, metrics, runs, tasks
from pmjax.data import pipeline


def evaluate_workdir(workdir: str, split: str = 'test', batch_size: int = 1000,
                     write: bool = True, verbose: bool = True) -> dict:
  if split not in ('val', 'test'):
    raise ValueError(f"split={split!r} is unknown; accepted: 'val', 'test'")
  config = runs.read_config(workdir)
  if config.stage == 'base_and_parity':
    results = evaluate_workdir(os.path.join(workdir, 'parity'), split, batch_size,
                               write, verbose=False)
    return _finish(workdir, results, write, verbose)

  run = runs.load_run(workdir, 'best')
  splits = pipeline.load_splits(config.data)
  x, y = getattr(splits, f'{split}_x'), getattr(splits, f'{split}_y')
  logits = inference.batched(inference.make_predict(run.base_model, run.dataset),
                             run.base_vars, x, batch_size)
  base_dir = workdir if config.stage == 'base' else config.base_workdir
  results = {'workdir': os.path.abspath(workdir), 'split': split,
             'dataset': config.data.name, 'model': config.model,
             'stage': config.stage, 'num_examples': int(x.shape[0])}
  score = tasks.task_score(config)
  results.update(metrics.accuracy_metrics(logits, y, score))   # A_a, A_a_top5 / A_a_iou
  if run.code is None:
    results.update(epochs=_epochs_trained(workdir, run.epoch), best_epoch=run.epoch)
    return _finish(workdir, results, write, verbose)

  x_GxK, y_GxK = inference.fixed_groups(x, y, config.code.k)
  code, z = run.parity_outputs(batch_size)(x_GxK)
  logits_GxKxC = logits[:x_GxK.shape[0] * code.k].reshape(*y_GxK.shape[:2], -1)
  degraded = metrics.degraded_metrics(code, jnp.asarray(logits_GxKxC), jnp.asarray(z),
                                      jnp.asarray(y_GxK), score)
  parity_name = runs.model_names(config)[1]
  if run.learned:
    parity_name = ('learned encoder/decoder + ' + (f'trained copy of F ({config.model})'
                                                   if run.train_parity else 'frozen F'))
  results.update({'parity_model': parity_name, 'code': code.name,
                  # The variant (e.g. collage's cell size) and the parity loss's
                  # true-label term, so that two runs of one code are told apart.
                  'code_description': codes.describe_code(
                      config.code.name, code.r, codes.code_params(config.code)),
                  'label_weight': tasks.label_weight(config),
                  'k': code.k, 'r': code.r, 'epochs': _epochs_trained(workdir, run.epoch),
                  'best_epoch': run.epoch, 'base_workdir': os.path.abspath(base_dir),
                  'num_groups': int(x_GxK.shape[0]), **degraded})
  results['A_o'] = metrics.overall_accuracy(results['A_a'],
                                            results[f'A_d_{score.keys[0]}'])
  if code.r > 1:
    results['A_d_by_missing'] = metrics.degraded_by_missing(
        code, jnp.asarray(logits_GxKxC), jnp.asarray(z), jnp.asarray(y_GxK), score)
  return _finish(workdir, results, write, verbose)


def _epochs_trained(workdir, default):
  rows = metrics.read_metrics(workdir)
  return rows[-1]['epoch'] if rows else default


def _finish(workdir, results, write, verbose):
  if jax.process_index() != 0:  # one writer in multi-process runs
    write = verbose = False
  if verbose:  # first: a workdir that cannot be written still shows its numbers
    print(format_table(results), flush=True)
  if write:
    name = 'results.json' if results['split'] == 'test' else f"results_{results['split']}.json"
    path = os.path.join(workdir, name)
    try:
      with open(path + '.tmp', 'w') as f:
        json.dump(results, f, indent=2)
      os.replace(path + '.tmp', path)
    except OSError as e:
      raise ResultsNotWrittenError(
          f'could not write {path} ({e.strerror or e}); the results are printed above. '
          f'To fix: make {workdir} writable, or call '
          f'pmjax.evaluate.evaluate_workdir(..., write=False) to only compute them.') from None
  return results


class ResultsNotWrittenError(OSError):
  """The results were computed (and printed) but could not be saved."""


def format_table(results: dict) -> str:
  rows = [('dataset', results['dataset']), ('model', results['model'])]
  if 'code' in results:
    description = results.get('code_description') or results['code']
    rows.append(('code', f"{description} (k={results['k']}, r={results['r']})"))
    if results.get('label_weight'):
      rows.append(('parity loss', 'MSE ' + tasks.label_term(results['label_weight'])))
  rows.append(('epochs', f"{results['epochs']} (best: {results['best_epoch']})"))
  rows += [(key, f'{v:.4f}') for key, v in results.items() if key.startswith('A_a')]
  if 'A_d_by_position' in results:   # a parity run: every criterion of its score
    def label(key):  # 'A_d_top1' -> 'A_d top-1'
      head, _, criterion = key.rpartition('_')
      return f"{head} {criterion.replace('top', 'top-')}"
    rows += [(label(key), f'{v:.4f}') for key, v in results.items()
             if key.startswith(('A_d_', 'recon_')) and isinstance(v, float)]
    rows.append(('A_d by position', ' '.join(f'{v:.4f}' for v in results['A_d_by_position'])))
    rows += [(f'A_o(f_u={f})', f'{v:.4f}') for f, v in results['A_o'].items()]
  width = max(len(r[0]) for r in rows)
  return '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if flags.FLAGS.sweep:
    from pmjax import report  # pylint: disable=g-import-not-at-top
    report.summarize_sweep(flags.FLAGS.sweep, flags.FLAGS.plots_dir or None)
    return
  if flags.FLAGS.workdir is None:
    raise app.UsageError('--workdir (one run) or --sweep (a tree of runs) is required')
  from pmjax import cli  # pylint: disable=g-import-not-at-top
  with cli.user_errors(ResultsNotWrittenError):
    evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.split, flags.FLAGS.batch_size)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A pmjax training workdir.')
  flags.DEFINE_enum('split', 'test', ['val', 'test'], 'Split to evaluate.')
  flags.DEFINE_integer('batch_size', 1000, 'Evaluation batch size.')
  flags.DEFINE_string('sweep', None, 'Summarise every evaluated workdir below this root.')
  flags.DEFINE_string('plots_dir', '', 'With --sweep: where the plots go (default ROOT/plots).')
  app.run(main)
