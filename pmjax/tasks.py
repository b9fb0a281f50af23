"""Training tasks: what is trained, on what, with which loss and evaluator.

A task gives the training loop (`pmjax.train`) everything that differs between
kinds of training, so the loop has no branch on the stage or the code:

  task.model               the Flax module being trained
  task.group_size          examples per training item (1 for F, k for a code)
  task.data                arrays put on every device besides train_x / train_y
  task.init_variables(seed)
  task.loss_fn(apply_fn, params, batch_stats, batch) -> (loss, new batch stats)
  task.batch_fn(data, idx_BxG, keys_BxG) -> batch     (pure, inside the jitted step)
  task.evaluator(variables) -> {metric: value}, with evaluator.best_key
  task.score               what "correct" means (metrics.Score: the objective's)
  task.unroll_model        the model name that decides the CPU scan unroll

Tasks are registered by name (`TASKS`): `base` (F, trained with its objective's
loss), `parity` (hand-designed codes: F_P trained with MSE towards
code.target(F(X))) and `learned` (an encoder and decoder trained through the
frozen F). A code's `CodeSpec.task` names the task that trains it;
`task_name(config)` picks.

What F predicts is the dataset's objective (`OBJECTIVES`, named by the dataset
spec's `target`): 'classification' (cross-entropy; top-1 / top-5) or 'box'
(CUB localisation: the 4 box coordinates, the original's smooth-L1 loss; scored
by IoU >= 0.5 and mean IoU). A parity model is trained the same way for both:
MSE towards the sum of F's outputs.
"""

from __future__ import annotations

from functools import partial
import math

import jax
from jax import lax
import jax.numpy as jnp
import optax

from pmjax import codes, config_utils, inference, learned, metrics, runs
from pmjax.data import builders, pipeline


def init_variables(model, seed: int, input_shape) -> dict:
  """Variables of `model` for inputs of shape (batch, *input_shape)."""
  variables = jax.jit(partial(model.init, train=False))(
      jax.random.key(seed), jnp.zeros((1, *input_shape), jnp.float32))
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}



# ---------------------------------------------------------------------------
# Objectives: what F predicts, its loss and its score.
# ---------------------------------------------------------------------------

class Objective:
  """What F is trained to output: `loss(outputs, labels)` (mean over the batch) and
  `score` (metrics.Score: what "correct" means, for A_a, A_d and the best checkpoint)."""

  def __init__(self, name, loss, score, learned_codes: bool = True):
    self.name, self.loss, self.score = name, loss, score
    self.learned_codes = learned_codes  # whether code 'learned' (class-probability losses) applies


def cross_entropy(logits_BxC, labels_B):
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B).mean()


def box_smooth_l1(out_Bx4, boxes_Bx4):
  """The original CUB script's loss: SmoothL1Loss (beta 1, mean) between F's output and
  the true box in its coordinates (2x-1, 2y-1, 2w, 2h)."""
  return optax.huber_loss(out_Bx4, metrics.unit_box_to_model(boxes_Bx4), delta=1.0).mean()


CLASSIFICATION = Objective('classification', cross_entropy, metrics.CLASSIFICATION)
BOX = Objective('box', box_smooth_l1, metrics.LOCALIZATION, learned_codes=False)
OBJECTIVES = {o.name: o for o in (CLASSIFICATION, BOX)}


def objective_of(dataset: str) -> Objective:
  """The objective of a dataset (its spec's `target`)."""
  spec = builders.get_spec(dataset)
  if spec.target not in OBJECTIVES:
    raise ValueError(f'dataset {spec.name!r} names target {spec.target!r}, which is not '
                     f'registered; known: {sorted(OBJECTIVES)}')
  return OBJECTIVES[spec.target]


# ---------------------------------------------------------------------------
# Losses and batches (pure, module level).
# ---------------------------------------------------------------------------

