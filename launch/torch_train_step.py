"""PyTorch twins of pmjax's conv training steps, for the side-by-side throughput table.

    TORCH_PYTHON launch/torch_train_step.py --stage=base --model=resnet8 --dataset=cifar10
    TORCH_PYTHON launch/torch_train_step.py --stage=parity --code=collage --k=8 --r=3 \\
        --parity_model=tiles:resnet8

Not pmjax code: the same networks as `pmjax.models` (lenet5; resnet8 = CIFAR stem,
one BasicBlock per stage, widths 16-32-64-128, batch norm eps 1e-5 / momentum 0.1,
which is flax's 0.9; `tiles:NAME` = NAME on every cell of the k-image tiling,
answers stacked), the same steps as `python -m pmjax.bench.train_throughput --steps`
(F: cross-entropy, SGD + Nesterov 0.9, lr 0.1, weight decay 5e-4 on CIFAR-10,
Adam 1e-3 on MNIST; parity models: the code's encoding inside the step, bilinear
antialiased downsampling into pmjax's grid for concat/collage (`--grid`, which
launch/side_by_side.py takes from `pmjax.codes.concat_grid`), MSE to F's precomputed
outputs, Adam 1e-3 with weight decay 1e-5; r parity models = r separate networks, one optimizer),
the same batch sizes, on a fixed batch of random inputs cached as tensors (speed does
not depend on pixel values). Prints one JSON line: images/s (F) or groups/s
(parity) and ms per step, median of `--repeats` timed runs of `--steps` steps each,
after a warm-up. `--channels_last` uses PyTorch's NHWC memory format.
"""

import argparse
import json
import time

import torch
from torch import nn
import torch.nn.functional as F

SHAPES = {'mnist': (1, 28, 28), 'cifar10': (3, 32, 32)}


class LeNet5(nn.Module):
  def __init__(self, c_in, num_classes, hw):
    super().__init__()
    self.c1, self.c2 = nn.Conv2d(c_in, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
    h, w = hw
    flat = 16 * (((h // 2) - 4) // 2) * (((w // 2) - 4) // 2)
    self.f1, self.f2, self.f3 = nn.Linear(flat, 120), nn.Linear(120, 84), nn.Linear(84,
                                                                                   num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.c1(x)), 2)
    x = F.max_pool2d(F.relu(self.c2(x)), 2)
    x = F.relu(self.f1(x.flatten(1)))
    return self.f3(F.relu(self.f2(x)))


class Block(nn.Module):
  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.a = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.na = nn.BatchNorm2d(c_out)
    self.b = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.nb = nn.BatchNorm2d(c_out)
    self.short = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                nn.BatchNorm2d(c_out))
                  if stride != 1 or c_in != c_out else nn.Identity())

  def forward(self, x):
    y = self.nb(self.b(F.relu(self.na(self.a(x)))))
    return F.relu(self.short(x) + y)


class ResNet8(nn.Module):
  def __init__(self, c_in, num_classes, widths=(16, 32, 64, 128)):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(c_in, widths[0], 3, 1, 1, bias=False),
                              nn.BatchNorm2d(widths[0]), nn.ReLU())
    blocks, c = [], widths[0]
    for i, w in enumerate(widths):
      blocks.append(Block(c, w, 1 if i == 0 else 2))
      c = w
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(c, num_classes)

  def forward(self, x):
    return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Tiles(nn.Module):
  """NAME on every cell of a rows x cols tiling; the first k answers side by side."""
  def __init__(self, inner, k, rows, cols):
    super().__init__()
    self.inner, self.k, self.rows, self.cols = inner, k, rows, cols

  def forward(self, x):
    b, c, h, w = x.shape
    ch, cw = h // self.rows, w // self.cols
    t = x.reshape(b, c, self.rows, ch, self.cols, cw).permute(0, 2, 4, 1, 3, 5)
    t = t.reshape(b * self.rows * self.cols, c, ch, cw)
    return self.inner(t).reshape(b, self.rows * self.cols, -1)[:, :self.k].flatten(1)


