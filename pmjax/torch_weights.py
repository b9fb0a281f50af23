"""A PyTorch F's weights -> the matching pmjax (Flax) network, verified on its logits.

    python -m pmjax.import_base --torch_state_dict=model.pt \
        --config=configs/cifar10.py:stage=base,model=resnet18 --workdir=W

`load_state_dict` reads a `state_dict` saved by `torch.save(model.state_dict(), path)`
with `torch.load(..., weights_only=True)`: tensors only, so a file carrying pickled
code is refused and its code never runs. `to_flax` maps it onto the Flax network's
variables layer by layer, in order: the state_dict's layers (its keys' order: the
order PyTorch registered the modules, which for the networks we ship is the order they
run) against the Flax network's parameterised layers in the order they are called.
Each pair must be the same kind with the same shapes, or the import stops naming the
first layer that differs. Conversions: Conv2d weights OIHW -> HWIO, Linear weights
transposed (and, for the first Linear after the convolutions or on the image, its
inputs reordered from PyTorch's NCHW flattening to Flax's NHWC), BatchNorm2d's
weight/bias/running statistics -> scale/bias and batch_stats mean/var (both use
epsilon 1e-5; pmjax's networks are built with it).

`verify` then runs the PyTorch twin of the Flax network (`torch_twin`: the same
architecture written in PyTorch, for every network of `pmjax.models` with a PyTorch
counterpart: mlp, lenet5, the ResNets (CIFAR and torchvision/ImageNet stems), VGG and
the speech networks) with the user's weights and pmjax's network with the converted
ones on the same random inputs: the logits must agree to 1e-4 (the largest difference
relative to the largest PyTorch logit), or the error names the first layer whose
outputs differ. `reference=` (inputs and logits the user's own PyTorch model
produced, an .npz) checks against the user's network itself, any architecture.

PyTorch is optional (`pip install torch`, or the project's `torch` extra): only this
module imports it, inside its functions.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pmjax import models

TOLERANCE = 1e-4


class TorchImportError(ValueError):
  """A state_dict that cannot be read, mapped or verified; the message names why."""


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise TorchImportError('reading a PyTorch state_dict needs PyTorch: pip install torch '
                           '(the CPU build is enough), or pip install -e ".[torch]"') from e
  return torch


def load_state_dict(path: str) -> dict:
  """{key: float32/int numpy array} of a saved state_dict (or a dict holding one under
  'state_dict', 'model_state_dict' or 'model'; DataParallel's 'module.' prefixes
  dropped). Tensors only: anything else in the file is refused unread."""
  torch = _torch()
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError as e:
    raise TorchImportError(f'{path}: no such file') from e
  except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    # torch's own message opens with advice to load with weights_only=False: not repeated.
    first = next((l for l in lines if 'GLOBAL' in l or 'Unsupported' in l),
                 lines[-1] if lines and 'weights_only' not in lines[-1] else type(e).__name__)
    raise TorchImportError(
        f'{path} was refused: it is not a file of tensors that torch.load(weights_only=True) '
        f'accepts ({first}). pmjax never unpickles code from a file; save the weights '
        f'alone with torch.save(model.state_dict(), path)') from e
  for key in ('state_dict', 'model_state_dict', 'model'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict) or not obj:
    raise TorchImportError(f'{path} holds a {type(obj).__name__}, not a state_dict; save '
                           f'torch.save(model.state_dict(), path)')
  out = {}
  for key, value in obj.items():
    if not hasattr(value, 'detach'):
      raise TorchImportError(f'{path}: entry {key!r} is a {type(value).__name__}, not a '
                             f'tensor; save torch.save(model.state_dict(), path)')
    value = value.detach().cpu()
    array = (value.float() if value.is_floating_point() else value).numpy()  # bf16, fp16 too
    if array.dtype.kind == 'f' and not np.all(np.isfinite(array)):
      raise TorchImportError(f'{path}: tensor {key!r} holds NaN or Inf: the saved model is '
                             f'broken; save it again from a good checkpoint')
    out[key[len('module.'):] if key.startswith('module.') else key] = array
  return out


@dataclasses.dataclass
class Layer:
  """One parameterised layer: its name, kind ('conv', 'linear', 'bn') and arrays."""
  name: str
  kind: str
  arrays: dict

  def describe(self) -> str:
    """'name' (kind shape): the weight's shape as its framework stores it; a batch
    norm's number of channels."""
    main = next((self.arrays[k] for k in ('weight', 'kernel') if k in self.arrays),
                next(iter(self.arrays.values())))
    shape = (len(main),) if self.kind == 'bn' else main.shape
    return f'{self.name!r} ({self.kind} {"x".join(map(str, shape))})'


