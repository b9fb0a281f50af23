"""Side-by-side test A_d of our parity runs and the original PyTorch trainer.

    python launch/compare_reference.py A=W_SUM_K2 B=W_CONCAT_K2 [C=... D=...] [--reference=FILE]

Each argument pairs a section of ../shared/reference/parm_pytorch_cpu.md (A:
MNIST sum k=2, B: MNIST concat k=2, C: Fashion-MNIST concat k=2, D: MNIST
concat k=4, all base-mlp) with one of our parity workdirs, and prints a
markdown table of test A_d top-1 (reconstruction top-1 in brackets) at the
reference's epochs, from our per-epoch `metrics.jsonl`.
"""

import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from pmjax import metrics  # noqa: E402  (one reader of metrics.jsonl, torn lines skipped)
DEFAULT_REFERENCE = os.path.join(HERE, '..', '..', 'shared', 'reference', 'parm_pytorch_cpu.md')


def reference_curves(path):
  """{section: (title, {epoch: (test degraded top-1, test reconstruction top-1)})}."""
  curves, section = {}, None
  with open(path) as f:
    for line in f:
      m = re.match(r'### ([A-Z]): (.*)', line)
      if m:
        section = m.group(1)
        curves[section] = (m.group(2).strip(), {})
      m = re.match(r'\|\s*(\d+)\s*\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|', line)
      if m and section:
        curves[section][1][int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
  return curves


def ours(workdir):
  return {r['epoch']: r for r in metrics.read_metrics(workdir) if 'test_A_d_top1' in r}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('pairs', nargs='+', help='SECTION=WORKDIR')
  p.add_argument('--reference', default=DEFAULT_REFERENCE)
  a = p.parse_args()
  ref = reference_curves(a.reference)
  pairs = [pair.split('=', 1) for pair in a.pairs]
  for section, _ in pairs:
    if section not in ref:
      p.error(f'section {section!r} is not in {a.reference}; sections: {sorted(ref)}')
  runs = [(section, ref[section], ours(w)) for section, w in pairs]
  print('Test A_d top-1 (reconstruction top-1 in brackets)\n')
  for section, (title, _), _ in runs:
    print(f'- {section}: {title}')
  print('\n| epoch | ' + ' | '.join(f'{s}: original | {s}: pmjax' for s, _, _ in runs) + ' |')
  print('|---|' + '---|---|' * len(runs))
  epochs = sorted(set().union(*(r[1][1] for r in runs)))
  for e in epochs:
    cells = []
    for _, (_, theirs), mine in runs:
      cells.append(f'{theirs[e][0]:.4f} ({theirs[e][1]:.4f})' if e in theirs else '')
      cells.append(f"{mine[e]['test_A_d_top1']:.4f} ({mine[e]['test_recon_top1']:.4f})"
                   if e in mine else '')
    if any(cells[1::2]):
      print(f'| {e} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
