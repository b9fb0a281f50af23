"""Metrics: accuracy, degraded-mode accuracy of decoded answers, A_o, and writers.

A_d: over every test group and every erased position, the accuracy of the
decoded answer against the true label; "reconstruction accuracy" compares it
with F's own answer instead. A_o(f_u) = (1 - f_u) A_a + f_u A_d.

What "correct" means is a `Score`: `correct(outputs, labels)` gives one boolean
(or number: a mean IoU) per example for each of its criteria (classification: the
label is the top-1, and among the top-5, outputs), the first one primary (A_a,
A_o, the best checkpoint); `agree(outputs, reference)` says whether a
reconstruction gives F's answer (an array, for the primary criterion, or a dict
of criteria). Localisation (`BoxIoU`: a box is correct at IoU >= 0.5 with the
true one; mean IoU; recon IoU against F's box) is the other score here; a task
brings its own (`pmjax.tasks`: the dataset's objective), and the metric
functions below take any.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

F_U = (0.01, 0.05, 0.1, 0.2, 0.5)


def topk_correct(logits_NxC, labels_N, k: int = 1):
  """Boolean N: whether the label is among the k largest logits."""
  k = min(k, logits_NxC.shape[-1])
  _, top_Nxk = jax.lax.top_k(logits_NxC, k)
  return jnp.any(top_Nxk == labels_N[:, None], axis=-1)


@partial(jax.jit, static_argnums=0)
def decoded_per_erasure(code, y_GxKxC, z_GxRxC):
  """For each position j, the decoded output when only j is erased: GxKxC."""
  g, k, _ = y_GxKxC.shape
  zavail_GxR = jnp.ones(z_GxRxC.shape[:2], bool)

  def erase(j):
    avail_GxK = jnp.broadcast_to(jnp.arange(k) != j, (g, k))
    return code.decode(y_GxKxC, avail_GxK, z_GxRxC, zavail_GxR)[:, j]

  return jnp.stack([erase(j) for j in range(k)], axis=1)


class TopK:
  """Classification: correct when the label is the top-1 output (and among the top-5);
  a reconstruction agrees with F when its argmax is F's."""
  keys = ('top1', 'top5')

  def correct(self, outputs_NxC, labels_N) -> dict:
    return {'top1': topk_correct(outputs_NxC, labels_N, 1),
            'top5': topk_correct(outputs_NxC, labels_N, 5)}

  def correct_one(self, output_C, label) -> bool:
    """numpy, one query (the serving load generator's check)."""
    return int(np.argmax(output_C)) == int(label)

  def describe(self, output_C) -> dict:
    """What a server answers for one output: its class."""
    return {'label': int(np.argmax(output_C))}

  def agree(self, outputs_NxC, reference_NxC) -> dict:
    return {'top1': jnp.argmax(outputs_NxC, -1) == jnp.argmax(reference_NxC, -1)}


CLASSIFICATION = TopK()


def model_box_to_unit(out_Nx4, xp=jnp):
  """A localisation model's output, the original's box coordinates (2x-1, 2y-1, 2w, 2h)
  of an (x, y, w, h) box in fractions of the image, -> that (x, y, w, h) box, cropped
  to the image as the original's `crop_boxes` (corners clipped to [0, 1])."""
  x, y, w, h = ((out_Nx4[..., 0] + 1) / 2, (out_Nx4[..., 1] + 1) / 2,
                out_Nx4[..., 2] / 2, out_Nx4[..., 3] / 2)
  x1, y1 = xp.clip(x, 0, 1), xp.clip(y, 0, 1)
  x2, y2 = xp.clip(x + w, 0, 1), xp.clip(y + h, 0, 1)
  return xp.stack([x1, y1, x2 - x1, y2 - y1], -1)


def unit_box_to_model(box_Nx4, xp=jnp):
  """(x, y, w, h) in fractions of the image -> the model's (2x-1, 2y-1, 2w, 2h)."""
  return box_Nx4 * 2 - xp.asarray([1.0, 1.0, 0.0, 0.0], box_Nx4.dtype)