def torch_layers(state: dict) -> list:
  """The state_dict's layers in its order (keys grouped by module prefix)."""
  groups: dict = {}
  for key, value in state.items():
    prefix, _, leaf = key.rpartition('.')
    groups.setdefault(prefix, {})[leaf] = value
  layers = []
  for prefix, arrays in groups.items():
    arrays.pop('num_batches_tracked', None)
    if not arrays:
      continue
    if 'running_mean' in arrays:
      kind = 'bn'
    elif 'weight' in arrays and arrays['weight'].ndim == 4:
      kind = 'conv'
    elif 'weight' in arrays and arrays['weight'].ndim == 2:
      kind = 'linear'
    else:
      raise TorchImportError(
          f'state_dict layer {prefix!r} ({sorted(arrays)}, shapes '
          f'{[a.shape for a in arrays.values()]}) is not a Conv2d, Linear or BatchNorm2d: '
          f'only those map onto pmjax networks')
    layers.append(Layer(prefix, kind, arrays))
  return layers


def flax_layers(model: nn.Module, variables: dict, x) -> list:
  """The Flax network's parameterised layers in the order they are called on x."""
  order = _call_order(model, variables, x)
  layers = []
  for path in order:
    params = _at(variables['params'], path)
    stats = _at(variables.get('batch_stats') or {}, path)
    name = '/'.join(path)
    if 'scale' in params and 'mean' in stats:
      layers.append(Layer(name, 'bn', {**params, **stats}))
    elif 'kernel' in params and params['kernel'].ndim == 4:
      layers.append(Layer(name, 'conv', dict(params)))
    elif 'kernel' in params and params['kernel'].ndim == 2:
      layers.append(Layer(name, 'linear', dict(params)))
    else:
      raise TorchImportError(f'pmjax layer {name!r} ({sorted(params)}) has no PyTorch '
                             f'counterpart this import maps (Conv2d, Linear, BatchNorm2d)')
  return layers


def _at(tree: dict, path: tuple) -> dict:
  for p in path:
    tree = tree.get(p, {}) if isinstance(tree, dict) else {}
  return {k: v for k, v in tree.items() if not isinstance(v, dict)} \
      if isinstance(tree, dict) else {}


def _call_order(model, variables, x, outputs: list | None = None) -> list:
  """Paths of the modules that own parameters, in the order they are first called
  (their outputs appended to `outputs` when given)."""
  order = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = context.module.path
    if context.method_name == '__call__' and path not in order and \
        _at(variables['params'], path):
      order.append(path)
      if outputs is not None:
        outputs.append(out)
    return out

  with nn.intercept_methods(record):
    if outputs is None:
      jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    else:
      model.apply(variables, x, train=False)
  return order


