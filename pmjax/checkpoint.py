"""Orbax checkpoints: the latest (to resume) and the best (by a validation metric).

Layout: W/checkpoints/latest/<epoch>/ and W/checkpoints/best/<epoch>/, one kept
each. The saved tree is a plain dict: {'params', 'batch_stats', 'opt_state',
'step', 'epoch', 'best_metric'}. Orbax writes to a temporary directory and
renames it, so an interrupted save never destroys the previous checkpoint.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing or cannot be read."""


def _manager(path: str, create: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(path), item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=create,
                                           enable_async_checkpointing=False))


class Checkpoints:
  """The two checkpoint managers of one workdir."""

  def __init__(self, workdir: str, create: bool = True):
    self.workdir = workdir
    root = os.path.join(workdir, 'checkpoints')
    if not create and not os.path.isdir(root):
      raise CheckpointError(
          f'no checkpoints in {os.path.abspath(workdir)} (looked for {root}); train first '
          f'with `python -m pmjax.train --workdir={workdir} ...`, or pass the workdir '
          f'of a finished run')
    self.latest = _manager(os.path.join(root, 'latest'), create)
    self.best = _manager(os.path.join(root, 'best'), create)

  def save(self, tree: dict, is_best: bool):
    epoch = int(tree['epoch'])
    self.latest.save(epoch, args=ocp.args.StandardSave(tree), force=True)
    self.latest.wait_until_finished()
    if is_best:
      self.best.save(epoch, args=ocp.args.StandardSave(tree), force=True)
      self.best.wait_until_finished()

  def restore(self, which: str, abstract_tree: dict | None) -> dict | None:
    """Restores the `which` ('latest' or 'best') checkpoint, None if there is none.

    With `abstract_tree` the arrays come back with its shapes and shardings
    (to resume); with None, as saved, on this process's first device (to load
    a model whatever the device count it was trained on).
    """
    manager = getattr(self, which)
    step = manager.latest_step()
    if step is None:
      return None
    try:
      if abstract_tree is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(step).tree)
      else:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                           sharding=getattr(x, 'sharding', None)),
            abstract_tree)
      return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot read the {which} checkpoint {manager.directory}/{step}: '
          f'{type(e).__name__}: {str(e)[:500]}. It may be corrupt or from a different '
          f'model/config; move it away to start again (nothing was deleted).') from e

  def close(self):
    self.latest.close()
    self.best.close()