def _apply_train(apply_fn, params, batch_stats, x):
  """Applies a model in train mode; returns (outputs, new batch stats)."""
  if batch_stats:
    out, updates = apply_fn({'params': params, 'batch_stats': batch_stats}, x, train=True,
                            mutable=['batch_stats'])
    return out, updates['batch_stats']
  return apply_fn({'params': params}, x, train=True), batch_stats


def base_loss(apply_fn, params, batch_stats, batch, objective=None):
  """F's loss on a batch {'x', 'label'}: its objective's (cross-entropy by default)."""
  out, new_bs = _apply_train(apply_fn, params, batch_stats, batch['x'])
  return (objective or CLASSIFICATION).loss(out, batch['label']), new_bs


def parity_loss(apply_fn, params, batch_stats, batch, label_weight: float = 0.0):
  """MSE between F_P(parity queries) and the code's target {'p', 't'}; with
  label_weight > 0 (codes whose parity models answer every cell, `collage`), plus
  label_weight x the cross-entropy of each cell's answer with its image's true label
  (batch['label_BxK'])."""
  p = batch['p']
  out, new_bs = _apply_train(apply_fn, params, batch_stats, inference.parity_model_input(p))
  out_BxRxW = out.reshape(*p.shape[:2], -1)
  loss = jnp.mean((out_BxRxW - batch['t']) ** 2)
  if label_weight:
    labels_BxK = batch['label_BxK']
    b, k = labels_BxK.shape
    logits_BxRxKxC = out_BxRxW.reshape(b, p.shape[1], k, -1)
    labels_BxRxK = jnp.broadcast_to(labels_BxK[:, None], logits_BxRxKxC.shape[:3])
    c = logits_BxRxKxC.shape[-1]
    loss = loss + label_weight * cross_entropy(logits_BxRxKxC.reshape(-1, c),
                                               labels_BxRxK.reshape(-1))
  return loss, new_bs


def base_batch(data, idx_Bx1, keys_Bx1, dataset, augment):
  idx = idx_Bx1[:, 0]
  x = pipeline.preprocess(keys_Bx1[:, 0], data['train_x'][idx], dataset, augment)
  return {'x': x, 'label': data['train_y'][idx]}


def parity_batch(data, idx_BxK, keys_BxK, dataset, augment, code, base_apply,
                 labels: bool = False):
  """A batch of B groups {'p', 't'} (and the true labels 'label_BxK' if `labels`)."""
  b, k = idx_BxK.shape
  x_raw = data['train_x'][idx_BxK.reshape(-1)]
  x = pipeline.preprocess(keys_BxK.reshape(-1), x_raw, dataset, augment)
  if 'targets' in data:  # F's outputs precomputed once (no augmentation)
    y_BxKxC = data['targets'][idx_BxK]
    if 'targets_flip' in data:   # config.data.flip_targets: F's outputs on both precomputed
      flip_N = jax.vmap(lambda key: jax.random.bernoulli(jax.random.fold_in(key, 7)))(
          keys_BxK.reshape(-1))
      x = jnp.where(flip_N[:, None, None, None], x[:, :, ::-1], x)
      y_BxKxC = jnp.where(flip_N.reshape(b, k, 1), data['targets_flip'][idx_BxK], y_BxKxC)
  else:
    y_BxKxC = base_apply(data['base_vars'], x, train=False).reshape(b, k, -1)
  x_BxKx = x.reshape(b, k, *x.shape[1:])
  batch = {'p': code.encode(x_BxKx), 't': code.target(lax.stop_gradient(y_BxKxC))}
  if labels:
    batch['label_BxK'] = data['train_y'][idx_BxK]
  return batch



# ---------------------------------------------------------------------------
# Evaluators.
# ---------------------------------------------------------------------------