def to_flax(state: dict, model: nn.Module, template: dict, input_shape) -> dict:
  """The state_dict as `model`'s variables ({'params', 'batch_stats'}), `template`
  (the model's initial variables) giving the tree and the shapes."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  ours, theirs = flax_layers(model, template, x), torch_layers(state)
  params = jax.tree.map(np.asarray, template['params'])
  stats = jax.tree.map(np.asarray, template.get('batch_stats') or {})
  channels = input_shape[-1]     # channels of what the next Linear flattens
  flattened = False
  for i, (a, b) in enumerate(zip(ours, theirs)):
    if a.kind != b.kind:
      raise TorchImportError(
          f'layer {i}: the state_dict\'s {b.describe()} does not match pmjax\'s '
          f'{a.describe()}: the state_dict is of another architecture than the config\'s '
          f'model (or its layers are registered in another order)')
    path = a.name.split('/')
    if a.kind == 'bn':
      arrays = {'scale': b.arrays['weight'], 'bias': b.arrays['bias']}
      _put(params, path, arrays, a, b)
      _put(stats, path, {'mean': b.arrays['running_mean'], 'var': b.arrays['running_var']},
           a, b)
      continue
    w = b.arrays['weight']
    if a.kind == 'conv':
      kernel = w.transpose(2, 3, 1, 0)                     # OIHW -> HWIO
      channels = w.shape[0]
    else:
      kernel = w.T                                          # (out, in) -> (in, out)
      if not flattened and w.shape[1] != channels and w.shape[1] % channels == 0:
        s = w.shape[1] // channels   # NCHW flattening (c, s) -> NHWC (s, c)
        kernel = w.reshape(w.shape[0], channels, s).transpose(2, 1, 0).reshape(-1, w.shape[0])
      flattened, channels = True, w.shape[0]
    arrays = {'kernel': kernel}
    if 'bias' in b.arrays:
      arrays['bias'] = b.arrays['bias']
    _put(params, path, arrays, a, b)
  if len(ours) != len(theirs):
    extra = theirs[len(ours)] if len(theirs) > len(ours) else ours[len(theirs)]
    raise TorchImportError(
        f'the state_dict has {len(theirs)} layers and pmjax\'s network {len(ours)} (first '
        f'unmatched: {extra.describe()}): the state_dict is of another architecture than '
        f'the config\'s model')
  return {'params': params, 'batch_stats': stats}


def _put(tree: dict, path: list, arrays: dict, ours: Layer, theirs: Layer):
  node = tree
  for p in path:
    node = node[p]
  if set(arrays) != {k for k in node if not isinstance(node[k], dict)}:
    raise TorchImportError(f'{theirs.describe()} has {sorted(arrays)} but pmjax\'s '
                           f'{ours.describe()} has {sorted(node)} (a bias where there is '
                           f'none, or none where there is one)')
  for k, v in arrays.items():
    if np.shape(node[k]) != v.shape:
      raise TorchImportError(
          f'shape mismatch at the state_dict\'s {theirs.describe()} -> pmjax '
          f'{ours.describe()}: {k} {v.shape} after conversion, expected {np.shape(node[k])} '
          f'(another width, number of classes or input size than the config\'s model and '
          f'dataset)')
    node[k] = np.array(v, np.float32)   # a copy: never aliases the state_dict


# ---------------------------------------------------------------------------
# The PyTorch twins of pmjax's networks, and the check.
# ---------------------------------------------------------------------------

def torch_twin(model: nn.Module, input_shape):
  """The PyTorch network computing what `model` (a pmjax.models network) computes on
  inputs of `input_shape` (H, W, C), its modules registered in the order they run (so
  its state_dict maps onto `model`), sized (its lazy layers run once) and in eval mode."""
  torch = _torch()
  twin = _twin_modules(torch, model, input_shape[-1])
  with torch.no_grad():
    twin.eval()(torch.zeros((1, input_shape[-1], *input_shape[:2])))
  return twin


def _twin_modules(torch, model: nn.Module, in_channels: int):
  tnn = torch.nn

  class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(cout)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(cout)
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                       tnn.BatchNorm2d(cout)) \
          if stride != 1 or cin != cout else None

    def forward(self, x):
      y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Net(tnn.Module):
    def __init__(self, layers, head):
      super().__init__()
      self.features, self.head = tnn.Sequential(*layers), head

    def forward(self, x):
      return self.head(self.features(x))

  class MeanHW(tnn.Module):   # global average pooling, as pmjax's jnp.mean over H, W
    def forward(self, x):
      return x.mean(dim=(2, 3))

  mean_hw, flat = MeanHW(), tnn.Flatten()
  kind = type(model)
  if kind is models.MLP:
    return tnn.Sequential(flat, *_mlp(tnn, model.hidden, model.num_classes))
  if kind is models.LeNet5:
    return tnn.Sequential(
        tnn.Conv2d(in_channels, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), flat,
        tnn.LazyLinear(120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
        tnn.Linear(84, model.num_classes))
  if kind is models.SpeechLeNet:
    w0, w1 = model.widths
    return tnn.Sequential(
        tnn.Conv2d(in_channels, w0, 5), tnn.MaxPool2d(2), tnn.ReLU(),
        tnn.Conv2d(w0, w1, 5), tnn.MaxPool2d(2), tnn.ReLU(), flat,
        tnn.LazyLinear(model.hidden), tnn.ReLU(), tnn.Linear(model.hidden, model.num_classes))
  if kind is models.ResNet:
    w0 = model.widths[0]
    if model.stem == 'imagenet':
      layers = [tnn.Conv2d(in_channels, w0, 7, 2, 3, bias=False), tnn.BatchNorm2d(w0),
                tnn.ReLU(), tnn.MaxPool2d(3, 2, 1)]
    else:
      layers = [tnn.Conv2d(in_channels, w0, 3, 1, 1, bias=False), tnn.BatchNorm2d(w0),
                tnn.ReLU()]
    cin = w0
    for stage, (n, width) in enumerate(zip(model.blocks, model.widths)):
      for i in range(n):
        layers.append(Block(cin, width, 2 if (i == 0 and stage > 0) else 1))
        cin = width
    return Net(layers, tnn.Sequential(mean_hw, tnn.Linear(cin, model.num_classes)))
  if kind is models.VGG:
    layers, cin = [], in_channels
    for v in model.layers:
      if v == 'M':
        layers.append(tnn.MaxPool2d(2))
      else:
        layers += [tnn.Conv2d(cin, v, 3, padding=1), tnn.BatchNorm2d(v), tnn.ReLU()]
        cin = v
    head = (tnn.Sequential(flat, tnn.LazyLinear(model.hidden),
                           tnn.Linear(model.hidden, model.num_classes)) if model.hidden
            else tnn.Sequential(mean_hw, tnn.Linear(cin, model.num_classes)))
    return Net(layers, head)
  raise TorchImportError(
      f'pmjax has no PyTorch twin of {type(model).__name__} to check the import against; '
      f'pass reference= inputs and logits from your own PyTorch model (--torch_reference)')


def _mlp(tnn, hidden, num_classes):
  mods = [tnn.LazyLinear(hidden[0]) if hidden else tnn.LazyLinear(num_classes)]
  for a, b in zip(hidden, list(hidden[1:]) + [num_classes]):
    mods += [tnn.ReLU(), tnn.Linear(a, b)]
  return mods


def load_twin(model: nn.Module, state: dict, input_shape):
  """`model`'s PyTorch twin holding `state` (its layers matched by order), in eval mode."""
  torch = _torch()
  twin = torch_twin(model, input_shape)
  keys = [k for k in twin.state_dict() if not k.endswith('num_batches_tracked')]
  values = [v for k, v in state.items() if not k.endswith('num_batches_tracked')]
  if len(keys) != len(values):
    raise TorchImportError(f'the state_dict has {len(values)} tensors and the PyTorch twin of '
                           f'{type(model).__name__} {len(keys)}: another architecture')
  twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in zip(keys, values)}, strict=False)
  return twin.eval()


