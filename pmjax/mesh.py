"""The data-parallel mesh and moving replicated state between it and this process.

Training is data parallel over a 1-D ('data',) mesh of every device, local and
across hosts; state is replicated over it, and each process reads or saves its
own copy.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  """A 1-D ('data',) mesh over every device, local and across hosts."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def local_copy(tree):
  """Replicated global arrays -> this process's copy (works with several processes);
  other leaves are returned as they are."""
  return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)
