"""How closely pmjax reproduces a PyTorch F after `python -m pmjax.import_base
--torch_state_dict`: for each network with a PyTorch twin, a twin with random weights
(and random batch-norm statistics) is saved as a state_dict, read back
(weights_only=True), mapped onto the Flax network and both are run on the same random
inputs; prints the largest logit difference relative to the largest PyTorch logit
(the import accepts <= 1e-4) and the seconds each import took.

    python launch/torch_import_gaps.py [--archs=mlp,lenet5,...] [--json=PATH]

Needs PyTorch (pip install -e ".[torch]").
"""

import argparse
import json
import os
import tempfile
import time

ARCHS = {'mlp': (28, 28, 1, 10), 'lenet5': (28, 28, 1, 10), 'resnet18': (32, 32, 3, 10),
         'vgg11': (32, 32, 3, 10), 'resnet18_imagenet': (224, 224, 3, 1000),
         'vgg11_speech': (161, 101, 1, 30), 'lenet_speech': (161, 101, 1, 30)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--archs', default=','.join(ARCHS))
  p.add_argument('--json', default='')
  a = p.parse_args()
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from pmjax import models, tasks, torch_weights  # pylint: disable=import-outside-toplevel
  rows = []
  print('| network | input | parameters | logit gap (relative) | import s |')
  print('|---|---|---|---|---|')
  for name in a.archs.split(','):
    if name not in ARCHS:
      raise SystemExit(f'unknown --archs entry {name!r}; choices: {sorted(ARCHS)}')
    *shape, classes = ARCHS[name]
    model = models.get_model(name, classes)
    twin = torch_weights.random_twin(model, shape)
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'f.pt')
      torch.save(twin.state_dict(), path)
      t = time.perf_counter()
      state = torch_weights.load_state_dict(path)
      variables = torch_weights.to_flax(state, model, tasks.init_variables(model, 0, shape),
                                        shape)
      gap = torch_weights.verify(model, variables, state, shape)
      seconds = time.perf_counter() - t
    n = sum(int(np.prod(v.shape)) for v in twin.parameters())
    rows.append({'network': name, 'input': shape, 'parameters': n, 'gap': gap,
                 'seconds': seconds, 'torch': torch.__version__})
    print(f"| {name} | {'x'.join(map(str, shape))} | {n:,} | {gap:.1e} | {seconds:.1f} |")
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
