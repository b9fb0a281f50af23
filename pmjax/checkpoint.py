"""Orbax checkpoints: the latest (to resume) and the best (by a validation metric).

Layout: W/checkpoints/latest/<epoch>/ (the two newest kept) and
W/checkpoints/best/<epoch>/ (one kept). The saved tree is a plain dict:
{'params', 'batch_stats', 'opt_state', 'step', 'epoch', 'best_metric',
'best_epoch', 'checksum'}.

What survives what:
- a kill at any point: orbax writes a step into a temporary directory and
  renames it when complete, so a step is there whole or not at all; stale
  temporary directories are removed when the workdir is opened again. The
  training loop saves best, then the metrics row, then latest, so whatever
  is newer than the latest checkpoint is re-done identically on resume (and
  `repair_best` restores a best checkpoint that went missing from the latest
  one, when latest still holds that epoch);
- a corrupted file: `checksum` is a sha256 over every saved array, verified on
  restore. A latest step that fails is moved to W/checkpoints/corrupt/ and
  the previous one is used, with one line saying so; a best step that fails
  raises `CheckpointError` (there is no other best to fall back to).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from pmjax import mesh


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt or cannot be written."""


TMP_MARKER = '.orbax-checkpoint-tmp'
KEEP = {'latest': 2, 'best': 1}


def tree_checksum(tree: dict) -> np.ndarray:
  """sha256 over every array of `tree` except 'checksum', as 32 uint8.

  Order-free (the sorted per-leaf digests are hashed), so it is the same for
  the tree as saved and as restored without its Python structure (optax
  states come back as dicts when read by metadata)."""
  digests = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if path and getattr(path[0], 'key', None) == 'checksum':
      continue
    a = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
    digests.append(h.digest())
  return np.frombuffer(hashlib.sha256(b''.join(sorted(digests))).digest(), np.uint8).copy()


def _manager(path: str, keep: int) -> ocp.CheckpointManager:
  # The state is replicated: each process works with its own local copy, and only
  # process 0 writes (others never call save), so no cross-process barriers.
  me = jax.process_index()
  return ocp.CheckpointManager(
      os.path.abspath(path), item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=False, enable_async_checkpointing=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=me, active_processes={me},
              barrier_sync_key_prefix=f'pmjax{me}')))


def _one_line(e: BaseException) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:300]}'