def box_iou(a_Nx4, b_Nx4, xp=jnp):
  """IoU of (x, y, w, h) boxes (continuous coordinates: x2 = x + w); 0 for empty boxes."""
  iw = xp.clip(xp.minimum(a_Nx4[..., 0] + a_Nx4[..., 2], b_Nx4[..., 0] + b_Nx4[..., 2])
               - xp.maximum(a_Nx4[..., 0], b_Nx4[..., 0]), 0, None)
  ih = xp.clip(xp.minimum(a_Nx4[..., 1] + a_Nx4[..., 3], b_Nx4[..., 1] + b_Nx4[..., 3])
               - xp.maximum(a_Nx4[..., 1], b_Nx4[..., 1]), 0, None)
  inter = iw * ih
  union = (xp.clip(a_Nx4[..., 2], 0, None) * xp.clip(a_Nx4[..., 3], 0, None)
           + xp.clip(b_Nx4[..., 2], 0, None) * xp.clip(b_Nx4[..., 3], 0, None) - inter)
  return xp.where(union > 0, inter / xp.where(union > 0, union, 1), 0.0)


class BoxIoU:
  """Localisation: an output box (the model's coordinates, `model_box_to_unit`) is correct
  when its IoU with the true box (x, y, w, h in fractions of the image) is >= `threshold`
  ('iou50'); 'iou' is the IoU itself (means give mean IoU). A reconstruction agrees with
  F's own box by the same two criteria (recon_iou50, recon_iou)."""
  keys = ('iou50', 'iou')

  def __init__(self, threshold: float = 0.5):
    self.threshold = threshold

  def correct(self, outputs_Nx4, boxes_Nx4) -> dict:
    iou = box_iou(model_box_to_unit(outputs_Nx4), boxes_Nx4)
    return {'iou50': iou >= self.threshold, 'iou': iou}

  def agree(self, outputs_Nx4, reference_Nx4) -> dict:
    iou = box_iou(model_box_to_unit(outputs_Nx4), model_box_to_unit(reference_Nx4))
    return {'iou50': iou >= self.threshold, 'iou': iou}

  def correct_one(self, output_4, box_4) -> bool:
    """numpy, one query (the serving load generator's check)."""
    out = model_box_to_unit(np.asarray(output_4, np.float32)[None], np)
    return bool(box_iou(out, np.asarray(box_4, np.float32)[None], np)[0] >= self.threshold)

  def describe(self, output_4) -> dict:
    """What a server answers for one output: the box (x, y, w, h) in fractions of the
    image, cropped to it."""
    return {'box': model_box_to_unit(np.asarray(output_4, np.float32)[None], np)[0].tolist()}

  def __hash__(self):
    return hash(('BoxIoU', self.threshold))

  def __eq__(self, other):
    return isinstance(other, BoxIoU) and other.threshold == self.threshold


LOCALIZATION = BoxIoU(0.5)


@partial(jax.jit, static_argnums=3)
def _degraded(decoded_GxKxC, y_GxKxC, labels_GxK, score):
  g, k, c = decoded_GxKxC.shape
  flat = decoded_GxKxC.reshape(-1, c)
  correct = score.correct(flat, labels_GxK.reshape(g * k, *labels_GxK.shape[2:]))
  primary = correct[score.keys[0]].reshape(g, k)
  agree = score.agree(flat, y_GxKxC.reshape(-1, c))
  if not isinstance(agree, dict):   # one criterion: the primary one's
    agree = {score.keys[0]: agree}
  return ({n: v.mean() for n, v in correct.items()}, {n: v.mean() for n, v in agree.items()},
          primary.mean(axis=0))


def degraded_metrics(code, y_GxKxC, z_GxRxC, labels_GxK, score=CLASSIFICATION) -> dict:
  """A_d for each of the score's criteria (A_d_top1, A_d_top5; boxes: A_d_iou50, A_d_iou),
  reconstruction (agreement with F: recon_top1; boxes: recon_iou50, recon_iou) and A_d
  by erased position (primary criterion). Labels are GxK classes or GxKx4 boxes."""
  decoded = decoded_per_erasure(code, y_GxKxC, z_GxRxC)
  means, agree, by_pos = jax.device_get(_degraded(decoded, y_GxKxC, labels_GxK, score))
  return {**{f'A_d_{n}': float(means[n]) for n in score.keys},
          **{f'recon_{n}': float(v) for n, v in agree.items()},
          'A_d_by_position': [float(v) for v in by_pos]}


