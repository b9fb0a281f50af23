"""A PyTorch re-implementation of the original trainer's k=2 parity-training step.

    TORCH_PYTHON launch/torch_parity_step.py [--groups=64 --epochs=3 --threads=2 --examples=55000]

Not the original code: the same algorithm as its `train/` loop (base-mlp F
frozen, F_P = base-mlp, P = X1 + X2, MSE to F(X1) + F(X2), Adam lr 1e-3 with
weight decay 1e-5, 64 groups per step, a new random grouping per epoch) on
inputs cached as tensors, so a JAX-vs-PyTorch ratio can be measured side by
side in one run (launch/throughput_side_by_side.sh). Prints one JSON line:
groups/s of the cached-input epoch loop and of the bare step (one fixed batch).
Random images stand in for MNIST: speed does not depend on pixel values.
"""

import argparse
import json
import time

import torch
from torch import nn


def mlp():
  return nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 100), nn.ReLU(),
                       nn.Linear(100, 10))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--groups', type=int, default=64)
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--examples', type=int, default=55000, help="MNIST's training set")
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  k, n = 2, a.examples
  x_all = torch.randn(n, 784)
  base, parity = mlp().eval(), mlp()
  opt = torch.optim.Adam(parity.parameters(), lr=1e-3, weight_decay=1e-5)
  loss_fn = nn.MSELoss()
  steps = (n // k) // a.groups

  def step(x):  # x: groups x k x 784
    with torch.no_grad():
      target = base(x.view(-1, 784)).view(a.groups, k, -1).sum(1)
    out = parity(x.sum(1))
    loss = loss_fn(out, target)
    opt.zero_grad()
    loss.backward()
    opt.step()

  epoch_s = []
  for epoch in range(a.epochs + 1):
    t0 = time.perf_counter()
    perm = torch.randperm(n)[:steps * a.groups * k].view(steps, a.groups, k)
    for s in range(steps):
      step(x_all[perm[s]])
    if epoch:  # the first epoch warms up
      epoch_s.append(time.perf_counter() - t0)
  fixed = x_all[:a.groups * k].view(a.groups, k, 784)
  for _ in range(50):
    step(fixed)
  t0 = time.perf_counter()
  for _ in range(steps):
    step(fixed)
  bare_s = time.perf_counter() - t0
  epoch = sorted(epoch_s)[len(epoch_s) // 2]
  print(json.dumps({'torch': torch.__version__, 'threads': a.threads, 'steps': steps,
                    'cached_epoch_groups_per_s': steps * a.groups / epoch,
                    'bare_step_groups_per_s': steps * a.groups / bare_s}))


if __name__ == '__main__':
  main()
