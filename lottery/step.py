"""The train state, the masked optax wrapper and the train step.

Everything a training run carries from one step to the next is one pytree,
`TrainState`: params, model state (e.g. BatchNorm statistics), optimizer state,
the mask, the step and the run's random key. The train step is a pure function
of (state, batch, learning rate), so it can be scanned, vmapped over
replicates or sharded without being rewritten, and a new mask -- a new value
in the state -- never recompiles it.

Pruned stays pruned: `keep_pruned(tx)` zeroes the gradients of pruned weights
before the optimizer and returns updates after which `optax.apply_updates`
leaves them exactly 0, under any optax optimizer.

Learning rates: the framework builds its optimizers at rate 1 and multiplies
their updates by the step's rate (`scale_by_learning_rate_arg`), passed as an
argument of the step; for optimizers whose update is linear in the rate (SGD
with momentum, Adam, AdamW: all of optax's) this is the same arithmetic as an
optimizer built at that rate, without `optax.inject_hyperparams`. A user's own
optimizer with its own schedule runs unchanged (leave `learning_rate` at 1).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lottery import masks as masks_lib
from lottery import rng as rng_lib
from lottery import straight_through as straight_through_lib
from lottery.errors import LotteryError

PyTree = Any
# apply_fn(params, model_state, x, *, train, rng) -> (logits, new model_state)
ApplyFn = Callable[..., tuple[jax.Array, PyTree]]
# mask_update(state, dense_grads, key) -> new mask (same structure, bool)
MaskUpdate = Callable[["TrainState", PyTree, jax.Array], PyTree]
Augment = Callable[[jax.Array, jax.Array], jax.Array]

# fold_in tags of the per-step key: one stream per use.
_AUGMENT, _DROPOUT, _MASK_UPDATE = 0, 1, 2


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step.

  Attributes:
    params: the weights (pruned entries exactly 0).
    model_state: the model's other variable collections, e.g.
      {'batch_stats': ...}; {} for models without state. Never pruned.
    opt_state: the optimizer's state.
    mask: the mask pytree (bool leaves for prunable params, None elsewhere).
    step: int32 scalar, the number of steps taken (the schedule's position).
    rng: uint32 key data of the run's key (the data seed); step s uses
      `fold_in(key, s)`, so augmentation and dropout are a pure function of
      (data seed, step) and a resumed run draws what an uninterrupted one would.
  """
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  mask: PyTree
  step: jax.Array
  rng: jax.Array

  def key(self) -> jax.Array:
    """The key of the current step."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def init_state(params: PyTree, tx: optax.GradientTransformation, *,
               mask: PyTree = None, model_state: PyTree = None, step: int = 0,
               seed: int = 0) -> TrainState:
  """A train state with a fresh optimizer state around a copy of `params`.

  The state's params are `params` masked; the optimizer's `init` receives
  `params` as given (unmasked): SR-STE's keeps them whole
  (`lottery.straight_through`), optax's optimizers read only their shapes.

  One compiled call (masking, copies, the optimizer's init and the key),
  compiled once per optimizer and shapes: run op by op, these few dozen tiny
  programs cost more than a short run's training.

  Args:
    params: starting weights; masked here, so pruned entries start at 0.
    tx: the optimizer (e.g. `keep_pruned(optax.adam(1e-3))`); hashable, as
      optax's transformations are.
    mask: the mask (None: dense, no masking ops at all).
    model_state: e.g. {'batch_stats': ...}; default {}.
    step: the step training starts at (weight rewinding starts at k > 0).
    seed: seeds the per-step keys (augmentation, dropout); 0 <= seed < 2**31.

  Raises:
    LotteryError: ('mask: ...') if `mask` is not a mask of `params`
      (`masks.check_mask`: structure, shapes, bool dtype).
  """
  if mask is None:
    mask = jax.tree.map(lambda _: None, params)
  else:
    masks_lib.check_mask(mask, params)
  return _init_state(tx, params, model_state or {}, mask,
                     np.int32(step), np.int32(seed))


@functools.partial(jax.jit, static_argnums=0)
def _init_state(tx, params, model_state, mask, step, seed) -> TrainState:
  # Copies, not the inputs: the state is donated to the compiled loop, and
  # its inputs (an experiment's initial weights, a ticket's mask) live on.
  # The optimizer's init sees the unmasked weights (see the docstring).
  opt_state = tx.init(params)
  params = jax.tree.map(jnp.copy, masks_lib.apply_mask(mask, params))
  return TrainState(
      params=params,
      model_state=jax.tree.map(jnp.copy, model_state),
      opt_state=opt_state,
      mask=jax.tree.map(lambda m: None if m is None else jnp.array(m, bool),
                        mask, is_leaf=lambda x: x is None),
      step=step,
      rng=jax.random.key_data(jax.random.key(seed)))


def keep_pruned(tx: optax.GradientTransformation
                ) -> optax.GradientTransformationExtraArgs:
  """Wraps any optax optimizer so that pruned weights stay exactly 0.

  `update(grads, state, params, mask=mask, **extra)` zeroes the gradients of
  pruned weights before `tx` sees them, and sets the updates of pruned weights
  to `-params`, so that `optax.apply_updates(params, updates)` is exactly 0
  there whatever `tx` does (momentum, Adam's moments, weight decay). The mask
  is an argument: a jitted step traces once for any number of masks. With
  `mask=None` (or a mask of None leaves) it is `tx` unchanged. Other keyword
  arguments go to `tx` (e.g. `learning_rate=` for `scale_by_learning_rate_arg`).

  Works on any params pytree whose mask comes from `lottery.make_mask`,
  including a Flax NNX model's `nnx.state(model, nnx.Param)`.

  Args:
    tx: any optax `GradientTransformation`.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Raises:
    LotteryError: ('tx: ...') if `tx` is not an optax transformation; from
      `update`, ('mask: ...') if the mask is not a mask of `params`
      (`masks.check_mask`, run when traced: no run-time cost under `jit`)
      and ('params: ...') if a mask comes without params.
  """
  if not (callable(getattr(tx, "init", None)) and
          callable(getattr(tx, "update", None))):
    raise LotteryError(f"tx: must be an optax GradientTransformation, e.g. "
                       f"optax.adam(1e-3) (got {type(tx).__name__} "
                       f"{tx!r:.60})")
  tx = optax.with_extra_args_support(tx)

  def update(updates, state, params=None, *, mask=None, **extra):
    if mask is None:
      return tx.update(updates, state, params, **extra)
    if params is None:
      raise LotteryError("params: keep_pruned's update(updates, state, "
                         "params, mask=mask) needs params with a mask, to "
                         "keep pruned weights at exactly 0 (got None)")
    # Structure, shapes and dtypes only: checked when traced, so a jitted
    # step pays nothing for it at run time.
    masks_lib.check_mask(mask, params)
    grads = masks_lib.apply_mask(mask, updates)
    new_updates, state = tx.update(grads, state, params, **extra)
    new_updates = jax.tree.map(
        lambda m, u, p: u if m is None else jnp.where(m, u, -p),
        mask, new_updates, params, is_leaf=lambda x: x is None)
    return new_updates, state

  return optax.GradientTransformationExtraArgs(tx.init, update)


def scale_by_learning_rate_arg() -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by the `learning_rate=` argument of `update`.

  Chain it after an optimizer built at rate 1 (`optax.adam(1.0)`): the rate
  becomes an argument of each step, so any schedule, replayed from any step or
  held constant, runs on one compiled step.
  """
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, learning_rate=1.0, **extra):
    del params, extra
    return jax.tree.map(lambda u: u * learning_rate, updates), state

  return optax.GradientTransformationExtraArgs(init, update)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_loss(label_smoothing: float = 0.0) -> Callable:
  """The training loss `(logits, labels) -> scalar` of a config's
  `training.label_smoothing`: `cross_entropy` itself at 0 (the same
  program), else the mean softmax cross-entropy against the one-hot labels
  smoothed by `optax.smooth_labels` ((1 - a) one-hot + a / classes)."""
  if not label_smoothing:
    return cross_entropy

  def smoothed(logits: jax.Array, labels: jax.Array) -> jax.Array:
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
        label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()
  return smoothed


def flax_apply(model) -> ApplyFn:
  """The `ApplyFn` of a Flax linen module.

  A module whose `__call__` takes `train` gets it; in training, the model's
  state collections (e.g. 'batch_stats') are mutable and returned updated; in
  evaluation they are read only. Dropout draws from the 'dropout' stream.
  """
  takes_train = "train" in inspect.signature(model.__call__).parameters

  def apply(params, model_state, x, *, train: bool, rng=None):
    variables = {"params": params, **model_state}
    kwargs = {"train": train} if takes_train else {}
    if rng is not None:
      kwargs["rngs"] = {"dropout": rng}
    if train and model_state:
      logits, new = model.apply(variables, x, mutable=list(model_state),
                                **kwargs)
      return logits, {k: new[k] for k in model_state}
    return model.apply(variables, x, **kwargs), model_state
  return apply


def _grown_to_zero(tx, opt_state, old_mask, new_mask):
  """Resets the optimizer state of weights that the new mask adds."""
  grown = jax.tree.map(
      lambda o, n: jnp.zeros((), bool) if n is None else n & ~o,
      old_mask, new_mask, is_leaf=lambda x: x is None)
  return optax.tree_map_params(
      tx, lambda s, g: jnp.where(g, jnp.zeros_like(s), s), opt_state, grown,
      transform_non_params=lambda s, *_: s)


def make_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, *,
                    loss_fn: Callable = cross_entropy,
                    augment: Augment | None = None,
                    mask_update: MaskUpdate | None = None,
                    update_every: int = 0,
                    straight_through=None,
                    ) -> Callable[[TrainState, tuple, jax.Array],
                                  tuple[TrainState, dict]]:
  """The train step: `step(state, (x, y), learning_rate) -> (state, metrics)`.

  One step: augment the batch with the step's key, forward in train mode
  (model state updated), dense gradients, the optimizer update through
  `keep_pruned`, so pruned weights stay exactly 0, then optionally a mask
  update.

  Args:
    apply_fn: see `ApplyFn` (`flax_apply(model)` for a Flax module).
    tx: the optimizer; wrapped in `keep_pruned` here (wrapping twice is
      harmless). With `scale_by_learning_rate_arg` in it, `learning_rate` is
      the step's rate.
    loss_fn: (logits, labels) -> scalar.
    augment: (key, x) -> x, e.g. `lottery.augment.get('crop_flip')`.
    mask_update: called inside the compiled step every `update_every` steps
      (at steps s > 0 with s % update_every == 0, under `lax.cond`; the
      built-in hooks change nothing at a run's last step), after
      the step's optimizer update (SET's and RigL's TF2 code), with the state
      (its params and optimizer state those after the update, its step and
      mask the step's), the step's DENSE gradient (of all weights, pruned
      ones included) and a key; returns the new mask. Weights the new mask
      adds start the next step at 0, their optimizer state reset; dropped
      weights are zeroed.
    update_every: steps between mask updates (needs `mask_update`).
    straight_through: a `lottery.straight_through.StraightThrough` (SR-STE):
      `tx` is its `optimizer(...)` wrapper (not wrapped in `keep_pruned`),
      which updates the dense weights in the optimizer state with the
      gradient at the params; params and mask are then set from them every
      step (`StraightThrough.step`). Not with `mask_update`.

  Returns:
    The step function (not jitted: jit, scan or vmap it). metrics: {'loss'}.
    With a `mask_update` it also has `.plain` (never updates the mask),
    `.updating` (always does) and `.update_every`: `lottery.loop.Loop` runs
    `.updating` at due steps and `.plain` in between, with no per-step cond
    (same results; the cond cost about 7% of a LeNet step on the CPU).
  """
  if mask_update is not None and update_every < 1:
    raise ValueError("make_train_step: mask_update needs update_every >= 1")
  if straight_through is not None and mask_update is not None:
    raise ValueError("make_train_step: straight_through sets the mask every "
                     "step; it takes no mask_update")
  if straight_through is None:
    tx = keep_pruned(tx)

  def make(update: str):
    """The step; update: 'due' (a lax.cond on the step), 'always', 'never'."""
    def step(state: TrainState, batch, learning_rate):
      if straight_through is None and isinstance(
          state.opt_state, straight_through_lib.DenseWeights):
        # At trace time: without it the SR-STE optimizer would train a
        # fixed mask.
        raise LotteryError(
            "straight_through: the optimizer state holds SR-STE's dense "
            "weights (StraightThrough.optimizer); pass straight_through=st "
            "to make_train_step, or its mask never changes")
      x, y = batch
      key = state.key()
      if augment is not None:
        x = augment(jax.random.fold_in(key, _AUGMENT), x)

      def loss(params):
        # A flat key (`lottery.rng.flat`): the same dropout, compiled faster.
        logits, model_state = apply_fn(
            params, state.model_state, x, train=True,
            rng=rng_lib.flat(jax.random.fold_in(key, _DROPOUT)))
        return loss_fn(logits, y), model_state

      (value, model_state), grads = jax.value_and_grad(loss, has_aux=True)(
          state.params)
      params, opt_state, mask = state.params, state.opt_state, state.mask
      if straight_through is not None:
        params, opt_state, mask = straight_through.step(
            tx, grads, opt_state, mask, learning_rate=learning_rate)
      else:
        updates, opt_state = tx.update(grads, opt_state, params, mask=mask,
                                       learning_rate=learning_rate)
        params = optax.apply_updates(params, updates)
      if mask_update is not None and update != "never":
        # After the step, as SET's and RigL's TF2 code: the hook sees the
        # stepped weights; grown ones start the next step at 0.
        def change(operands):
          params, opt_state, mask = operands
          new = mask_update(state.replace(params=params, opt_state=opt_state),
                            grads, jax.random.fold_in(key, _MASK_UPDATE))
          # At trace time only (shapes and dtypes).
          masks_lib.check_mask(new, params, what="mask_update's mask")
          opt_state = _grown_to_zero(tx, opt_state, mask, new)
          return masks_lib.apply_mask(new, params), opt_state, new
        if update == "always":
          params, opt_state, mask = change((params, opt_state, mask))
        else:
          due = (state.step > 0) & (state.step % update_every == 0)
          params, opt_state, mask = jax.lax.cond(
              due, change, lambda o: o, (params, opt_state, mask))
      new_state = state.replace(
          params=params, model_state=model_state, opt_state=opt_state,
          mask=mask, step=state.step + 1)
      return new_state, {"loss": value}
    return step

  step = make("due")
  if mask_update is not None:
    # For loops that know the step (`lottery.loop.Loop`): the step without
    # the hook and the step that always runs it, so that they call the hook
    # only at due steps instead of paying a lax.cond every step.
    step.plain, step.updating = make("never"), make("always")
    step.update_every = update_every
  return step


def make_eval_step(apply_fn: ApplyFn, loss_fn: Callable | None = None
                   ) -> Callable[..., dict]:
  """`evaluate(params, model_state, xs, ys, valid) -> {'loss', 'accuracy'}`.

  xs, ys, valid: (batches, B, ...) with `valid` False on padding; the model
  runs in eval mode (BatchNorm uses its running statistics).
  """
  def per_example(logits, y):
    if loss_fn is None:
      return optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jax.vmap(lambda l, t: loss_fn(l[None], t[None]))(logits, y)

  def evaluate(params, model_state, xs, ys, valid):
    def one(batch):
      xb, yb, vb = batch
      logits, _ = apply_fn(params, model_state, xb, train=False)
      losses = per_example(logits, yb)
      correct = jnp.argmax(logits, -1) == yb
      return (jnp.sum(jnp.where(vb, losses, 0.0)),
              jnp.sum(jnp.where(vb, correct, False)))
    loss, correct = jax.lax.map(one, (xs, ys, valid))
    n = jnp.sum(valid)
    return {"loss": jnp.sum(loss) / n, "accuracy": jnp.sum(correct) / n}

  return evaluate