class Checkpoints:
  """The two checkpoint managers of one workdir."""

  def __init__(self, workdir: str, create: bool = True):
    self.workdir = workdir
    self.root = os.path.join(workdir, 'checkpoints')
    if not create and not os.path.isdir(self.root):
      raise CheckpointError(
          f'no checkpoints in {os.path.abspath(workdir)} (looked for {self.root}); train first '
          f'with `python -m pmjax.train --workdir={workdir} ...`, or pass the workdir '
          f'of a finished run')
    if create:
      for which in KEEP:
        os.makedirs(os.path.join(self.root, which), exist_ok=True)
      if jax.process_index() == 0:
        self._remove_stale_tmp()
    self._open()

  def _open(self):
    self.latest = _manager(os.path.join(self.root, 'latest'), KEEP['latest'])
    self.best = _manager(os.path.join(self.root, 'best'), KEEP['best'])

  def _remove_stale_tmp(self):
    """Temporary directories of saves that were killed: never a complete checkpoint."""
    for path in glob.glob(os.path.join(self.root, '*', f'*{TMP_MARKER}*')):
      shutil.rmtree(path, ignore_errors=True)
      print(f'pmjax: removed {path}, left by an interrupted checkpoint save', flush=True)

  def steps(self, which: str) -> list:
    return sorted(getattr(self, which).all_steps())

  # ------------------------------------------------------------------ save

  def save(self, which: str, tree: dict):
    """Saves `tree` as step tree['epoch'] of `which` ('latest' or 'best'); process 0 only.

    A step of that number left by an interrupted attempt of the same epoch is
    replaced. A failed write (e.g. disk full) leaves the previous checkpoints as
    they were and raises one clear `CheckpointError`."""
    if jax.process_index() != 0:
      return
    # Host numpy copies of this process's replica: the same files whatever the
    # device or process count (and orbax needs no cross-process coordination).
    tree = jax.tree.map(np.asarray, mesh.local_copy(tree))
    tree['checksum'] = tree_checksum(tree)
    epoch = int(tree['epoch'])
    manager = getattr(self, which)
    if epoch in manager.all_steps():
      shutil.rmtree(os.path.join(self.root, which, str(epoch)))
      manager.reload()
    try:
      manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._remove_stale_tmp()
      raise CheckpointError(
          f'could not write the {which} checkpoint {manager.directory}/{epoch} '
          f'({_one_line(e)}); the previous checkpoints are kept. Free disk space or fix '
          f'the permissions of {self.root}, then re-run to resume.') from None

  # ------------------------------------------------------------------ restore

  def _restore_step(self, which: str, step: int, abstract_tree: dict | None) -> dict:
    """One step, verified; raises CheckpointError with a one-line reason."""
    manager = getattr(self, which)
    where = f'{manager.directory}/{step}'
    try:
      saved = manager.item_metadata(step).tree
      if abstract_tree is None:
        abstract_tree = saved
      else:  # checkpoints written before a field existed do not have it
        abstract_tree = {k: v for k, v in abstract_tree.items() if k in saved}
      # Host numpy arrays, exactly as saved (64-bit scalars stay 64-bit), so the
      # checksum can be verified; callers put them on devices.
      abstract = jax.tree.map(lambda m: np.empty(np.shape(m), m.dtype), abstract_tree)
      tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot read the {which} checkpoint {where} ({_one_line(e)}); it may be corrupt '
          f'or from a different model/config') from None
    if 'checksum' not in tree:
      print(f'pmjax: note: {where} was written before checkpoints carried a checksum; '
            f'it is used unverified', flush=True)
    elif not np.array_equal(np.asarray(tree['checksum']), tree_checksum(tree)):
      raise CheckpointError(
          f'the {which} checkpoint {where} is corrupt: its arrays do not match the '
          f'checksum written with them (a changed or damaged file)')
    return tree

  def restore(self, which: str, abstract_tree: dict | None) -> dict | None:
    """Restores the newest good `which` ('latest' or 'best') checkpoint, None if none.

    Arrays come back as host numpy arrays (with `abstract_tree`, in its
    structure and dtypes, to resume; with None, as saved), whatever the device
    count the checkpoint was written with; callers replicate them.
    A corrupt latest step is moved to W/checkpoints/corrupt/ when an older good
    one exists (one line says so); otherwise CheckpointError names the step
    and the fix, and nothing is moved or deleted.
    """
    steps = self.steps(which)
    if not steps:
      return None
    failures = []
    for step in reversed(steps):
      try:
        tree = self._restore_step(which, step, abstract_tree)
      except CheckpointError as e:
        failures.append((step, str(e)))
        continue
      if failures:
        for _, why in failures:
          print(f'pmjax: {why}', flush=True)
        if jax.process_index() == 0:
          self._quarantine(which, [s for s, _ in failures])
        print(f'pmjax: using the {which} checkpoint of epoch {step} instead; the epochs '
              f'after it are re-run', flush=True)
      return tree
    raise CheckpointError(
        f'{failures[0][1]}. No good {which} checkpoint is left in {self.root}/{which} '
        f'(steps {steps}); nothing was deleted. To fix: move {self.root} away to start '
        f'again, or restore it from a copy.')

  def _quarantine(self, which: str, steps: list):
    dest = os.path.join(self.root, 'corrupt')
    os.makedirs(dest, exist_ok=True)
    for step in steps:
      to = os.path.join(dest, f'{which}-{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      shutil.move(os.path.join(self.root, which, str(step)), to)
      print(f'pmjax: moved the corrupt {which}/{step} to {to}', flush=True)
    self.close()
    self._open()

  def repair_best(self, latest_tree: dict):
    """Makes best agree with the latest checkpoint's record of it (process 0).

    The latest tree names the best epoch; if best lacks it (removed by hand, or
    lost by a kill between the two saves of a pmjax that wrote latest first)
    and latest still holds that epoch, it is copied to best. Checkpoints
    written before `best_epoch` existed are left as they are."""
    if jax.process_index() != 0 or 'best_epoch' not in latest_tree:
      return
    best_epoch, epoch = int(latest_tree['best_epoch']), int(latest_tree['epoch'])
    best_steps = self.best.all_steps()
    if best_epoch <= 0 or best_epoch in best_steps or any(s > epoch for s in best_steps):
      return  # consistent, or a newer best that the resumed run re-does identically
    if best_epoch == epoch:
      source = latest_tree
    elif best_epoch in self.latest.all_steps():
      source = self._restore_step('latest', best_epoch, None)
    else:
      print(f'pmjax: warning: the best checkpoint (epoch {best_epoch}) is missing from '
            f'{self.root}/best and cannot be rebuilt', flush=True)
      return
    print(f'pmjax: best/{best_epoch} was missing (an interrupted save); restored it from '
          f'latest/{best_epoch}', flush=True)
    self.save('best', dict(source))

  def close(self):
    self.latest.close()
    self.best.close()
