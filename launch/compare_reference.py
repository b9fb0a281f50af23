"""Side-by-side test A_d of our parity runs and the original PyTorch trainer.

    python launch/compare_reference.py --sum=W_SUM --concat=W_CONCAT [--reference=FILE]

Reads our per-epoch `metrics.jsonl` and the original trainer's curves from
../shared/reference/parm_pytorch_cpu.md (MNIST base-mlp, k=2: section A is
`sum`, section B is `concat`) and prints a markdown table at the reference's
epochs.
"""

import argparse
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REFERENCE = os.path.join(HERE, '..', '..', 'shared', 'reference', 'parm_pytorch_cpu.md')


def reference_curves(path):
  """{section: {epoch: (test degraded top-1, test reconstruction top-1)}} from the markdown."""
  curves, section = {}, None
  with open(path) as f:
    for line in f:
      m = re.match(r'### ([A-Z]):', line)
      if m:
        section = m.group(1)
        curves[section] = {}
      m = re.match(r'\|\s*(\d+)\s*\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|', line)
      if m and section:
        curves[section][int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
  return curves


def ours(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['epoch']: r for r in map(json.loads, f) if 'test_A_d_top1' in r}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--sum', required=True)
  p.add_argument('--concat', required=True)
  p.add_argument('--reference', default=DEFAULT_REFERENCE)
  a = p.parse_args()
  ref = reference_curves(a.reference)
  runs = {'sum': (ours(a.sum), ref['A']), 'concat': (ours(a.concat), ref['B'])}
  print('Test A_d top-1 (reconstruction top-1 in brackets), MNIST base-mlp, k=2\n')
  print('| epoch | sum: original | sum: pmjax | concat: original | concat: pmjax |')
  print('|---|---|---|---|---|')
  epochs = sorted(set(ref['A']) | set(ref['B']))
  for e in epochs:
    cells = []
    for name in ('sum', 'concat'):
      mine, theirs = runs[name]
      cells.append(f'{theirs[e][0]:.4f} ({theirs[e][1]:.4f})' if e in theirs else '')
      cells.append(f"{mine[e]['test_A_d_top1']:.4f} ({mine[e]['test_recon_top1']:.4f})"
                   if e in mine else '')
    if any(cells[1::2]):
      print(f'| {e} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
