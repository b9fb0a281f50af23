"""F = this directory's `nets.SmallCNN` on MNIST, then a k=2 `concat` parity model of
the same architecture, end to end (pmjax's MNIST config with the model swapped).

    cd examples/own_model
    python -m pmjax.train --config=config.py --workdir=/tmp/own_model
    python -m pmjax.evaluate --workdir=/tmp/own_model

Arguments as configs/default.py's (`config.py:smoke` for a few steps). `python -m`
puts the current directory on the path, so `nets` is found from here; elsewhere add
this directory to PYTHONPATH.
"""

from configs import mnist


def get_config(arg=None):
  c = mnist.get_config(arg)
  c.model = 'nets:SmallCNN'                    # package.module:Attribute
  c.model_kwargs = {'width': 16, 'hidden': 64}  # SmallCNN's own fields
  # The parity model is F's architecture with F's kwargs unless set:
  # c.parity_model = 'nets:SmallCNN'; c.parity_model_kwargs = {'width': 32}
  if not c.smoke:
    c.base.num_epochs, c.parity.num_epochs = 10, 30
  return c