class BaseEvaluator:
  """Accuracy of F on val and test (`score`'s criteria); best = highest val A_a."""
  best_key = 'val_A_a'

  def __init__(self, model, dataset, splits, batch_size, score=metrics.CLASSIFICATION):
    self.predict = inference.make_predict(model, dataset)
    self.splits = {'val': (splits.val_x, splits.val_y), 'test': (splits.test_x, splits.test_y)}
    self.batch_size, self.score = batch_size, score

  def __call__(self, variables) -> dict:
    out = {}
    for name, (x, y) in self.splits.items():
      logits = inference.batched(self.predict, variables, x, self.batch_size)
      for key, v in metrics.accuracy_metrics(logits, y, self.score).items():
        out[f'{name}_{key}'] = v
    return out


class ParityEvaluator:
  """A_d and reconstruction accuracy over fixed val/test groups, every position erased.

  `parity_outputs(variables, x_GxK) -> (code, z_GxRxC)` runs the trained part:
  `inference.make_parity_outputs` (a parity model) or `learned.make_parity_outputs`
  (a learned encoder in front of the frozen F).
  """
  def __init__(self, parity_outputs, k, splits, base_logits, score=metrics.CLASSIFICATION):
    self.parity_outputs, self.score = parity_outputs, score
    self.best_key = f'val_recon_{score.keys[0]}'
    self.groups = {}
    for name in ('val', 'test'):
      x, y = getattr(splits, f'{name}_x'), getattr(splits, f'{name}_y')
      x_GxK, y_GxK = inference.fixed_groups(x, y, k)
      logits = base_logits[name][:x_GxK.shape[0] * k].reshape(*y_GxK.shape[:2], -1)
      self.groups[name] = (x_GxK, y_GxK, logits)

  def __call__(self, variables) -> dict:
    out = {}
    for name, (x_GxK, y_GxK, logits_GxKxC) in self.groups.items():
      code, z = self.parity_outputs(variables, x_GxK)
      m = metrics.degraded_metrics(code, jnp.asarray(logits_GxKxC), jnp.asarray(z),
                                   jnp.asarray(y_GxK), self.score)
      for key, v in m.items():
        if key != 'A_d_by_position':
          out[f'{name}_{key}'] = v
    return out



# ---------------------------------------------------------------------------
# The tasks.
# ---------------------------------------------------------------------------

class BaseTask:
  """F trained with its objective's loss (cross-entropy; smooth L1 for boxes) on single
  examples; best by the validation score (accuracy; fraction of boxes at IoU >= 0.5)."""

  def __init__(self, config, splits, eval_batch_size: int, base=None):
    del base
    dataset = pipeline.inputs_of(config.data)
    self.spec = builders.get_spec(dataset)
    self.objective = objective_of(dataset)
    self.score = self.objective.score
    self.model = runs.build_model(config.model, dataset, kwargs=runs.model_kwargs(config)[0])
    self.group_size = 1
    self.data = {}
    self.loss_fn = partial(base_loss, objective=self.objective)
    self.batch_fn = partial(base_batch, dataset=dataset,
                            augment=bool(config.data.get('augment', False)))
    self.evaluator = BaseEvaluator(self.model, dataset, splits, eval_batch_size, self.score)
    self.unroll_model = config.model

  def init_variables(self, seed: int) -> dict:
    return init_variables(self.model, seed, self.spec.image_shape)


class _CodeTask:
  """What the tasks that train a code share: the frozen F, its outputs on every split
  (targets precomputed once when there is no augmentation), groups of k."""

  def __init__(self, config, splits, eval_batch_size: int, base):
    self.dataset = pipeline.inputs_of(config.data)
    self.spec = builders.get_spec(self.dataset)
    self.score = objective_of(self.dataset).score
    self.base_model, self.base_vars = base
    self.augment = bool(config.data.get('augment', False))
    self.group_size = config.code.k
    self.predict = predict = inference.make_predict(self.base_model, self.dataset)
    self.base_logits = {n: inference.batched(predict, self.base_vars,
                                             getattr(splits, f'{n}_x'), eval_batch_size)
                        for n in ('val', 'test')}
    self.data = {}
    if not self.augment:
      self.data['targets'] = inference.batched(predict, self.base_vars, splits.train_x,
                                               eval_batch_size)


