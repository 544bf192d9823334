"""The host loop around the compiled train step: data, chunks, loop forms.

A training run is cut into chunks at evaluations, checkpoints and capture
steps; each chunk is one call of a compiled function. Everything that changes
between runs -- the state (with its mask), the learning rate of each step, the
batch order -- is an argument, so the number of XLA compilations does not grow
with the number of rounds.

Loop forms. A chunk runs as
  scan    one `lax.scan` over the chunk's steps (fewest dispatches; best for
          dense layers on any platform and for everything on accelerators);
  unroll  the same scan unrolled `UNROLL` steps at a time;
  python  the jitted step called once per step from Python.
On the CPU, XLA runs convolutions inside a rolled loop far slower than the
same step called on its own (`python -m experiments.benchmark` measures it), so
'auto' picks 'python' for models with convolution kernels on the CPU and
'scan' everywhere else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery.errors import LotteryError
from lottery.step import TrainState

FORMS = ("auto", "scan", "unroll", "python")
UNROLL = 10
# A loss this many times its starting value (and above 1) has diverged.
DIVERGED = 1e3


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
  x: Any
  y: Any
  test: EvalSet
  val: EvalSet | None
  on_device: bool


def put_data(x_train, y_train, x_test, y_test, *, x_val=None, y_val=None,
             eval_batch: int = 1000, on_device: bool = True) -> Data:
  """Moves a dataset to the device in the layout `Loop` expects.

  With `on_device=False` the training arrays stay on the host and each call
  of the loop gathers its batches there (for datasets that do not fit).
  """
  put = jnp.asarray if on_device else np.asarray
  val = None if x_val is None else eval_batches(x_val, y_val, eval_batch)
  return Data(x=put(x_train), y=put(y_train),
              test=eval_batches(x_test, y_test, eval_batch), val=val,
              on_device=on_device)


def choose_form(form: str, params) -> str:
  """Resolves 'auto' for `params`' model on the default backend."""
  if form != "auto":
    return form
  has_conv = any(np.ndim(p) >= 3 for p in jax.tree.leaves(params))
  return "python" if has_conv and jax.default_backend() == "cpu" else "scan"


class Loop:
  """The compiled forms of one train step and its evaluation.

  Build one per experiment and reuse it for every run: a run with a new mask,
  new weights or new learning rates calls the same compiled functions.
  """

  def __init__(self, step_fn: Callable, eval_fn: Callable, *,
               form: str = "scan"):
    if form not in FORMS or form == "auto":
      raise LotteryError(f"training.loop: must be one of {list(FORMS[1:])} "
                         f"once resolved (got {form!r})")
    self.form = form
    unroll = UNROLL if form == "unroll" else 1

    def scan_indexed(state, x, y, idx, lrs):
      def body(s, inp):
        i, lr = inp
        s, m = step_fn(s, (x[i], y[i]), lr)
        return s, m["loss"]
      return jax.lax.scan(body, state, (idx, lrs), unroll=unroll)

    def scan_batches(state, xb, yb, lrs):
      def body(s, inp):
        xi, yi, lr = inp
        s, m = step_fn(s, (xi, yi), lr)
        return s, m["loss"]
      return jax.lax.scan(body, state, (xb, yb, lrs), unroll=unroll)

    def one_indexed(state, x, y, b, lr):
      s, m = step_fn(state, (x[b], y[b]), lr)
      return s, m["loss"]

    def one_batch(state, xb, yb, lr):
      s, m = step_fn(state, (xb, yb), lr)
      return s, m["loss"]

    self._scan_indexed = jax.jit(scan_indexed, donate_argnums=0)
    self._scan_batches = jax.jit(scan_batches, donate_argnums=0)
    self._one_indexed = jax.jit(one_indexed, donate_argnums=0)
    self._one_batch = jax.jit(one_batch, donate_argnums=0)
    self._evaluate = jax.jit(eval_fn)

  def run(self, state: TrainState, data: Data, idx: np.ndarray,
          lrs: np.ndarray) -> tuple[TrainState, np.ndarray]:
    """Runs len(idx) steps; returns (state, per-step losses)."""
    lrs = np.asarray(lrs, np.float32)
    if self.form == "python":
      losses = []
      if data.on_device:
        # One row per call: the compiled step does not depend on the chunk's
        # length.
        for i in range(len(idx)):
          state, loss = self._one_indexed(state, data.x, data.y, idx[i],
                                          lrs[i])
          losses.append(loss)
      else:
        for i in range(len(idx)):
          state, loss = self._one_batch(state, data.x[idx[i]],
                                        data.y[idx[i]], lrs[i])
          losses.append(loss)
      return state, np.asarray(jnp.stack(losses))
    if data.on_device:
      state, losses = self._scan_indexed(state, data.x, data.y,
                                         jnp.asarray(idx), jnp.asarray(lrs))
    else:
      state, losses = self._scan_batches(state, data.x[idx], data.y[idx],
                                         jnp.asarray(lrs))
    return state, np.asarray(losses)

  def evaluate(self, state: TrainState, data: Data) -> dict[str, float]:
    """Test 'loss' and 'accuracy' over the whole test set, and 'val_loss' and
    'val_accuracy' when the data has a validation set (eval mode)."""
    ev = self._evaluate(state.params, state.model_state, *data.test)
    out = {k: float(v) for k, v in ev.items()}
    if data.val is not None:
      val = self._evaluate(state.params, state.model_state, *data.val)
      out.update({f"val_{k}": float(v) for k, v in val.items()})
    return out