def accuracy_metrics(logits_NxC, labels_N, score=CLASSIFICATION) -> dict:
  """A_a (the primary criterion) and A_a_<key> for the others (A_a_top5)."""
  correct = score.correct(logits_NxC, labels_N)
  return {('A_a' if i == 0 else f'A_a_{k}'): float(correct[k].mean())
          for i, k in enumerate(score.keys)}


def overall_accuracy(a_a: float, a_d: float, f_us=F_U) -> dict:
  """A_o(f_u) = (1 - f_u) A_a + f_u A_d for each f_u."""
  return {str(f): (1 - f) * a_a + f * a_d for f in f_us}


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch where this process has not
  imported it: tensorboardX imports torch at import time wherever it is installed (~1.6
  CPU-s, in every training run), only to accept torch tensors, and pmjax logs floats
  (tensorboardX converts a torch tensor by importing torch when it meets one)."""
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None   # `import torch` raises ImportError: tensorboardX goes on
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if 'torch' in sys.modules and sys.modules['torch'] is None:
      del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """Per-epoch metrics to W/metrics.jsonl and TensorBoard event files in W/tb."""

  def __init__(self, workdir: str, resume_epoch: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    self._tb_dir = os.path.join(workdir, 'tb')
    if not enabled:
      return
    # On resume, forget epochs after the restored checkpoint: they are re-run (and a
    # line torn by a kill is dropped).
    if os.path.exists(self.path):
      rows = read_metrics(workdir)
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        for row in rows:
          if row.get('epoch', 0) <= resume_epoch:
            f.write(json.dumps(row) + '\n')
      os.replace(tmp, self.path)

  def write(self, epoch: int, metrics: dict):
    if not self.enabled:
      return
    row = {'epoch': epoch, **metrics}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
      f.flush()
      os.fsync(f.fileno())
    if self._tb is None:
      self._tb = _summary_writer_class()(self._tb_dir)
    for key, value in metrics.items():
      if isinstance(value, (int, float, np.floating)):
        self._tb.add_scalar(key, float(value), epoch)
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except ValueError:
        print(f'pmjax: warning: skipped line {number} of {path}, which is not complete '
              f'JSON (a write interrupted by a kill?)', flush=True)
  return rows


def degraded_by_missing(code, y_GxKxC, z_GxRxC, labels_GxK, score=CLASSIFICATION) -> dict:
  """For m = 1..r missing outputs: accuracy of the decoded answers over every test
  group and every pattern of m erased outputs among the k + r (data or parity)
  that erases at least one data output, with a breakdown by how many data
  outputs are missing and how many parity outputs are in ('d data missing, p
  of r parities in'). Patterns with m = r erased are those a serving loop that
  decodes at k of k + r outputs sees. Every pattern must decode (finite outputs).
  """
  import itertools  # pylint: disable=g-import-not-at-top
  k, r = code.k, code.r
  g = y_GxKxC.shape[0]
  decode = jax.jit(code.decode)
  labels = np.asarray(labels_GxK)
  out = {}
  for m in range(1, r + 1):
    correct = total = 0
    patterns = undecodable = 0
    by_kind = {}
    for erased in itertools.combinations(range(k + r), m):
      data = [i for i in erased if i < k]
      if not data:
        continue
      avail = np.ones((g, k), bool)
      zavail = np.ones((g, r), bool)
      avail[:, data] = False
      zavail[:, [i - k for i in erased if i >= k]] = False
      yhat = np.asarray(decode(y_GxKxC, avail, z_GxRxC, zavail))[:, data]
      patterns += 1
      undecodable += int(not np.all(np.isfinite(yhat)))
      hits = int(np.sum(np.asarray(score.correct(
          jnp.asarray(yhat.reshape(-1, yhat.shape[-1])),
          jnp.asarray(labels[:, data].reshape(-1, *labels.shape[2:])))[score.keys[0]])))
      correct += hits
      total += yhat.shape[0] * len(data)
      kind = f'{len(data)} data missing, {int(zavail[0].sum())} of {r} parities in'
      c, t = by_kind.get(kind, (0, 0))
      by_kind[kind] = (c + hits, t + yhat.shape[0] * len(data))
    out[str(m)] = {f'A_d_{score.keys[0]}': correct / total, 'patterns': patterns,
                   'undecodable_patterns': undecodable,
                   'by_kind': {kind: c / t for kind, (c, t) in sorted(by_kind.items())}}
  return out
