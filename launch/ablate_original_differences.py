"""Why pmjax's parity models learn faster than the original trainer: one ablation.

    python launch/ablate_original_differences.py --root=workdirs/ablation \
        [--t7=PATH/mnist/base-mlp/model.t7] [--code=sum] [--k=2] [--epochs=10]

MNIST, ParM's algorithm unchanged (F frozen, F_P = base-mlp, MSE to the code's
target, Adam 1e-3 with weight decay 1e-5, 64 groups per step for k=2). What
differs from the original artifact is varied one factor at a time:
- the input scaling: pmjax standardises with the dataset mean/std
  (`data.scaling='standardize'`); the original feeds ToTensor's [0, 1]
  (`'unit'`);
- F_P's initialisation: Flax's (LeCun normal, zero bias: `mlp`) or the original's
  (`util.util.init_weights`: N(0, 0.01^2) weights, zero biases: `mlp_parm_init`);
- F: trained by pmjax (`configs/mnist.py:stage=base`, on either scaling), or the
  original's own shipped base-mlp (`--t7`, imported by
  launch/import_original_base_mlp.py; it reads [0, 1] inputs; needs PyTorch).
Every parity run has the same seed. Writes ROOT/ablation.{md,json}: test A_d
(top-1, every test group, each position erased) after 1, 2, 5 and `--epochs`
epochs. `--smoke` runs it on tiny synthetic MNIST files (for the tests).
"""

import argparse
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(stage_arg, scaling, a):
  from configs import mnist  # pylint: disable=import-outside-toplevel
  c = mnist.get_config(','.join(filter(None, [stage_arg, 'smoke' if a.smoke else ''])))
  c.data.scaling = scaling
  c.progress_bar = False
  if a.manual_dir:
    c.data.update(dict(manual_dir=a.manual_dir, verify_md5=False, download=False))
  if a.data_dir:
    c.data.data_dir = a.data_dir
  return c


def base_models(a):
  """{label: (workdir, scaling)} of the F's compared."""
  from pmjax import train  # pylint: disable=import-outside-toplevel
  out = {}
  for scaling in ('standardize', 'unit'):
    w = os.path.join(a.root, f'f_pmjax_{scaling}')
    train.train_and_evaluate(_config('stage=base', scaling, a), w)
    out[f'pmjax F ({scaling} inputs)'] = (w, scaling)
  if a.t7:
    w = os.path.join(a.root, 'f_original')
    if not os.path.exists(os.path.join(w, 'config.json')):
      from pmjax import import_base  # pylint: disable=import-outside-toplevel
      spec = importlib.util.spec_from_file_location(
          'import_original_base_mlp', os.path.join(REPO, 'launch', 'import_original_base_mlp.py'))
      original = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(original)
      import_base.import_base_variables(
          _config('stage=base', 'unit', a), w,
          {'params': original.base_mlp_params(original.read_state_dict(a.t7))})
    out['original F (unit inputs)'] = (w, 'unit')
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--root', required=True)
  p.add_argument('--t7', default='', help="the original's mnist/base-mlp/model.t7")
  p.add_argument('--code', default='sum')
  p.add_argument('--k', type=int, default=2)
  p.add_argument('--epochs', type=int, default=10)
  p.add_argument('--smoke', action='store_true')
  p.add_argument('--manual_dir', default='')
  p.add_argument('--data_dir', default='')
  a = p.parse_args()
  sys.path.insert(0, REPO)
  from pmjax import metrics, report, train  # pylint: disable=import-outside-toplevel
  rows = []
  for f_label, (base, scaling) in base_models(a).items():
    for parity_model, init in (('mlp', 'Flax (LeCun normal)'),
                               ('mlp_parm_init', 'original (N(0, 0.01))')):
      w = os.path.join(a.root, f'{os.path.basename(base)}__{parity_model}')
      c = _config(f'stage=parity,code={a.code},k={a.k},epochs={a.epochs},'
                  f'parity_model={parity_model}', scaling, a)
      c.base_workdir = base
      train.train_and_evaluate(c, w)
      by_epoch = {r['epoch']: r.get('test_A_d_top1') for r in metrics.read_metrics(w)}
      rows.append({'F': f_label, 'inputs': scaling, 'F_P init': init, 'workdir': w,
                   'test_A_d_by_epoch': by_epoch})
  epochs = sorted({e for e in (1, 2, 5, a.epochs) if e <= a.epochs})
  lines = ['| F | inputs | F_P initialisation | ' +
           ' | '.join(f'A_d epoch {e}' for e in epochs) + ' |',
           '|' + '---|' * (3 + len(epochs))]
  for r in rows:
    lines.append(f"| {r['F']} | {r['inputs']} | {r['F_P init']} | " + ' | '.join(
        f"{r['test_A_d_by_epoch'][e]:.4f}" for e in epochs) + ' |')
  report.write_table(a.root, 'ablation', rows, '\n'.join(lines))


if __name__ == '__main__':
  main()
