"""A network of the user's own, outside pmjax: pmjax trains F and its parity models
from `--config.model=nets:SmallCNN` (this directory on the path) with the keyword
arguments of `config.model_kwargs`.

What pmjax asks of a model: a flax.linen Module built as `Model(num_classes=...,
**model_kwargs)` and called as `model(x_BxHxWxC, train=bool)`, returning logits
y_BxC (`train` switches batch statistics and dropout).
"""

import flax.linen as nn


class SmallCNN(nn.Module):
  """conv3x3(width) - max-pool 2 - conv3x3(2 width) - global mean - dense(hidden) -
  classes, with batch norm after each convolution."""
  num_classes: int
  width: int = 16
  hidden: int = 64

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    x = nn.relu(norm()(nn.Conv(self.width, (3, 3), use_bias=False)(x_BxHxWxC)))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(norm()(nn.Conv(2 * self.width, (3, 3), use_bias=False)(x)))
    x = x.mean(axis=(1, 2))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)