def label_weight(config) -> float:
  """config.parity.label_weight: the weight of the parity loss's true-label term (0: MSE
  only; a config written before the term existed has none)."""
  return float(config.get('parity', {}).get('label_weight', 0.0))


def label_term(weight: float) -> str:
  """How tables name the parity loss's true-label term ('' without one)."""
  return f'+ {weight:g} x label CE' if weight else ''


class ParityTask(_CodeTask):
  """Hand-designed codes: r parity models F_P trained with MSE towards code.target(F(X))
  (+ config.parity.label_weight x a true-label cross-entropy per cell, `collage`) over
  random groups; best by validation reconstruction accuracy."""

  def __init__(self, config, splits, eval_batch_size: int, base):
    # The code and its parity model first: a model that cannot answer the code's coded
    # queries is refused before F's outputs are computed for every split.
    self.spec = builders.get_spec(pipeline.inputs_of(config.data))
    self.code = runs.make_code(config)
    parity_name = runs.model_names(config)[1]
    self.model = runs.build_model(parity_name, pipeline.inputs_of(config.data), self.code.r,
                                  self.code.k, runs.model_kwargs(config)[1])
    self._check_output_width(parity_name, config.model)
    super().__init__(config, splits, eval_batch_size, base)
    if self.augment:
      self.data['base_vars'] = self.base_vars   # F runs inside the step on augmented X
    if config.data.get('flip_targets', False):
      if self.augment:
        raise config_utils.ConfigError(
            'config.data.flip_targets=True precomputes F on flipped images for runs '
            'without augmentation; config.data.augment=True already flips (F runs inside '
            'the step). Set one of them to False')
      # A random horizontal flip per example at the cost of none: F's outputs on the
      # flipped training images are computed once, like the unflipped ones.
      self.data['targets_flip'] = inference.batched(
          lambda v, x: self.predict(v, x[:, :, ::-1]), self.base_vars, splits.train_x,
          eval_batch_size)
    weight = self._label_weight(config)
    self.loss_fn = partial(parity_loss, label_weight=weight)
    self.batch_fn = partial(parity_batch, dataset=self.dataset, augment=self.augment,
                            code=self.code, base_apply=self.base_model.apply,
                            labels=bool(weight))
    self.evaluator = ParityEvaluator(inference.make_parity_outputs(
        self.model, self.code, self.dataset, eval_batch_size), config.code.k, splits,
                                     self.base_logits, self.score)
    self.unroll_model = parity_name

  def _label_weight(self, config) -> float:
    """config.parity.label_weight, checked: a true-label term needs a classification
    dataset and a code whose parity models answer each cell (`collage`)."""
    w = label_weight(config)
    if not math.isfinite(w) or w < 0:
      raise config_utils.ConfigError(
          f'config.parity.label_weight={w} must be a finite number >= 0 (0 = MSE only)')
    if w and (self.code.parity_width != self.code.k or
              objective_of(self.dataset) is not CLASSIFICATION):
      raise config_utils.ConfigError(
          f'config.parity.label_weight={w} adds a cross-entropy with the true labels of '
          f"each cell's image; it needs a classification dataset and a code whose parity "
          f"models answer every cell (collage); code {self.code.name!r} on "
          f'{self.dataset!r} does not: set --config.parity.label_weight=0')
    return w

  def _input_shape(self):
    r = self.code.r   # r > 1: the r stacked parity models take p_GxRx...
    shape = codes.coded_query_shape(self.code, self.spec.image_shape)
    return shape if r == 1 else (r, *shape)

  def _check_output_width(self, parity_name, base_name):
    """The parity model must answer with what the code's target holds per coded query
    (C numbers; k*C for collage), checked on shapes only before any training."""
    x = jax.ShapeDtypeStruct((1, *self._input_shape()), jnp.float32)
    out, _ = jax.eval_shape(partial(self.model.init_with_output, train=False),
                            jax.random.key(0), x)
    width = out.shape[-1]
    want = self.code.parity_width * self.spec.num_classes
    if width != want:
      hint = (f" (code {self.code.name!r} answers every cell: use a 'tiles:NAME' parity "
              f"model, e.g. parity_model=tiles:{base_name})"
              if self.code.parity_width > 1 else '')
      raise config_utils.ConfigError(
          f'parity model {parity_name!r} outputs {width} numbers per coded query; code '
          f'{self.code.name!r} with k={self.code.k} trains it towards {want}{hint}')

  def init_variables(self, seed: int) -> dict:
    return init_variables(self.model, seed, self._input_shape())


