"""Expand a grid into runs: base once per (dataset, model), then every parity run on it.

    python launch/sweep.py --root=workdirs/grid --datasets=mnist,fashion_mnist --models=mlp \
        --ks=2,3,4 --codes=sum,concat --epochs=100 --base_epochs=30 [--print_only]

Workdirs: ROOT/<dataset>/<model>/base and ROOT/<dataset>/<model>/<code>_k<k>. A run
whose workdir already holds results.json for the asked epochs is skipped (the
sweep is resume-safe: an interrupted run resumes from its checkpoint). Runs go
one after another here, or `--print_only` prints the commands for a cluster
(each parity command after its base). Finally `python -m pmjax.evaluate
--sweep=ROOT` writes ROOT/summary.{md,json} and the plots.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys


def complete(workdir, epochs):
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get('epochs') == epochs


def commands(a):
  out = []
  for dataset in a.datasets.split(','):
    for model in a.models.split(','):
      base = os.path.join(a.root, dataset, model, 'base')
      train = [sys.executable, '-m', 'pmjax.train']
      flags = ['--config.progress_bar=False'] + a.extra  # overrides come after --config
      out.append((base, a.base_epochs, train + [
          f'--config=configs/{dataset}.py:stage=base,model={model},base_epochs={a.base_epochs}',
          f'--workdir={base}'] + flags))
      for code in a.codes.split(','):
        for k in a.ks.split(','):
          w = os.path.join(a.root, dataset, model, f'{code}_k{k}')
          out.append((w, a.epochs, train + [
              f'--config=configs/{dataset}.py:stage=parity,model={model},code={code},k={k},'
              f'epochs={a.epochs}', f'--config.base_workdir={base}', f'--workdir={w}'] + flags))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--root', required=True)
  p.add_argument('--datasets', default='mnist,fashion_mnist')
  p.add_argument('--models', default='mlp')
  p.add_argument('--ks', default='2,3,4')
  p.add_argument('--codes', default='sum,concat')
  p.add_argument('--epochs', type=int, default=100)
  p.add_argument('--base_epochs', type=int, default=30)
  p.add_argument('--print_only', action='store_true')
  p.add_argument('extra', nargs='*', help='extra --config.x=y flags for every run')
  a = p.parse_args()
  for workdir, epochs, cmd in commands(a):
    evaluate = [sys.executable, '-m', 'pmjax.evaluate', f'--workdir={workdir}']
    if a.print_only:
      print(shlex.join(cmd) + ' && ' + shlex.join(evaluate))
      continue
    if complete(workdir, epochs):
      print(f'skip (complete): {workdir}', flush=True)
      continue
    print(f'run: {workdir}', flush=True)
    subprocess.run(cmd, check=True)
    subprocess.run(evaluate, check=True, stdout=subprocess.DEVNULL)
  if not a.print_only:
    subprocess.run([sys.executable, '-m', 'pmjax.evaluate', f'--sweep={a.root}'], check=True)


if __name__ == '__main__':
  main()