def make(name, c_in, num_classes, hw):
  return {'lenet5': lambda: LeNet5(c_in, num_classes, hw),
          'resnet8': lambda: ResNet8(c_in, num_classes)}[name]()


def concat(x_bkchw, rows, cols):
  b, k, c, h, w = x_bkchw.shape
  ch, cw = h // rows, w // cols
  cells = F.interpolate(x_bkchw.reshape(b * k, c, h, w), size=(ch, cw), mode='bilinear',
                        antialias=True, align_corners=False).reshape(b, k, c, ch, cw)
  pad = rows * cols - k
  if pad:
    cells = torch.cat([cells, cells.new_zeros(b, pad, c, ch, cw)], 1)
  g = cells.reshape(b, rows, cols, c, ch, cw).permute(0, 3, 1, 4, 2, 5)
  return g.reshape(b, c, rows * ch, cols * cw)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--stage', default='base', choices=['base', 'parity'])
  p.add_argument('--model', default='resnet8', choices=['lenet5', 'resnet8'])
  p.add_argument('--dataset', default='cifar10', choices=sorted(SHAPES))
  p.add_argument('--code', default='sum', choices=['sum', 'concat', 'collage'])
  p.add_argument('--k', type=int, default=2)
  p.add_argument('--r', type=int, default=1)
  p.add_argument('--parity_model', default='')
  p.add_argument('--batch', type=int, default=0)
  p.add_argument('--grid', default='', help='RxC tiling of concat/collage (pmjax.codes.'
                 'concat_grid; launch/side_by_side.py passes it)')
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--channels_last', action='store_true')
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  c, h, w = SHAPES[a.dataset]
  fmt = torch.channels_last if a.channels_last else torch.contiguous_format
  if a.stage == 'base':
    batch = a.batch or (128 if a.dataset == 'cifar10' else 64)
    model = make(a.model, c, 10, (h, w)).to(memory_format=fmt)
    params = list(model.parameters())
    opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
           if a.dataset == 'cifar10' else torch.optim.Adam(params, lr=1e-3))
    x = torch.randn(batch, c, h, w).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def loss():
      return F.cross_entropy(model(x), y)
  else:
    batch = a.batch or (64 if a.k == 2 else 32)
    name = a.parity_model or a.model
    if a.code != 'sum' and not a.grid:
      p.error(f'--code={a.code} needs --grid=RxC (pmjax.codes.concat_grid of k and the shape)')
    rows, cols = map(int, a.grid.split('x')) if a.code != 'sum' else (1, 1)
    if name.startswith('tiles:'):
      def one():
        return Tiles(make(name.split(':', 1)[1], c, 10, (h // rows, w // cols)), a.k, rows,
                     cols)
    else:
      def one():
        return make(name, c, 10, (h, w))
    models = [one().to(memory_format=fmt) for _ in range(a.r)]
    params = [q for m in models for q in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
    x = torch.randn(batch, a.k, c, h, w)
    width = 10 * (a.k if a.code == 'collage' else 1)
    t = torch.randn(batch, a.r, width)   # F's outputs, precomputed (pmjax: data['targets'])

    def loss():
      q = x.sum(1) if a.code == 'sum' else concat(x, rows, cols)
      q = q.contiguous(memory_format=fmt)
      out = torch.stack([m(q) for m in models], 1)
      return F.mse_loss(out, t)

  def step():
    opt.zero_grad(set_to_none=True)
    loss().backward()
    opt.step()

  for _ in range(3):
    step()
  times = []
  for _ in range(a.repeats):
    t0 = time.perf_counter()
    for _ in range(a.steps):
      step()
    times.append((time.perf_counter() - t0) / a.steps)
  step_s = sorted(times)[len(times) // 2]
  print(json.dumps({'torch': torch.__version__, 'threads': a.threads, 'stage': a.stage,
                    'model': a.model, 'dataset': a.dataset, 'code': a.code, 'k': a.k,
                    'r': a.r, 'parity_model': a.parity_model or a.model, 'batch': batch,
                    'channels_last': a.channels_last, 'step_ms': step_s * 1e3,
                    'per_s': batch / step_s}))


if __name__ == '__main__':
  main()