class LearnedTask(_CodeTask):
  """A learned code: an encoder and a decoder trained through the frozen F (or a
  trained copy of F) at one erased position per group."""

  def __init__(self, config, splits, eval_batch_size: int, base):
    # Refused before F's outputs are computed for every split.
    if not objective_of(config.data.name).learned_codes:
      raise config_utils.ConfigError(
          f"code 'learned' trains towards F's class probabilities; dataset "
          f"{config.data.name!r} is a {objective_of(config.data.name).name!r} task. Use "
          f"code=sum or code=concat")
    if config.data.get('augment', False):
      raise config_utils.ConfigError("code 'learned' does not support augmentation yet "
                                     "(--config.data.augment=False)")
    if config.get('parity_model') not in ('', None, config.model):
      raise config_utils.ConfigError(
          f"code 'learned' runs F's own architecture on the parity queries (frozen, or a "
          f"trained copy with --config.code.train_parity=True), not parity_model="
          f"{config.parity_model!r}; leave parity_model empty")
    if label_weight(config):
      raise config_utils.ConfigError(
          f"config.parity.label_weight={config.parity.label_weight} is a term of the "
          f"hand-designed codes' parity loss (collage); code 'learned' has its own "
          f"(code.loss): set --config.parity.label_weight=0")
    super().__init__(config, splits, eval_batch_size, base)
    self.data['base_vars'] = self.base_vars
    params = codes.code_params(config.code)
    self.train_parity = bool(params['train_parity'])
    self.model = runs.make_coder(config)
    self.loss_fn = partial(learned.learned_loss, f_apply=self.base_model.apply,
                           loss=params['loss'], train_parity=self.train_parity)
    self.batch_fn = partial(learned.learned_batch, dataset=self.dataset)
    self.evaluator = ParityEvaluator(learned.make_parity_outputs(
        self.model, self.base_model, self.base_vars, self.dataset, eval_batch_size,
        self.train_parity), config.code.k, splits, self.base_logits, self.score)
    # The coder's own layers decide (F runs frozen in the loss), and a trained copy of F's.
    self.unroll_model = 'conv' if params['encoder'] == 'conv' else 'mlp'
    if self.train_parity and config.model != 'mlp':
      self.unroll_model = config.model

  def init_variables(self, seed: int) -> dict:
    return learned.init_variables(self.model, seed, self.base_vars, self.train_parity)


TASKS = {'base': BaseTask, 'parity': ParityTask, 'learned': LearnedTask}


def task_name(config) -> str:
  """'base' for stage=base; otherwise the task that trains the config's code."""
  return 'base' if config.stage == 'base' else codes.get_code_spec(config.code.name).task


def task_score(config):
  """What "correct" means for a run of this config (its dataset's objective's score)."""
  return objective_of(config.data.name).score


def make_task(config, splits, eval_batch_size: int, base=None):
  """The task of a base or parity config; `base` = (F, its variables) for a code."""
  return TASKS[task_name(config)](config, splits, eval_batch_size, base)
