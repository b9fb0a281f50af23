"""The conv training table: pmjax's steps next to their PyTorch twins, in one run.

    python launch/side_by_side.py [--torch_python=PY] [--rows=all] [--before]

For each row (F or parity models, `ROWS`), runs `python -m pmjax.bench.train_throughput
--steps` and `launch/torch_train_step.py` (NCHW and channels_last; the faster is
kept) one after the other on this machine, and prints a markdown table: images/s
(F) or groups/s (parity), ms per step, GFLOP/s on pmjax's nominal count of the step
(XLA's cost analysis, the same work for both), the fraction of this CPU's conv3x3
peak measured in the same run, and pmjax / PyTorch. `--before` adds pmjax's old
layout for the rows it changed (r parity models vmapped, no im2col for small
convolutions). The r = 3 / r = 1 step ratio of the collage rows closes the table.
Without PyTorch (`--torch_python=''` or no torch) its columns are left empty.
Called by `launch/throughput_side_by_side.sh`; `--json=FILE` keeps every row.
"""

import argparse
import json
import subprocess
import sys

# name: the step's flags, the same for the pmjax bench and its PyTorch twin.
_COLLAGE = '--stage=parity --model=resnet8 --dataset=cifar10 --code=collage --k=8 ' \
           '--parity_model=tiles:resnet8'
ROWS = {
    'lenet5 F (MNIST)': '--stage=base --model=lenet5 --dataset=mnist',
    'resnet8 F (CIFAR-10)': '--stage=base --model=resnet8 --dataset=cifar10',
    'lenet5 sum k=2 (MNIST)': '--stage=parity --model=lenet5 --dataset=mnist --code=sum --k=2',
    'resnet8 concat k=2 (CIFAR-10)':
        '--stage=parity --model=resnet8 --dataset=cifar10 --code=concat --k=2',
    'tiles:resnet8 collage k=8 r=1 (CIFAR-10)': _COLLAGE + ' --r=1',
    'tiles:resnet8 collage k=8 r=3 (CIFAR-10)': _COLLAGE + ' --r=3',
}
# The layout before issue 22 (vmapped r copies: grouped convolutions; no im2col).
BEFORE = {'tiles:resnet8 collage k=8 r=1 (CIFAR-10)': '--im2col_max_pixels=0',
          'tiles:resnet8 collage k=8 r=3 (CIFAR-10)': '--im2col_max_pixels=0 --layout=vmap'}


def _json_line(cmd):
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    sys.exit(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
  return next(json.loads(line) for line in out.stdout.splitlines() if line.startswith('{'))


def pmjax_row(flags, extra, steps_per_call, calls, peak):
  return _json_line([sys.executable, '-m', 'pmjax.bench.train_throughput', '--steps',
                     *flags.split(), *extra.split(), f'--steps_per_call={steps_per_call}',
                     f'--calls={calls}', f'--peak={peak}'])


def concat_grid_flag(flags):
  """--grid=RxC: pmjax's own tiling of the row's code (`codes.concat_grid`), for the twin."""
  from pmjax import codes   # pylint: disable=g-import-not-at-top
  opts = dict(f[2:].split('=', 1) for f in flags.split())
  if opts.get('code', 'sum') == 'sum':
    return []
  shape = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}[opts['dataset']]
  return ['--grid=%dx%d' % codes.concat_grid(int(opts['k']), shape)]


def torch_row(torch_python, flags, steps, repeats):
  runs = [_json_line([torch_python, 'launch/torch_train_step.py', *flags.split(),
                      *concat_grid_flag(flags), f'--steps={steps}', f'--repeats={repeats}',
                      *layout])
          for layout in ([], ['--channels_last'])]
  return max(runs, key=lambda r: r['per_s'])


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--torch_python', default='')
  p.add_argument('--rows', default='all', help='comma-separated row names, or all')
  p.add_argument('--before', action='store_true')
  p.add_argument('--steps_per_call', type=int, default=8)
  p.add_argument('--calls', type=int, default=5)
  p.add_argument('--json', default='')
  a = p.parse_args()
  names = list(ROWS) if a.rows == 'all' else a.rows.split(',')
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    sys.exit(f'unknown rows {unknown}; choose from {list(ROWS)}')
  rows = []
  for name in names:
    flags = ROWS[name]
    variants = [('pmjax', '')] + ([('pmjax before', BEFORE[name])]
                                  if a.before and name in BEFORE else [])
    for label, extra in variants:
      calls = a.calls if label == 'pmjax' else max(1, a.calls // 2)
      spc = a.steps_per_call if label == 'pmjax' else max(1, a.steps_per_call // 4)
      first = not rows
      row = pmjax_row(flags, extra, spc, calls, first)   # the first also measures the peak
      if first:   # this CPU's peak, measured now, kept apart from the row
        peak = {key: row.pop(key) for key in ('matmul_gflops_per_s', 'conv3x3_gflops_per_s')}
        del row['fraction_of_conv_peak']
      row.update(name=name, impl=label)
      rows.append(row)
      print(f'{name:42s} {label:13s} {row["per_s"]:10.1f} {row["unit"]}/s', flush=True)
    if a.torch_python:
      t = torch_row(a.torch_python, flags, a.steps_per_call, a.calls)
      t.update(name=name, impl=f'PyTorch {t["torch"]}' + (' channels_last'
                                                          if t['channels_last'] else ''),
               unit=rows[-1]['unit'], step_gflop=rows[-1]['step_gflop'])
      t['gflops_per_s'] = t['step_gflop'] / (t['step_ms'] / 1e3)
      rows.append(t)
      print(f'{name:42s} {"PyTorch":13s} {t["per_s"]:10.1f} {t["unit"]}/s', flush=True)
  conv_peak = peak['conv3x3_gflops_per_s']
  print(f'\nCPU peak now (XLA): matmul {peak["matmul_gflops_per_s"]:.1f} GFLOP/s, conv3x3 '
        f'{conv_peak:.1f} GFLOP/s\n')
  print('| step | implementation | batch | per s | ms/step | GFLOP/step | GFLOP/s | '
        'of conv peak | pmjax / PyTorch |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name in names:
    mine = [r for r in rows if r['name'] == name]
    torch = [r for r in mine if r['impl'].startswith('PyTorch')]
    for r in mine:
      ratio = (f'{r["per_s"] / torch[0]["per_s"]:.2f}x' if torch and
               r['impl'].startswith('pmjax') else '')
      print(f'| {name} | {r["impl"]} | {r["batch"]} {r["unit"]} | {r["per_s"]:,.1f} | '
            f'{r["step_ms"]:.1f} | {r["step_gflop"]:.2f} | {r["gflops_per_s"]:.1f} | '
            f'{r["gflops_per_s"] / conv_peak:.0%} | {ratio} |')
  r1, r3 = ('tiles:resnet8 collage k=8 r=1 (CIFAR-10)',
            'tiles:resnet8 collage k=8 r=3 (CIFAR-10)')
  for impl in sorted({r['impl'] for r in rows}):
    steps = {r['name']: r['step_ms'] for r in rows if r['impl'] == impl}
    if r1 in steps and r3 in steps:
      print(f'\nr = 3 / r = 1 step time, {impl}: {steps[r3] / steps[r1]:.2f}x')
  if a.json:
    with open(a.json, 'w') as f:
      json.dump({'peak': peak, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
