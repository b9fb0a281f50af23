"""A user's PyTorch F, protected end to end: train a LeNet-5 in PyTorch on MNIST (the
user's side), then the README's three commands (import the state_dict, train a parity
model, evaluate) and compare pmjax's accuracy of the imported F with PyTorch's own. The import checks
pmjax's logits against this PyTorch network's own on 8 test images (--torch_reference).

    python launch/torch_f_end_to_end.py --root=workdirs/torch_f [--epochs=2] \
        [--parity_epochs=20] [--manual_dir=../shared/data/mnist]

PyTorch trains on the first 55,000 training images (pmjax's validation split is the
last 5,000) with the inputs pmjax's default `data.scaling='standardize'` gives,
(x/255 - 0.1307) / 0.3081, and measures its test accuracy on t10k; `import_base`
must then report the same test A_a. Prints one JSON line: PyTorch's test accuracy,
pmjax's A_a of the imported F, the logit gap of the import, and the parity model's
A_d. `--smoke --config_override=FIELD=VALUE ...` runs it tiny (a test does). Needs
PyTorch.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np


def lenet5(torch):
  """LeNet-5 as a PyTorch user writes it (what pmjax's `lenet5` computes)."""
  nn, F = torch.nn, torch.nn.functional

  class LeNet5(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
      self.conv2 = nn.Conv2d(6, 16, 5)
      self.fc1 = nn.Linear(16 * 5 * 5, 120)
      self.fc2 = nn.Linear(120, 84)
      self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.conv1(x)), 2)
      x = F.max_pool2d(F.relu(self.conv2(x)), 2)
      x = torch.flatten(x, 1)
      return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

  return LeNet5()


def train_in_pytorch(manual_dir, epochs, train_limit, test_limit, seed=0):
  """(state_dict, test accuracy) of a LeNet-5 trained with Adam in PyTorch."""
  import torch  # pylint: disable=import-outside-toplevel
  from pmjax.data import builders  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  spec = builders.get_spec('mnist')   # pmjax's idx reader and MNIST's mean / std
  raw = builders.read_idx_dataset(spec, manual_dir, download=False, verify_md5=False)
  (x, y), (xt, yt) = raw['train'], raw['test']   # N x 28 x 28 x 1 uint8, labels
  norm = lambda x: ((x[..., 0].astype(np.float32) / 255.0 - spec.mean[0]) / spec.std[0])
  n_train = (len(x) - 5000) if not train_limit else train_limit   # pmjax's val: last 5,000
  if test_limit:
    xt, yt = xt[:test_limit], yt[:test_limit]
  x = torch.from_numpy(norm(x[:n_train]))[:, None]
  y = torch.from_numpy(y[:n_train])
  net = lenet5(torch)
  opt = torch.optim.Adam(net.parameters(), 1e-3)
  for _ in range(epochs):
    net.train()
    for idx in torch.randperm(len(x)).split(64):
      opt.zero_grad()
      loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
      loss.backward()
      opt.step()
  net.eval()
  with torch.no_grad():
    logits = net(torch.from_numpy(norm(xt))[:, None]).numpy()
  reference = {'x': norm(xt[:8])[:, None], 'logits': logits[:8]}   # NCHW inputs, logits
  return net.state_dict(), float(np.mean(logits.argmax(1) == yt)), reference


def run(cmd):
  print('$', ' '.join(cmd), file=sys.stderr, flush=True)
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    sys.exit(f'{cmd[2]} failed:\n{out.stderr[-3000:]}')
  return out.stdout


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--root', required=True)
  p.add_argument('--manual_dir', default='../shared/data/mnist')
  p.add_argument('--epochs', type=int, default=2)
  p.add_argument('--parity_epochs', type=int, default=20)
  p.add_argument('--smoke', action='store_true', help='tiny: 512 training, 256 test images')
  p.add_argument('--config_override', action='append', default=[],
                 help='--config.FIELD=VALUE for every pmjax command (e.g. data.data_dir=D)')
  a = p.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  train_limit, test_limit = (512, 256) if a.smoke else (0, 0)
  os.makedirs(a.root, exist_ok=True)
  state, torch_acc, reference = train_in_pytorch(a.manual_dir, a.epochs, train_limit,
                                                 test_limit)
  pt, ref = os.path.join(a.root, 'model.pt'), os.path.join(a.root, 'reference.npz')
  torch.save(state, pt)
  np.savez(ref, **reference)
  common = [f'--config.data.manual_dir={a.manual_dir}', '--config.progress_bar=false']
  if a.smoke:
    common += [f'--config.data.train_limit={train_limit}',
               f'--config.data.test_limit={test_limit}', '--config.data.num_val=100']
  common += [f'--config.{o}' for o in a.config_override]
  py = sys.executable
  f, w = os.path.join(a.root, 'f'), os.path.join(a.root, 'concat_k2')
  row = json.loads(run([py, '-m', 'pmjax.import_base', f'--torch_state_dict={pt}',
                        f'--torch_reference={ref}',
                        '--config=configs/mnist.py:stage=base,model=lenet5',
                        f'--workdir={f}'] + common).strip().splitlines()[-1])
  run([py, '-m', 'pmjax.train', '--config=configs/mnist.py:stage=parity,model=lenet5,'
       f'code=concat,k=2,epochs={a.parity_epochs}', f'--config.base_workdir={f}',
       f'--workdir={w}'] + common)
  run([py, '-m', 'pmjax.evaluate', f'--workdir={w}'])
  res = json.load(open(os.path.join(w, 'results.json')))
  print(json.dumps({'torch': torch.__version__, 'torch_test_accuracy': torch_acc,
                    'pmjax_test_A_a': row['test_A_a'], 'logit_gap': row['torch_logit_gap'],
                    'A_a': res['A_a'], 'A_d': res['A_d_top1'],
                    'parity_epochs': a.parity_epochs, 'pytorch_epochs': a.epochs}))


if __name__ == '__main__':
  main()