def chunk_bounds(start: int, stop: int, every: Iterable[int],
                 extra: Iterable[int] = ()) -> list[int]:
  """Chunk boundaries: start, stop, multiples of each `every`, and `extra`."""
  b = {start, stop}
  for e in every:
    if e:
      b.update(range((start // e + 1) * e, stop, e))
  b.update(s for s in extra if start < s < stop)
  return sorted(b)


def _check_loss(losses: np.ndarray, first: float, start: int) -> None:
  bad = ~np.isfinite(losses)
  if bad.any():
    raise LotteryError(
        f"training.learning_rate: loss became non-finite at step "
        f"{start + int(np.argmax(bad))} (try a lower learning rate or weight "
        f"decay)")
  limit = DIVERGED * max(first, 1.0)
  high = losses > limit
  if high.any():
    i = int(np.argmax(high))
    raise LotteryError(
        f"training.learning_rate: loss diverged at step {start + i} "
        f"({losses[i]:.3g}, over {DIVERGED:g} times its starting value "
        f"{first:.3g}; try a lower learning rate or weight decay)")


def train(loop: Loop, state: TrainState, data: Data, *,
          stop: int, lr_fn: Callable[[int, int], np.ndarray], batch_size: int,
          data_seed: int, eval_every: int, checkpoint_every: int = 0,
          capture: Iterable[int] = (),
          history: list[dict] | None = None,
          captured: dict[int, Any] | None = None,
          on_checkpoint: Callable[[TrainState, list, dict], None] | None = None,
          on_chunk: Callable[[int], None] | None = None,
          on_eval: Callable[[dict], None] | None = None,
          ) -> tuple[TrainState, list[dict], dict[int, Any]]:
  """Trains from `state.step` to `stop`, evaluating every `eval_every`.

  Args:
    loop: the experiment's compiled functions.
    state: train state (donated: do not reuse it).
    data: from `put_data`.
    stop: the step to stop at (exclusive).
    lr_fn: (start, stop) -> learning rates of those steps.
    batch_size, data_seed: the batch order (see `batch_indices`).
    eval_every: steps between evaluations of the test set (and after the
      last step).
    checkpoint_every: steps between calls of `on_checkpoint` (0: never).
    capture: steps at which to copy (params, model_state) to the host (the
      rewind point).
    history, captured: what a resumed run had recorded so far.
    on_checkpoint: called as (state, history, captured) at checkpoints.
    on_chunk: called with the step reached after every compiled chunk.
    on_eval: called with each new history record.

  Returns:
    (final state, history of {'step', 'loss', 'accuracy', 'train_loss'},
    {step: host copy of {'params', 'model_state'}} for the `capture` steps).

  Raises:
    LotteryError: if the training loss is not finite or has diverged.
  """
  history = list(history or [])
  captured = dict(captured or {})
  capture = set(capture)
  start = int(state.step)
  if start >= stop:
    raise LotteryError(f"training.steps: nothing to train from step {start} "
                       f"to {stop}")

  def grab(s):
    return jax.device_get({"params": s.params, "model_state": s.model_state})

  if start in capture:
    captured[start] = grab(state)
  bounds = chunk_bounds(start, stop, [eval_every, checkpoint_every], capture)
  # The divergence check's reference: the run's first loss (a resumed run
  # takes its first evaluation's mean training loss).
  first = history[0]["train_loss"] if history else None
  for a, b in zip(bounds[:-1], bounds[1:]):
    idx = batch_indices(len(data.y), batch_size, data_seed, a, b)
    state, losses = loop.run(state, data, idx, lr_fn(a, b))
    if first is None:
      first = float(losses[0]) if np.isfinite(losses[0]) else 1.0
    _check_loss(losses, first, a)
    if b in capture:
      captured[b] = grab(state)
    if b % eval_every == 0 or b == stop:
      ev = loop.evaluate(state, data)
      history.append({"step": b, "train_loss": float(losses.mean()), **ev})
      if on_eval:
        on_eval(history[-1])
    if on_chunk:
      on_chunk(b)
    if on_checkpoint and checkpoint_every and b % checkpoint_every == 0 \
        and b != stop:
      on_checkpoint(state, history, captured)
  return state, history, captured
