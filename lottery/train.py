"""Masked training: a jit-compiled train step run many steps per call.

`Trainer` holds the compiled functions of one experiment. Everything that
changes between rounds -- the mask, the starting weights, the learning rate of
each step, the batch order -- is an argument, so the number of XLA compilations
does not grow with the number of rounds.

Pruned stays pruned: the gradients of pruned weights are zeroed before the
optimizer, and the mask is re-applied after the update, so pruned weights are
exactly 0 under any optax optimizer (momentum, Adam, weight decay).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lottery import masks as masks_lib
from lottery.errors import LotteryError

State = dict[str, Any]  # {'params', 'opt_state', 'step'}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def batch_indices(n: int, batch_size: int, seed: int, start: int, stop: int
                  ) -> np.ndarray:
  """int32 (stop - start, batch_size) example indices of steps start..stop-1.

  Each epoch is a fresh permutation of the n examples drawn from
  `np.random.default_rng([seed, epoch])`; the last partial batch of an epoch
  is dropped. Step s is a pure function of (seed, s), so a run resumed at any
  step sees the same batches as one that was never interrupted.
  """
  per_epoch = n // batch_size
  out = np.empty((stop - start, batch_size), np.int32)
  perms: dict[int, np.ndarray] = {}
  for i, s in enumerate(range(start, stop)):
    epoch, pos = divmod(s, per_epoch)
    if epoch not in perms:
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    out[i] = perms[epoch][pos * batch_size:(pos + 1) * batch_size]
  return out


EvalSet = tuple[jax.Array, jax.Array, jax.Array]  # x, y, valid: (batches, B..)


def eval_batches(x: np.ndarray, y: np.ndarray, eval_batch: int = 1000
                 ) -> EvalSet:
  """An evaluation set on the device, zero-padded to whole batches."""
  n = len(x)
  eval_batch = min(eval_batch, n)
  nb = math.ceil(n / eval_batch)
  pad = nb * eval_batch - n
  xe = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
  ye = np.concatenate([y, np.zeros((pad,), y.dtype)])
  valid = np.arange(nb * eval_batch) < n
  return (jnp.asarray(xe.reshape((nb, eval_batch) + x.shape[1:])),
          jnp.asarray(ye.reshape(nb, eval_batch)),
          jnp.asarray(valid.reshape(nb, eval_batch)))


@dataclasses.dataclass
class Data:
  """Training arrays, and the test (and validation) sets as `EvalSet`s."""
  x: jax.Array
  y: jax.Array
  test: EvalSet
  val: EvalSet | None
  on_device: bool


def put_data(x_train, y_train, x_test, y_test, *, x_val=None, y_val=None,
             eval_batch: int = 1000, on_device: bool = True) -> Data:
  """Moves a dataset to the device in the layout `Trainer` expects.

  With `on_device=False` the training arrays stay on the host and each call
  of the train loop gathers its batches there (for datasets that do not fit).
  """
  put = jnp.asarray if on_device else np.asarray
  val = None if x_val is None else eval_batches(x_val, y_val, eval_batch)
  return Data(x=put(x_train), y=put(y_train),
              test=eval_batches(x_test, y_test, eval_batch), val=val,
              on_device=on_device)


class Trainer:
  """The compiled train and eval functions of one model + optimizer.

  Build one per experiment and reuse it for every round and control.
  """

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation):
    self.model = model
    self.tx = tx

    def loss_fn(params, xb, yb):
      return cross_entropy(model.apply({"params": params}, xb), yb)

    def step(state, mask, xb, yb, lr):
      loss, grads = jax.value_and_grad(loss_fn)(state["params"], xb, yb)
      grads = masks_lib.apply_mask(mask, grads)
      opt_state = state["opt_state"]
      opt_state = opt_state._replace(
          hyperparams={**opt_state.hyperparams, "learning_rate": lr})
      updates, opt_state = tx.update(grads, opt_state, state["params"])
      params = masks_lib.apply_mask(
          mask, optax.apply_updates(state["params"], updates))
      return {"params": params, "opt_state": opt_state,
              "step": state["step"] + 1}, loss

    def run_indexed(state, mask, x, y, idx, lrs):
      """Steps with the dataset on the device; idx: (steps, batch)."""
      def body(s, inp):
        i, lr = inp
        return step(s, mask, x[i], y[i], lr)
      return jax.lax.scan(body, state, (idx, lrs))

    def run_batches(state, mask, xb, yb, lrs):
      """Steps over host-gathered batches xb: (steps, batch, ...)."""
      def body(s, inp):
        return step(s, mask, *inp)
      return jax.lax.scan(body, state, (xb, yb, lrs))

    def evaluate(params, x_eval, y_eval, valid):
      def one(batch):
        xb, yb, vb = batch
        logits = model.apply({"params": params}, xb)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        correct = (jnp.argmax(logits, -1) == yb)
        return (jnp.sum(jnp.where(vb, losses, 0.0)),
                jnp.sum(jnp.where(vb, correct, False)))
      loss, correct = jax.lax.map(one, (x_eval, y_eval, valid))
      n = jnp.sum(valid)
      return {"loss": jnp.sum(loss) / n, "accuracy": jnp.sum(correct) / n}

    self._run_indexed = jax.jit(run_indexed, donate_argnums=0)
    self._run_batches = jax.jit(run_batches, donate_argnums=0)
    self._evaluate = jax.jit(evaluate)

  def init_state(self, params, step: int = 0) -> State:
    """A fresh optimizer state around a copy of `params`, at `step`."""
    params = jax.tree.map(jnp.array, params)  # Own copy: the state is donated.
    return {"params": params, "opt_state": self.tx.init(params),
            "step": jnp.asarray(step, jnp.int32)}

  def run(self, state: State, mask, data: Data, idx: np.ndarray,
          lrs: np.ndarray) -> tuple[State, np.ndarray]:
    """Runs len(idx) steps in one compiled call; returns (state, losses)."""
    if data.on_device:
      state, losses = self._run_indexed(state, mask, data.x, data.y,
                                        jnp.asarray(idx), jnp.asarray(lrs))
    else:
      state, losses = self._run_batches(state, mask, data.x[idx], data.y[idx],
                                        jnp.asarray(lrs))
    return state, np.asarray(losses)

  def evaluate(self, params, data: Data) -> dict[str, float]:
    """Test 'loss' and 'accuracy' over the whole test set, and 'val_loss' and
    'val_accuracy' when the data has a validation set."""
    out = {k: float(v) for k, v in self._evaluate(params, *data.test).items()}
    if data.val is not None:
      val = self._evaluate(params, *data.val)
      out.update({f"val_{k}": float(v) for k, v in val.items()})
    return out


def chunk_bounds(start: int, stop: int, every: Iterable[int],
                 extra: Iterable[int] = ()) -> list[int]:
  """Chunk boundaries: start, stop, multiples of each `every`, and `extra`."""
  b = {start, stop}
  for e in every:
    b.update(range((start // e + 1) * e, stop, e))
  b.update(s for s in extra if start < s < stop)
  return sorted(b)


def train(trainer: Trainer, state: State, mask, data: Data, *,
          stop: int, lr_fn: Callable[[int, int], np.ndarray], batch_size: int,
          data_seed: int, eval_every: int, checkpoint_every: int = 0,
          capture: Iterable[int] = (),
          history: list[dict] | None = None,
          captured: dict[int, Any] | None = None,
          on_checkpoint: Callable[[State, list, dict], None] | None = None,
          log: Callable[[str], None] | None = None,
          ) -> tuple[State, list[dict], dict[int, Any]]:
  """Trains from `state['step']` to `stop`, evaluating every `eval_every`.

  Args:
    trainer: the experiment's compiled functions.
    state: train state (donated: do not reuse it).
    mask: the mask, applied to gradients and weights at every step.
    data: from `put_data`.
    stop: the step to stop at (exclusive).
    lr_fn: (start, stop) -> learning rates of those steps.
    batch_size, data_seed: the batch order (see `batch_indices`).
    eval_every: steps between evaluations of the test set (and after the
      last step).
    checkpoint_every: steps between calls of `on_checkpoint` (0: never).
    capture: steps at which to copy the weights to host (the rewind point).
    history, captured: what a resumed run had recorded so far.
    on_checkpoint: called as (state, history, captured) at checkpoints.
    log: progress lines.

  Returns:
    (final state, history of {'step', 'loss', 'accuracy', 'train_loss'},
    {step: host copy of params} for the `capture` steps reached).

  Raises:
    LotteryError: if the training loss is not finite.
  """
  history = list(history or [])
  captured = dict(captured or {})
  start = int(state["step"])
  if start >= stop:
    raise LotteryError(f"training.steps: nothing to train from step {start} "
                       f"to {stop}")
  if start in set(capture):
    captured[start] = jax.device_get(state["params"])
  every = [eval_every] + ([checkpoint_every] if checkpoint_every else [])
  bounds = chunk_bounds(start, stop, every, capture)
  for a, b in zip(bounds[:-1], bounds[1:]):
    idx = batch_indices(len(data.y), batch_size, data_seed, a, b)
    state, losses = trainer.run(state, mask, data, idx, lr_fn(a, b))
    if not np.all(np.isfinite(losses)):
      bad = a + int(np.argmin(np.isfinite(losses)))
      raise LotteryError(f"training.learning_rate: loss became non-finite at "
                         f"step {bad} (try a lower learning rate)")
    if b in set(capture):
      captured[b] = jax.device_get(state["params"])
    if b % eval_every == 0 or b == stop:
      ev = trainer.evaluate(state["params"], data)
      history.append({"step": b, "train_loss": float(losses.mean()), **ev})
      if log:
        log(f"  step {b:6d}  train loss {losses.mean():.4f}  "
            f"test loss {ev['loss']:.4f}  test acc {ev['accuracy']:.4f}")
    if on_checkpoint and checkpoint_every and b % checkpoint_every == 0 \
        and b != stop:
      on_checkpoint(state, history, captured)
  return state, history, captured
