"""Import the original artifact's trained PyTorch base-mlp as a pmjax base workdir.

    python launch/import_original_base_mlp.py --t7=PATH/model.t7 --dataset=mnist \
        --workdir=workdirs/original_f/mnist

PATH is `train/base_model_trained_files/<mnist|fashion-mnist>/base-mlp/` of the
parity-models repository (its `BaseMLP`: Linear 784-200, ReLU, 200-100, ReLU,
100-10, fed the flattened 28x28 image scaled to [0, 1] by torchvision's
ToTensor). Its weights become pmjax's `mlp` (Dense kernels are the transposed
Linear weights; the flattening order is the same for one channel) in a stage=base
workdir with `data.scaling='unit'`, and its validation and test accuracy are
measured and printed (the original reports 97.93% test on MNIST, 89.47% on
Fashion-MNIST). Parity runs on it take `--config.base_workdir=W
--config.data.scaling=unit`. Needs PyTorch (to read the .t7 file); pmjax does not.
"""

import argparse
import json

import numpy as np


def read_state_dict(path: str) -> dict:
  """The .t7 file's tensors as numpy arrays (a state dict, or a dict holding one), read
  with torch.load(weights_only=True): a file carrying pickled code is refused."""
  from pmjax import torch_weights  # pylint: disable=import-outside-toplevel
  return torch_weights.load_state_dict(path)


def base_mlp_params(state: dict) -> dict:
  """BaseMLP's `nn.{0,2,4}.{weight,bias}` -> pmjax mlp's {'Dense_i': {kernel, bias}}."""
  names = sorted({k.rsplit('.', 1)[0] for k in state}, key=lambda n: int(n.split('.')[-1]))
  if len(names) != 3:
    raise ValueError(f'expected the 3 Linear layers of BaseMLP, found {names}')
  return {f'Dense_{i}': {'kernel': state[f'{n}.weight'].T.astype(np.float32),
                         'bias': state[f'{n}.bias'].astype(np.float32)}
          for i, n in enumerate(names)}


def set_field(config, dotted: str, text: str):
  """config.<dotted> = text, converted to the type of the field's current value."""
  *parents, name = dotted.split('.')
  for part in parents:
    config = config[part]
  old = config[name]
  config[name] = (text.lower() in ('1', 'true')) if isinstance(old, bool) else type(old)(text)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--t7', required=True)
  p.add_argument('--dataset', default='mnist', choices=['mnist', 'fashion_mnist'])
  p.add_argument('--workdir', required=True)
  p.add_argument('--config_override', action='append', default=[],
                 help='FIELD=VALUE for the base config (e.g. data.manual_dir=...)')
  a = p.parse_args()
  import importlib  # pylint: disable=import-outside-toplevel
  from pmjax import import_base  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f'configs.{a.dataset}').get_config('stage=base')
  config.data.scaling = 'unit'
  for item in a.config_override:
    field, value = item.split('=', 1)
    set_field(config, field, value)
  row = import_base.import_base_variables(
      config, a.workdir, {'params': base_mlp_params(read_state_dict(a.t7))})
  print(json.dumps({'workdir': a.workdir, **row}))


if __name__ == '__main__':
  main()
