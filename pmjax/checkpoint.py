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
  # The state is replicated: each process works with its own local copy, and only
  # process 0 writes (others never call save), so no cross-process barriers.
  me = jax.process_index()
  if create:
    os.makedirs(path, exist_ok=True)
  return ocp.CheckpointManager(
      os.path.abspath(path), item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, create=False, enable_async_checkpointing=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=me, active_processes={me},
              barrier_sync_key_prefix=f'pmjax{me}')))


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
    """Saves the latest (and, if `is_best`, the best) checkpoint; process 0 only."""
    if jax.process_index() != 0:
      return
    # Host numpy copies of this process's replica: the same files whatever the
    # device or process count (and orbax needs no cross-process coordination).
    tree = jax.tree.map(lambda a: np.asarray(a.addressable_data(0))
                        if isinstance(a, jax.Array) else a, tree)
    epoch = int(tree['epoch'])
    self.latest.save(epoch, args=ocp.args.StandardSave(tree), force=True)
    self.latest.wait_until_finished()
    if is_best:
      self.best.save(epoch, args=ocp.args.StandardSave(tree), force=True)
      self.best.wait_until_finished()

  def restore(self, which: str, abstract_tree: dict | None) -> dict | None:
    """Restores the `which` ('latest' or 'best') checkpoint, None if there is none.

    Arrays come back on this process's first device (with `abstract_tree`,
    in its structure and dtypes, to resume; with None, as saved), whatever the
    device count the checkpoint was written with; callers replicate them.
    """
    manager = getattr(self, which)
    step = manager.latest_step()
    if step is None:
      return None
    try:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(np.shape(m), m.dtype, sharding=device),
          manager.item_metadata(step).tree if abstract_tree is None else abstract_tree)
      return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot read the {which} checkpoint {manager.directory}/{step}: '
          f'{type(e).__name__}: {str(e)[:500]}. It may be corrupt or from a different '
          f'model/config; move it away to start again (nothing was deleted).') from e

  def close(self):
    self.latest.close()
    self.best.close()
