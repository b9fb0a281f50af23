"""Flax (linen) models for base models F and parity models F_P.

Every model maps images x_BxHxWxC (float, normalised) to logits y_BxC and
takes `train` (batch statistics and dropout); `get_model(name, num_classes)`
builds one by name: a key of `MODELS`, or the user's own module by import path
('mypkg.nets:MyNet', `resolve_model`). Their convolutions are `Conv` (flax's, with tiny outputs as im2col
+ matmul on CPU) and their pools `max_pool` (non-overlapping windows as reshape + max);
`Stacked` holds a code's r parity models and runs them one after the other.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


# Convolutions whose output is at most this many pixels (H x W) run as im2col + matmul
# on CPU: XLA's CPU convolution is 5-11x slower there than the same product as one
# matmul (a 3x3 conv 64 -> 64 on 256 maps of 4x2: 17 ms forward, 40 ms with gradients,
# against 1.5 ms / 7.5 ms; from 8x4 up XLA's own is faster). The tiny maps are the last
# stages of a ResNet on the `collage` code's 16x8 cells (RESULTS.md, "The
# convolutional path"). 0 turns it off.
IM2COL_MAX_PIXELS = 8


def _im2col_conv(x_BxHxWxC, kernel_KHxKWxCxO, strides, pads, precision):
  """A 2-D convolution as one matmul over the kh*kw shifted copies of the input."""
  kh, kw, c, o = kernel_KHxKWxCxO.shape
  (sh, sw), xp = strides, jnp.pad(x_BxHxWxC, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  cols = [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  return jnp.einsum('bhwp,po->bhwo', patches, kernel_KHxKWxCxO.reshape(kh * kw * c, o),
                    precision=precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated`, but a plain 2-D NHWC convolution with a small output
  (`IM2COL_MAX_PIXELS`) runs as im2col + matmul on CPU: the same values (to float
  rounding), the same gradients, and no grouped or dilated case is touched."""
  def plain(dilation):
    return dilation is None or all(d == 1 for d in dilation)
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  if (IM2COL_MAX_PIXELS and lhs.ndim == 4 and jax.default_backend() == 'cpu'
      and feature_group_count == 1 and not kwargs and plain(lhs_dilation)
      and plain(rhs_dilation) and lax.conv_dimension_numbers(
          lhs.shape, rhs.shape, dimension_numbers) == nhwc):
    pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
            if isinstance(padding, str) else padding)
    out_hw = [(n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in
              zip(lhs.shape[1:3], pads, rhs.shape[:2], window_strides)]
    if all(lo >= 0 and hi >= 0 for lo, hi in pads) and out_hw[0] * out_hw[1] <= \
        IM2COL_MAX_PIXELS:
      return _im2col_conv(lhs, rhs, tuple(window_strides), pads, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  precision=precision, **kwargs)


@contextlib.contextmanager
def xla_convolutions():
  """Within: every convolution as XLA's own (no im2col). FLOP counts are taken so
  (`pmjax.bench`), so they do not depend on the layout: XLA's cost analysis counts an
  im2col step higher than the same step with XLA's convolutions. The switch is read when a function is traced: lower one that
  has not been traced yet (jit caches traces)."""
  global IM2COL_MAX_PIXELS
  saved, IM2COL_MAX_PIXELS = IM2COL_MAX_PIXELS, 0
  try:
    yield
  finally:
    IM2COL_MAX_PIXELS = saved


# Every model's convolutions: flax's nn.Conv (the same parameters and names) through
# `conv_general_dilated` above.
Conv = partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def max_pool(x_BxHxWxC, window=(2, 2), strides=None):
  """`nn.max_pool` with VALID padding; a non-overlapping window (strides = window) runs as
  a reshape and a max. Same values; its gradient goes through `max` instead of
  reduce-window's argmax, which XLA's CPU backend computes with index arrays (a third of
  a lenet5 step here). Only ties differ (they share the gradient): after a ReLU they are
  zeros, whose gradient the ReLU stops anyway."""
  strides = tuple(strides or window)
  if tuple(window) != strides or x_BxHxWxC.ndim != 4:
    return nn.max_pool(x_BxHxWxC, tuple(window), strides)
  (wh, ww), (b, h, w, c) = window, x_BxHxWxC.shape
  x = x_BxHxWxC[:, :h // wh * wh, :w // ww * ww]
  return jnp.max(x.reshape(b, h // wh, wh, w // ww, ww, c), axis=(2, 4))


def parm_linear_init() -> dict:
  """The original artifact's initialisation of a parity model's Linear layers
  (`util.util.init_weights` in its train/): weights N(0, 0.01^2), biases zero. Flax's
  default is LeCun normal weights (std 1/sqrt(fan_in): 0.036 for 784 inputs)."""
  return {'kernel_init': nn.initializers.normal(0.01), 'bias_init': nn.initializers.zeros}


class MLP(nn.Module):
  """The original artifact's "base-mlp": 784-200-100-10 with ReLU. `initializer='parm'`
  initialises as the original's parity models (`parm_linear_init`)."""
  num_classes: int = 10
  hidden: Sequence[int] = (200, 100)
  initializer: str = 'flax'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    init = parm_linear_init() if self.initializer == 'parm' else {}
    for h in self.hidden:
      x = nn.relu(nn.Dense(h, **init)(x))
    return nn.Dense(self.num_classes, **init)(x)


class LeNet5(nn.Module):
  """LeNet-5: conv6-pool-conv16-pool-120-84-classes (ReLU, max pooling)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(Conv(6, (5, 5), padding='SAME')(x))
    x = max_pool(x, (2, 2), (2, 2))
    x = nn.relu(Conv(16, (5, 5), padding='VALID')(x))
    x = max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120)(x))
    x = nn.relu(nn.Dense(84)(x))
    return nn.Dense(self.num_classes)(x)


class TileCNN(nn.Module):
  """A small CNN for downsampled cells (the `collage` code's `tiles:tilecnn`): conv3x3-8,
  max-pool 2, conv3x3-16, then 64 hidden units: 8 cells of 14x7 cost 0.90 of one lenet5
  on 28x28 by XLA's cost analysis (`pmjax.bench.goal_table` measures it)."""
  num_classes: int = 10
  widths: Sequence[int] = (8, 16)
  hidden: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(Conv(self.widths[0], (3, 3), padding='SAME')(x))
    x = max_pool(x, (2, 2), (2, 2))
    x = nn.relu(Conv(self.widths[1], (3, 3), padding='SAME')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


def _batch_norm(train):
  return partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = _batch_norm(train)
    y = Conv(self.features, (3, 3), self.stride, padding=1, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = Conv(self.features, (3, 3), padding=1, use_bias=False)(y)
    y = norm()(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1), self.stride, use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet of BasicBlocks in four stages. `stem='cifar'`: a 3x3 convolution and no
  max-pool (32x32 inputs); `'imagenet'`: torchvision's 7x7 stride-2 convolution and
  3x3 stride-2 max-pool (224x224 inputs)."""
  num_classes: int
  blocks: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'cifar'

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.stem == 'imagenet':
      x = Conv(self.widths[0], (7, 7), 2, padding=3, use_bias=False)(x)
      x = nn.relu(_batch_norm(train)()(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = Conv(self.widths[0], (3, 3), padding=1, use_bias=False)(x)
      x = nn.relu(_batch_norm(train)()(x))
    for stage, (n, width) in enumerate(zip(self.blocks, self.widths)):
      for i in range(n):
        x = BasicBlock(width, 2 if (i == 0 and stage > 0) else 1)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class VGG(nn.Module):
  """VGG with batch norm. `hidden=0` (CIFAR-style): global average pooling and one
  linear classifier. `hidden > 0`: the feature map flattened, then FC -> hidden ->
  classes with no non-linearity between the two, the original's speech `vgg11`
  (GCommandsPytorch's: 161x101x1 spectrograms -> 5x3x512 = 7680 -> 512 -> 30)."""
  num_classes: int
  layers: Sequence = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')
  hidden: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    for v in self.layers:
      if v == 'M':
        x = max_pool(x, (2, 2), (2, 2))
      else:
        x = Conv(v, (3, 3), padding=1)(x)
        x = nn.relu(_batch_norm(train)()(x))
    if self.hidden:
      x = nn.Dense(self.hidden)(x.reshape(x.shape[0], -1))
    else:
      x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class SpeechLeNet(nn.Module):
  """The original's speech `lenet`: conv5x5 1->20, max-pool 2, ReLU, conv5x5 20->20,
  max-pool 2, ReLU (unpadded: 161x101 -> 37x22x20 = 16280), FC 16280->1000, ReLU,
  FC->classes. Its dropout is off in the original (`self.dropout = False`)."""
  num_classes: int = 30
  widths: Sequence[int] = (20, 20)
  hidden: int = 1000

  @nn.compact
  def __call__(self, x, train: bool = False):
    for w in self.widths:
      x = nn.relu(max_pool(Conv(w, (5, 5), padding='VALID')(x), (2, 2), (2, 2)))
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


MODELS = {
    'mlp': MLP,
    'mlp_parm_init': partial(MLP, initializer='parm'),   # the original's F_P initialisation
    'lenet5': LeNet5,
    'tilecnn': TileCNN,
    'tilecnn_wide': partial(TileCNN, widths=(16, 32), hidden=128),
    'resnet18': partial(ResNet, blocks=(2, 2, 2, 2)),
    # A narrow one-block-per-stage ResNet: fast smoke tests of the conv/BN path.
    'resnet8': partial(ResNet, blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128)),
    # resnet8 narrowed for the `collage` code's half-size cells (cell='half'): 8 cells of
    # 16x16 cost 1.0 of one resnet8 on 32x32 (XLA's cost analysis; `pmjax.bench.goal_table`).
    'resnet8_narrow': partial(ResNet, blocks=(1, 1, 1, 1), widths=(12, 24, 48, 88)),
    # The original artifact's deep CIFAR-100 network: BasicBlocks in [3, 8, 36, 3].
    'resnet152': partial(ResNet, blocks=(3, 8, 36, 3)),
    # ImageNet-style stems (224x224 inputs: Cat v Dog): torchvision's resnet18, and a
    # narrow one for smoke tests.
    'resnet18_imagenet': partial(ResNet, blocks=(2, 2, 2, 2), stem='imagenet'),
    'resnet8_imagenet': partial(ResNet, blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                                stem='imagenet'),
    'vgg11': VGG,
    # Speech Commands (161x101x1 spectrograms): the original's two models, and a
    # narrow VGG for smoke tests.
    'vgg11_speech': partial(VGG, hidden=512),
    'vgg11_speech_narrow': partial(VGG, layers=(8, 'M', 16, 'M', 16, 'M', 32, 'M', 32, 'M'),
                                   hidden=64),
    'lenet_speech': SpeechLeNet,
}


class ModelError(ValueError):
  """A model name, import path, keyword argument or module that cannot give a model;
  the message names it and the fix (the command lines print it as one line)."""


# What a model must be (built-in or the user's own): a Flax linen Module taking
# num_classes (and its own keyword arguments), called as model(x_BxHxWxC, train=bool)
# and returning logits y_BxC.
MODEL_CONTRACT = ('a flax.linen Module (or a function returning one) built as '
                  'NAME(num_classes=..., **model_kwargs) and called as '
                  'model(x_BxHxWxC, train=bool) -> logits y_BxC')


def is_import_path(name: str) -> bool:
  """Whether `name` names a model by import path, 'package.module:Attribute'."""
  module, sep, attr = name.partition(':')
  return bool(sep) and all(p.isidentifier() for p in module.split('.')) \
      and all(p.isidentifier() for p in attr.split('.'))


def resolve_model(name: str):
  """The constructor `name` names: a key of `MODELS`, or the user's own module by import
  path 'package.module:Attribute' (imported as big_vision picks models by module name;
  the module must be importable: an installed package, the current directory or
  PYTHONPATH). Raises ModelError (a ValueError) naming the path and the fix."""
  if name in MODELS:
    return MODELS[name]
  if not is_import_path(name):
    raise ModelError(f'unknown model {name!r}; choices: {sorted(MODELS)}, or your own '
                     f"module by import path 'package.module:ClassName' ({MODEL_CONTRACT})")
  import importlib  # pylint: disable=g-import-not-at-top
  module_name, attr = name.split(':', 1)
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    hint = (f". If '{module_name}:' was meant as a parity model prefix: unknown prefix; "
            f"accepted: 'tilesum:NAME', 'tiles:NAME'" if attr in MODELS else '')  # 'tile:mlp'
    raise ModelError(
        f'model {name!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}). '
        f'Make it importable: run from the directory that holds it, add that directory to '
        f'PYTHONPATH, or pip install your package; or pick a built-in model '
        f'{sorted(MODELS)}{hint}') from e
  obj = module
  for part in attr.split('.'):
    if not hasattr(obj, part):
      raise ModelError(f'model {name!r}: {module_name} ({getattr(module, "__file__", "")}) '
                       f'has no attribute {attr!r}; check the name after the colon')
    obj = getattr(obj, part)
  if not callable(obj):
    raise ModelError(f'model {name!r} is a {type(obj).__name__}, not {MODEL_CONTRACT}')
  return obj


def hashable(value):
  """Lists (a config read back from JSON) as tuples: module attributes are hashed."""
  if isinstance(value, (list, tuple)):
    return tuple(hashable(v) for v in value)
  return value


def get_model(name: str, num_classes: int, model_kwargs: dict | None = None) -> nn.Module:
  """Returns the Flax module `name` (a `MODELS` key or an import path, `resolve_model`)
  with `num_classes` outputs and the keyword arguments `model_kwargs`."""
  constructor = resolve_model(name)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ModelError(f'num_classes={num_classes!r} must be a positive integer')
  kwargs = {k: hashable(v) for k, v in dict(model_kwargs or {}).items()}
  try:
    model = constructor(num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ModelError(f'model {name!r} could not be built with num_classes={num_classes} and '
                     f'model_kwargs={kwargs} ({e}); it must be {MODEL_CONTRACT}: check '
                     f'config.model_kwargs against its fields') from e
  if not isinstance(model, nn.Module):
    raise ModelError(f'model {name!r} built a {type(model).__name__}, not a flax.linen '
                     f'Module; it must be {MODEL_CONTRACT}')
  return model


def check_model(model: nn.Module, name: str, input_shape, num_classes: int | None = None):
  """Traces `model` (no compute) on one input of `input_shape` with train=False and
  True; ValueError naming `name` and the contract when it cannot run, or when its
  output is not (1, num_classes) (num_classes None: not checked)."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  try:
    variables = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), x)
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=['batch_stats'],
                                         rngs={'dropout': jax.random.key(0)}), variables)
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'model {name!r} failed on an input of shape {x.shape} '
                     f'({type(e).__name__}: {str(e)[:500]}); it must be {MODEL_CONTRACT}') from e
  if num_classes is not None and getattr(out, 'shape', None) != (1, num_classes):
    raise ModelError(f'model {name!r} returned {getattr(out, "shape", type(out).__name__)} '
                     f'for an input of shape {x.shape}; expected logits of shape '
                     f'(1, {num_classes}): it must be {MODEL_CONTRACT}')


STACKED_LAYOUTS = ('unroll', 'vmap')


class Stacked(nn.Module):
  """r independent copies of `base` (stacked parameters): x_BxRx... -> y_BxRxC.

  The r parity models of a code with r > 1 train together in one step. The
  variables are stacked along a leading axis of size r (created by `nn.vmap`, so
  every copy has its own initialisation), and `layout` chooses how a step runs them:

    'unroll' (default)  r calls of `base` on copy j's slice of the variables, one
                        after the other in straight-line code: r ordinary
                        convolutions per layer, so the step costs r times one copy's;
    'vmap'              one vmapped call. XLA turns a convolution vmapped over its
                        kernel into a grouped convolution (feature_group_count = r),
                        which its CPU backend runs ~20x slower than r plain ones
                        (RESULTS.md, "The convolutional path"); kept for comparison.

  Both give the same outputs, batch statistics and gradients (tests/test_models.py).
  """
  base: nn.Module
  r: int
  layout: str = 'unroll'

  @nn.compact
  def __call__(self, x_BxRx, train: bool = False):
    if self.layout not in STACKED_LAYOUTS:
      raise ValueError(f'Stacked layout {self.layout!r} is unknown; accepted: '
                       f'{list(STACKED_LAYOUTS)}')
    if x_BxRx.shape[1] != self.r:
      raise ValueError(f'Stacked parity models take x_BxRx... with R = r = {self.r}; got '
                       f'input shape {x_BxRx.shape}')
    if self.layout == 'vmap' or self.is_initializing():
      def apply(module, x):
        return module(x, train)
      vmapped = nn.vmap(apply, variable_axes={'params': 0, 'batch_stats': 0},
                        split_rngs={'params': True}, in_axes=1, out_axes=1,
                        axis_size=self.r)
      return vmapped(self.base, x_BxRx)
    base = self.base.clone(parent=None)   # applied functionally to each copy's slice
    stats = (self.variables.get('batch_stats') or {}).get('base')
    update_stats = train and stats is not None and self.is_mutable_collection('batch_stats')
    outs, new_stats = [], []
    for j in range(self.r):
      variables_j = Stacked.copy_variables(self.variables, j)
      if update_stats:
        out, updates = base.apply(variables_j, x_BxRx[:, j], train=True,
                                  mutable=['batch_stats'])
        new_stats.append(updates['batch_stats'])
      else:
        out = base.apply(variables_j, x_BxRx[:, j], train=train)
      outs.append(out)
    if update_stats:
      self.put_variable('batch_stats', 'base',
                        jax.tree.map(lambda *a: jnp.stack(a), *new_stats))
    return jnp.stack(outs, axis=1)

  @staticmethod
  def copy_variables(variables: dict, j: int) -> dict:
    """The variables of copy j (what the parity instance of slot j runs with `base`)."""
    return jax.tree.map(lambda a: a[j], {
        'params': variables['params']['base'],
        'batch_stats': (variables.get('batch_stats') or {}).get('base', {})})


class TileSum(nn.Module):
  """A parity model for `concat` queries: one shared network on every tile, summed.

  The `concat` parity query tiles k downsampled images in a rows x cols grid
  and its target is the sum of the k outputs; this architecture applies
  `inner` to each of the first k tiles and sums, so it only has to learn F on
  downsampled images. `reduce='stack'` (the `collage` code's `tiles:NAME`) returns
  the k tile outputs side by side instead: y_Bx(K*C).
  """
  inner: nn.Module
  k: int
  rows: int
  cols: int
  reduce: str = 'sum'

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    b, h, w, c = x_BxHxWxC.shape
    ch, cw = h // self.rows, w // self.cols   # a grid that does not divide: the padding
    x_BxHxWxC = x_BxHxWxC[:, :self.rows * ch, :self.cols * cw]   # rows/columns are dropped
    tiles = x_BxHxWxC.reshape(b, self.rows, ch, self.cols, cw, c).transpose(0, 1, 3, 2, 4, 5)
    tiles = tiles.reshape(b * self.rows * self.cols, ch, cw, c)
    out = self.inner(tiles, train).reshape(b, self.rows * self.cols, -1)
    if self.reduce == 'stack':
      return out[:, :self.k].reshape(b, -1)
    return jnp.sum(out[:, :self.k], axis=1)


PARITY_PREFIXES = ('tilesum:', 'tiles:')


def get_parity_model(name: str, num_classes: int, r: int = 1, k: int | None = None,
                     image_shape=None, model_kwargs: dict | None = None) -> nn.Module:
  """The parity model(s) of a code with r parities: `name` itself for r = 1, else
  `Stacked` r copies taking x_BxRx... `tilesum:NAME` is `TileSum` over NAME for
  `concat` queries (needs k and image_shape for the grid); `tiles:NAME` runs NAME on
  every cell and returns the k answers (k*num_classes outputs: the `collage` code).
  NAME is a `MODELS` key or an import path (`resolve_model`), built with `model_kwargs`."""
  prefix = next((p for p in PARITY_PREFIXES if name.startswith(p)), '')
  if prefix:
    if k is None or image_shape is None:
      raise ValueError(f'parity model {name!r} needs k and image_shape (the concat grid)')
    from pmjax.codes import concat_grid  # pylint: disable=g-import-not-at-top
    rows, cols = concat_grid(k, image_shape)
    model = TileSum(get_model(name[len(prefix):], num_classes, model_kwargs), k, rows, cols,
                    reduce='sum' if prefix == 'tilesum:' else 'stack')
  else:
    model = get_model(name, num_classes, model_kwargs)
  return model if r == 1 else Stacked(model, r)