def random_twin(model: nn.Module, input_shape, seed: int = 0):
  """`model`'s PyTorch twin with random weights and random batch-norm statistics and
  affine parameters (so that every conversion is exercised), in eval mode: what the
  tests and `launch/torch_import_gaps.py` import."""
  torch = _torch()
  torch.manual_seed(seed)
  twin = torch_twin(model, input_shape)
  with torch.no_grad():
    for m in twin.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  return twin.eval()


def _gap(a, b) -> float:
  """The largest difference relative to the largest magnitude of `b`."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def verify(model: nn.Module, variables: dict, state: dict, input_shape, n: int = 4,
           seed: int = 0, reference: Any = None) -> float:
  """Compares pmjax's logits with PyTorch's on the same inputs (the twin's on random
  ones, or `reference`'s {'x': NCHW inputs, 'logits'}); returns the relative gap, or
  raises TorchImportError naming the first layer whose outputs differ."""
  if reference is not None:
    x_nchw = np.asarray(reference['x'], np.float32)
    theirs = np.asarray(reference['logits'], np.float32)
    ours = model.apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), train=False)
    gap = _gap(ours, theirs)
    if not gap <= TOLERANCE:
      raise TorchImportError(f'pmjax\'s logits differ from the reference logits by {gap:.2e} '
                             f'(relative; tolerance {TOLERANCE:g}): the config\'s model is not '
                             f'the network that produced them')
    return gap
  torch = _torch()
  twin = load_twin(model, state, input_shape)
  x_nchw = np.random.default_rng(seed).normal(
      size=(n, input_shape[-1], *input_shape[:2])).astype(np.float32)
  x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
  with torch.no_grad():
    theirs = twin(torch.from_numpy(x_nchw)).numpy()
  ours = np.asarray(model.apply(variables, x, train=False))
  gap = _gap(ours, theirs)
  if gap <= TOLERANCE:
    return gap
  # Localise: each layer's output, in call order on both sides.
  torch_out, names = [], []

  def record(name):
    def hook(module, inputs, output):   # returns None: the output is kept as it is
      del module, inputs
      names.append(name)
      torch_out.append(output.numpy())
    return hook

  for name, module in twin.named_modules():
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
      module.register_forward_hook(record(name))
  with torch.no_grad():
    twin(torch.from_numpy(x_nchw))
  flax_out = []
  paths = _call_order(model, variables, x, flax_out)
  for name, path, t, f in zip(names, paths, torch_out, flax_out):
    t = t.transpose(0, 2, 3, 1) if t.ndim == 4 else t
    layer_gap = _gap(f, t) if np.shape(f) == t.shape else float('inf')
    if not layer_gap <= TOLERANCE:
      raise TorchImportError(
          f'pmjax\'s logits differ from PyTorch\'s by {gap:.2e} (relative; tolerance '
          f'{TOLERANCE:g}); first mismatching layer: PyTorch {name!r} vs pmjax '
          f'{"/".join(path)!r} (outputs differ by {layer_gap:.2e})')
  raise TorchImportError(f'pmjax\'s logits differ from PyTorch\'s by {gap:.2e} (relative; '
                         f'tolerance {TOLERANCE:g}) though every layer agrees: a step '
                         f'between layers (pooling, activation, flattening) differs')
