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
'auto' picks 'scan' on every platform. XLA:CPU runs the gradient
convolutions of a step inside a rolled loop as plain loop nests (45-120x
slower) unless they are in the canonical form that
`lottery.models.convolution` writes out; the registered models' convolutions
use it. A model of one's own with `flax.linen.Conv` trains correctly in a
scan, but on the CPU fast only with `lottery.models.convolution.Conv` or
`training.loop='python'` (docs/performance.md).

Evaluation. In the scan and unroll forms the test (and validation) evaluation
at the end of a chunk runs inside the chunk's compiled program, under a
`lax.cond` on an argument: a chunk that ends without an evaluation calls the
same program, so the step is never compiled twice. The python form, which has
no compiled loop, and a chunk whose last step updates the mask (its own
program) call the evaluation separately; the numbers are the same either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from lottery import config as config_lib
from lottery import parallel
from lottery import xla_options
from lottery.errors import Diverged, LotteryError
from lottery.step import TrainState

FORMS = config_lib.LOOPS
REPLICA_FORMS = config_lib.REPLICAS
UNROLL = 10
# A loss this many times its starting value (and above 1) has diverged.
DIVERGED = 1e3


# Most example indices (steps x replicates x batch) that one compiled call of
# `train` takes: a longer chunk (a run of 10**8 steps with no evaluation
# between, whose indices alone would take 37 GiB at batch 100) runs as
# several calls of at most this many, each computing its own indices. 2**24
# int32 indices are 64 MiB, above every recipe's chunk (the largest,
# rigl_resnet50_imagenet's 1000 steps of 4096, is 2**22): they run as before.
MAX_CALL_INDICES = 2**24
# Most bytes of examples that one compiled call reads from a stream (the
# call's batches, the next call's queued and a third call's being read can
# be in memory at once: three times this).
STREAM_CALL_BYTES = 2**28


def example_keys(shape: tuple[int, ...], first_step: int, seeds
                 ) -> np.ndarray:
  """int64 keys (data seed, step, slot) of a call's examples: shape + (3,)
  for indices of shape (steps, batch) (seeds[0]) or (steps, replicates,
  batch) (replicate i: seeds[i])."""
  steps, batch = shape[0], shape[-1]
  reps = shape[1] if len(shape) == 3 else 1
  out = np.empty((steps, reps, batch, 3), np.int64)
  out[..., 0] = np.asarray(seeds, np.int64)[:reps, None]
  out[..., 1] = first_step + np.arange(steps)[:, None, None]
  out[..., 2] = np.arange(batch)
  return out.reshape(tuple(shape) + (3,))


def batch_indices(n: int, batch_size: int, seed: int, start: int, stop: int
                  ) -> np.ndarray:
  """int32 (stop - start, batch_size) example indices of steps start..stop-1.

  Each epoch is a fresh permutation of the n examples drawn from
  `np.random.default_rng([seed, epoch])`; the last partial batch of an epoch
  is dropped. Step s is a pure function of (seed, s), so a run resumed at any
  step sees the same batches as one that was never interrupted, and the
  indices of any range of steps are the same rows of those of a longer range.

  Raises:
    LotteryError: if `batch_size` is above `n` (no whole batch in an epoch).
  """
  per_epoch = n // batch_size
  if per_epoch < 1:
    raise LotteryError(f"batch_size: must be at most the {n} training "
                       f"examples (got {batch_size})")
  out = np.empty((stop - start, batch_size), np.int32)
  s = start
  while s < stop:  # One slice of one epoch's permutation at a time.
    epoch, pos = divmod(s, per_epoch)
    take = min(stop - s, per_epoch - pos)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    out[s - start:s - start + take] = perm[
        pos * batch_size:(pos + take) * batch_size].reshape(take, batch_size)
    s += take
  return out


EvalSet = tuple[jax.Array, jax.Array, jax.Array]  # x, y, valid: (batches, B..)


def eval_batches(x: np.ndarray, y: np.ndarray, eval_batch: int = 1000,
                 put: Callable = jax.device_put) -> EvalSet:
  """An evaluation set on the device, zero-padded to whole batches."""
  n = len(x)
  eval_batch = min(eval_batch, n)
  nb = math.ceil(n / eval_batch)
  pad = nb * eval_batch - n
  xe = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
  ye = np.concatenate([y, np.zeros((pad,), y.dtype)])
  valid = np.arange(nb * eval_batch) < n
  return (put(xe.reshape((nb, eval_batch) + x.shape[1:])),
          put(ye.reshape(nb, eval_batch)),
          put(valid.reshape(nb, eval_batch)))


@dataclasses.dataclass
class Data:
  """The training set and the test (and validation) sets of a run.

  In memory (`put_data`): training arrays (on the device, or on the host
  with `on_device=False`) and the evaluation sets as `EvalSet`s. Streamed
  (`stream_data`): `stream` holds the training set's `stream.Records`, and
  `test` and `val` theirs, read `eval_batch` examples at a time.
  """
  x: Any
  y: Any
  test: Any
  val: Any
  on_device: bool
  stream: Any = None
  eval_batch: int = 1000

  @property
  def num_train(self) -> int:
    """The number of training examples."""
    return len(self.y) if self.stream is None else len(self.stream)


def put_data(x_train, y_train, x_test, y_test, *, x_val=None, y_val=None,
             eval_batch: int = 1000, on_device: bool = True,
             mesh=None) -> Data:
  """Moves a dataset to the device in the layout `Loop` expects.

  With `on_device=False` the training arrays stay on the host and each call
  of the loop gathers its batches there (for datasets that do not fit). With
  a `mesh` every device of it holds the arrays whole.
  """
  # device_put, not jnp.asarray: in JAX 0.10 the latter compiles a program
  # per shape.
  dev = jax.device_put
  if mesh is not None:
    dev = lambda a: parallel.put_global(a, parallel.replicated(mesh))
  put = dev if on_device else np.asarray
  val = None if x_val is None else eval_batches(x_val, y_val, eval_batch, dev)
  return Data(x=put(x_train), y=put(y_train),
              test=eval_batches(x_test, y_test, eval_batch, dev), val=val,
              on_device=on_device)


def stream_data(train, test, val=None, *, eval_batch: int = 1000) -> Data:
  """A dataset read from record files (`stream.Records`) as the loop needs
  them: nothing is put on the device until a call's batches are read."""
  return Data(x=None, y=None, test=test, val=val, on_device=False,
              stream=train, eval_batch=eval_batch)


def choose_form(form: str, params) -> str:
  """Resolves 'auto': 'scan', for every model on every platform (see the
  module's docstring). `params` is kept for callers that pass it."""
  del params
  return "scan" if form == "auto" else form


# vmap axes of a stacked TrainState: every leaf has a leading replicate axis
# except the step, which all replicates share (so a mask update due at a step
# stays one `lax.cond`, not a select computing both branches).
STATE_AXES = TrainState(params=0, model_state=0, opt_state=0, mask=0,
                        step=None, rng=0)


class Loop:
  """The compiled forms of one train step and its evaluation.

  Build one per experiment and reuse it for every run: a run with a new mask,
  new weights or new learning rates calls the same compiled functions.

  Replicates: a state stacked over a leading replicate axis (see
  `stack_states`) with batch indices of shape (steps, replicates, batch) runs
  all replicates in one compiled program; the plain step is used otherwise.
  `replicas` says how (`replica_form`): 'vmap' vmaps the step (batched
  operations: what fills an accelerator); 'unroll' writes the plain step once
  per replicate, the programs taking and returning a tuple of plain states
  and per-replicate outputs, split and stacked by programs of their own, so
  that no replicate's arithmetic is fused with another's. 'auto' unrolls on
  the CPU without a mesh: there each replicate computes exactly what its
  single run computes (the same bits, in every loop form; vmapped, batched
  dots sum in another order), the copies' independent operations can run
  side by side, and no convolution becomes a grouped one (vmapped, a kernel
  per replicate, which XLA:CPU runs about half as fast; docs/performance.md).
  The program's size and compile time grow with the replicates. With a
  `mesh` (`lottery.parallel`), the state, indices and batches are laid out
  over its 'replicas' and 'data' axes (vmapped).
  """

  def __init__(self, step_fn: Callable, eval_fn: Callable, *,
               form: str = "scan", mesh=None, replicas: str = "auto"):
    if form not in FORMS or form == "auto":
      raise LotteryError(f"training.loop: must be one of {list(FORMS[1:])} "
                         f"once resolved (got {form!r})")
    self.form = form
    self.mesh = mesh
    self.replicas = replica_form(replicas, mesh)
    unroll = UNROLL if form == "unroll" else 1
    # A step with a mask-update hook (`step.make_train_step`): its plain
    # form runs in the scans, its updating form alone at due steps.
    self.update_every = getattr(step_fn, "update_every", 0)
    plain = step_fn.plain if self.update_every else step_fn
    self._fns = {}
    for replicated in (False, True):
      def vm(fn):
        if not replicated:
          return fn
        if self.replicas == "unroll":
          return _unrolled(fn)
        return jax.vmap(lambda s, b, lr: fn(s, b, lr),
                        in_axes=(STATE_AXES, 0, None),
                        out_axes=(STATE_AXES, 0))
      fns = self._compile(vm(plain), eval_fn, unroll, replicated)
      if self.update_every:
        up = self._compile(vm(step_fn.updating), eval_fn, unroll, replicated)
        fns["up_indexed"], fns["up_batch"] = (up["one_indexed"],
                                              up["one_batch"])
      self._fns[replicated] = fns

  def _compile(self, body, eval_fn, unroll, replicated):
    mesh = self.mesh

    def lay_batch(b):
      if mesh is None:
        return b
      return jax.tree.map(
          lambda a: jax.lax.with_sharding_constraint(
              a, parallel.batch_sharding(mesh, replicated, a.ndim)), b)

    def lay_state(s):
      if mesh is None:
        return s
      return jax.lax.with_sharding_constraint(
          s, parallel.state_sharding(mesh, s, replicated))

    # Unrolled replicates: the programs take and return a tuple of plain
    # states, and a tuple of each output's per-replicate values (stacked by
    # separate programs, `_per_replicate`), so that nothing a replicate
    # computes is fused with another's or with a stacking.
    split = replicated and self.replicas == "unroll"

    def one(s, xb, yb, lr):
      s, m = body(s, lay_batch((xb, yb)), lr)
      return s, (tuple(x["loss"] for x in m) if split else m["loss"])

    evaluate = eval_fn
    if split:
      evaluate = _unrolled_eval(eval_fn)
    elif replicated:
      evaluate = jax.vmap(eval_fn, in_axes=(0, 0, None, None, None))

    def evaluations(s, sets):
      if split:
        return tuple([eval_fn(r.params, r.model_state, *e) for e in sets]
                     for r in s)
      return [evaluate(s.params, s.model_state, *e) for e in sets]

    def evaluated(s, sets, do_eval):
      """`evaluate` of s on each set of `sets` if do_eval, else zeros."""
      # Traced once (the zeros take its output shapes), not once for the
      # shapes and again for the branch.
      jaxpr, shapes = jax.make_jaxpr(lambda: evaluations(s, sets),
                                     return_shape=True)()
      leaves, tree = jax.tree.flatten(shapes)
      out = jax.lax.cond(
          do_eval, jax.extend.core.jaxpr_as_fun(jaxpr),
          lambda: [jnp.zeros(a.shape, a.dtype) for a in leaves])
      return jax.tree.unflatten(tree, out)

    def scan_indexed(state, x, y, idx, lrs, sets, do_eval):
      def step(s, inp):
        i, lr = inp
        return one(s, x[i], y[i], lr)
      s, losses = jax.lax.scan(step, state, (idx, lrs), unroll=unroll)
      s = lay_state(s)
      return s, losses, evaluated(s, sets, do_eval)

    def scan_batches(state, xb, yb, lrs, sets, do_eval):
      def step(s, inp):
        return one(s, *inp)
      s, losses = jax.lax.scan(step, state, (xb, yb, lrs), unroll=unroll)
      s = lay_state(s)
      return s, losses, evaluated(s, sets, do_eval)

    def one_indexed(state, x, y, b, lr):
      s, loss = one(state, x[b], y[b], lr)
      return lay_state(s), loss

    def one_batch(state, xb, yb, lr):
      s, loss = one(state, xb, yb, lr)
      return lay_state(s), loss

    jit = xla_options.jit
    fns = {"scan_indexed": jit(scan_indexed, donate_argnums=0),
           "scan_batches": jit(scan_batches, donate_argnums=0),
           "one_indexed": jit(one_indexed, donate_argnums=0),
           "one_batch": jit(one_batch, donate_argnums=0),
           "evaluate": jit(evaluate)}
    if split:
      fns = {k: _per_replicate(fn, evaluates=k == "evaluate")
             for k, fn in fns.items()}
    return fns

  def _indices(self, idx: np.ndarray, replicated: bool,
               leading: int) -> jax.Array:
    """Indices (or a batch's padding mask) on the device(s); with a mesh,
    split like the batches."""
    if self.mesh is None:
      return jax.device_put(idx)
    return parallel.put_global(
        idx, parallel.batch_sharding(self.mesh, replicated, idx.ndim,
                                     leading=leading))

  def batches(self, data: Data, idx: np.ndarray, first_step: int = 0,
              seeds=(0,)) -> tuple[jax.Array, jax.Array]:
    """The examples of `idx` read from `data.stream`, on the device(s).

    (x, y) of shapes idx.shape + the input's shape and idx.shape, laid out
    as the loop's batches (steps first); with a mesh, each process reads
    only the records of its own devices' part. A stream that draws random
    crops (`images.Images`) keys example j of step first_step + r of
    replicate i by (seeds[i], first_step + r, j).
    """
    keys = None
    if getattr(data.stream, "random", False):
      keys = example_keys(idx.shape, first_step, seeds)
    return self._read_parts(data.stream.read, idx, data.stream.example_shape,
                            keys)

  def _read_parts(self, read: Callable, idx: np.ndarray,
                  example_shape: tuple[int, ...], keys=None
                  ) -> tuple[jax.Array, jax.Array]:
    """(x, y) = read(idx) on the device(s), laid out as the loop's batches
    (idx: (steps, batch) or (steps, replicates, batch)); with a mesh, each
    process calls `read` only for its own devices' parts."""
    dims = idx.ndim + len(example_shape)
    if self.mesh is None:
      sx = sy = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    else:
      replicated = idx.ndim == 3
      sx = parallel.batch_sharding(self.mesh, replicated, dims, leading=1)
      sy = parallel.batch_sharding(self.mesh, replicated, idx.ndim, leading=1)
    return parallel.put_parts(read, idx, example_shape, sx, sy, keys)

  def run(self, state: TrainState, data: Data, idx: np.ndarray,
          lrs: np.ndarray, batches=None) -> tuple[TrainState, np.ndarray]:
    """Runs len(idx) steps; returns (state, per-step losses).

    idx: (steps, batch) example indices, or (steps, replicates, batch) for a
    stacked state; losses then have shape (steps, replicates). With a
    mask-update hook, the steps it is due at run on their own and the ones
    between them in the loop form. batches: for streamed data, `batches(data,
    idx)` if already read (read here otherwise).
    """
    state, losses, _ = self._steps(state, data, idx, lrs, False, batches)
    return state, losses

  def run_and_evaluate(self, state: TrainState, data: Data, idx: np.ndarray,
                       lrs: np.ndarray, batches=None
                       ) -> tuple[TrainState, np.ndarray, dict]:
    """`run`, then `evaluate` of the final state: (state, losses, metrics).

    In the scan and unroll forms the evaluation of data in memory is part of
    the chunk's compiled program (see the module's docstring); streamed
    data is evaluated after it, a batch at a time.
    """
    state, losses, metrics = self._steps(state, data, idx, lrs, True,
                                         batches)
    if metrics is None:
      metrics = self.evaluate(state, data)
    return state, losses, metrics

  def _steps(self, state, data, idx, lrs, evaluate: bool, batches):
    """(state, losses, metrics if evaluated inside the last program, else
    None) of len(idx) steps."""
    lrs = np.asarray(lrs, np.float32)
    if data.stream is not None and batches is None:
      if getattr(data.stream, "random", False):
        raise ValueError("Loop.run: a stream of random crops needs batches="
                         "loop.batches(data, idx, first_step, seeds)")
      batches = self.batches(data, idx)
    if not self.update_every:
      return self._run(state, data, idx, lrs, evaluate, batches)
    first = int(parallel.to_host(state.step))
    every = self.update_every
    due = [r for r in range(len(idx)) if (first + r) > 0 and
           (first + r) % every == 0]
    fns = self._fns[idx.ndim == 3]
    losses, metrics, a = [], None, 0
    for r in due + [len(idx)]:
      if r > a:
        rows = None if batches is None else (batches[0][a:r],
                                             batches[1][a:r])
        state, loss, metrics = self._run(state, data, idx[a:r], lrs[a:r],
                                         evaluate and r == len(idx), rows)
        losses.append(loss)
      if r < len(idx):
        if data.on_device:
          state, loss = fns["up_indexed"](
              state, data.x, data.y, self._indices(idx[r], idx.ndim == 3, 0),
              lrs[r])
        else:
          state, loss = fns["up_batch"](state, *_take(data, idx, batches, r),
                                        lrs[r])
        losses.append(parallel.to_host(loss)[None])
      a = r + 1
    return state, np.concatenate(losses), metrics

  def _run(self, state: TrainState, data: Data, idx: np.ndarray,
           lrs: np.ndarray, evaluate: bool, batches):
    """`_steps` of the plain step (no mask update)."""
    replicated = idx.ndim == 3
    fns = self._fns[replicated]
    if self.form == "python":
      losses = []
      if data.on_device:
        # One row per call: the compiled step does not depend on the chunk's
        # length.
        for i in range(len(idx)):
          state, loss = fns["one_indexed"](state, data.x, data.y,
                                           self._indices(idx[i], replicated,
                                                         0), lrs[i])
          losses.append(loss)
      else:
        for i in range(len(idx)):
          state, loss = fns["one_batch"](state, *_take(data, idx, batches, i),
                                         lrs[i])
          losses.append(loss)
      # Fetched together: stacking on the device would compile a program
      # per chunk length.
      return state, np.stack(parallel.to_host(losses)), None
    sets, do_eval = _sets(data), np.bool_(evaluate)
    if data.on_device:
      state, losses, ev = fns["scan_indexed"](
          state, data.x, data.y, self._indices(idx, replicated, 1),
          jax.device_put(lrs), sets, do_eval)
    else:
      state, losses, ev = fns["scan_batches"](
          state, *_take(data, idx, batches, slice(None)), jax.device_put(lrs),
          sets, do_eval)
    metrics = _metrics(ev, replicated) if evaluate and sets else None
    return state, parallel.to_host(losses), metrics

  def evaluate(self, state: TrainState, data: Data) -> dict:
    """Test 'loss' and 'accuracy' over the whole test set, and 'val_loss' and
    'val_accuracy' when the data has a validation set (eval mode). Floats for
    a plain state, lists over the replicates for a stacked one.

    Streamed data is evaluated `Data.eval_batch` examples at a time (1,000
    unless `stream_data` is given another; the next batch read while one
    runs), with a mesh split over its 'data' axis
    (each process reads its own devices' part): the same accuracy as in
    memory or on one device (the correct predictions are counted exactly),
    the loss the same up to the order of its float32 sums.
    """
    stacked = is_stacked(state)
    evaluate = self._fns[stacked]["evaluate"]
    if data.stream is None:
      return _metrics([evaluate(state.params, state.model_state, *e)
                       for e in _sets(data)], stacked)
    return _metrics([self._evaluate_streamed(evaluate, state, records,
                                             data.eval_batch)
                     for records in _streamed_sets(data)], stacked)

  def _evaluate_streamed(self, evaluate, state, records, eval_batch: int
                         ) -> dict[str, np.ndarray]:
    """{'loss', 'accuracy'} of `state` on `records`, a batch at a time: each
    batch padded as `eval_batches` pads, so one program.

    With a mesh, each batch is split over the 'data' axis as the training
    batches are (`_read_parts`): each process reads only its own devices'
    examples and each device evaluates its slice. A batch that does not
    divide across the 'data' devices is padded to the next multiple with
    masked examples (none read), so the batch's sums count its examples
    once: the same correct predictions as on one device, the loss summed in
    another order (equal to float32 rounding).
    """
    from lottery import stream  # pylint: disable=g-import-not-at-top
    n = len(records)
    size = min(eval_batch, n)
    devices = 1 if self.mesh is None else self.mesh.shape["data"]
    width = -(-size // devices) * devices

    def read(part):
      """The examples of `part`'s indices, zeros where it holds -1 (the
      padding)."""
      ok = part >= 0
      x, y = records.read(part[ok])
      xs = np.zeros(part.shape + x.shape[1:], x.dtype)
      ys = np.zeros(part.shape, y.dtype)
      xs[ok], ys[ok] = x, y
      return xs, ys

    def load(start):
      k = min(size, n - start)
      idx = np.full((1, width), -1, np.int64)
      idx[0, :k] = np.arange(start, start + k)
      x, y = self._read_parts(read, idx, records.example_shape)
      return (x, y, self._indices(idx >= 0, False, 1)), k

    loss, correct = 0.0, 0
    for _, (batch, k) in stream.prefetch(range(0, n, size), load):
      m = parallel.to_host(evaluate(state.params, state.model_state, *batch))
      # The batch's mean times its count: its sum of losses, and (exactly,
      # after rounding) its count of correct predictions.
      loss = loss + m["loss"].astype(np.float64) * k
      correct = correct + np.rint(m["accuracy"].astype(np.float64) * k
                                  ).astype(np.int64)
    # As the in-memory evaluation divides: float32 count / float32 n.
    return {"loss": np.float32(loss / n),
            "accuracy": np.float32(correct) / np.float32(n)}


def _take(data: Data, idx: np.ndarray, batches, rows) -> tuple[Any, Any]:
  """The (x, y) batches of idx[rows]: rows of `batches` when given (read
  from a stream), else gathered from the host arrays."""
  if batches is not None:
    return batches[0][rows], batches[1][rows]
  return data.x[idx[rows]], data.y[idx[rows]]


def _sets(data: Data) -> list[EvalSet]:
  """The evaluation sets of `data` on the device: test, then validation if
  any; none for streamed data (see `_streamed_sets`)."""
  if data.stream is not None:
    return []
  return [data.test] + ([] if data.val is None else [data.val])


def _streamed_sets(data: Data) -> list:
  """The `stream.Records` to evaluate on: test, then validation if any."""
  return [data.test] + ([] if data.val is None else [data.val])


def _metrics(evaluations: list[dict], stacked: bool) -> dict:
  """`Loop.evaluate`'s dict from the evaluations of `_sets`, on the host."""
  test, *val = parallel.to_host(evaluations)
  conv = (lambda v: v.tolist()) if stacked else float
  out = {k: conv(v) for k, v in test.items()}
  for v in val:
    out.update({f"val_{k}": conv(x) for k, x in v.items()})
  return out


def is_stacked(state: TrainState) -> bool:
  """Whether `state` holds replicates: its rng has a leading replicate axis."""
  return jnp.ndim(state.rng) == 2


def replica_form(replicas: str = "auto", mesh=None) -> str:
  """How a stacked state's replicates run in one program: 'vmap' (the step
  vmapped: batched operations) or 'unroll' (the step written once per
  replicate, each on its own slice). 'auto': 'unroll' on the CPU without a
  mesh, 'vmap' otherwise (see `Loop`)."""
  if replicas not in REPLICA_FORMS:
    raise LotteryError(f"training.replicas: must be one of "
                       f"{list(REPLICA_FORMS)} (got {replicas!r})")
  if replicas == "unroll" and mesh is not None:
    raise LotteryError("training.replicas: 'unroll' runs on one device; over "
                       "several the replicates are vmapped (use 'vmap' or "
                       "'auto')")
  if replicas != "auto":
    return replicas
  return ("unroll" if mesh is None and jax.default_backend() == "cpu"
          else "vmap")


@jax.jit
def _split_tree(tree, like) -> tuple:
  """Replicate by replicate, a stacked tree (`like`: one with leaves)."""
  return tuple(unstack(tree, i)
               for i in range(jax.tree.leaves(like)[0].shape[0]))


@jax.jit
def _split_state(state: TrainState) -> tuple[TrainState, ...]:
  """A stacked state as a tuple of plain states (sharing its step)."""
  return tuple(s.replace(step=state.step) for s in
               _split_tree(state.replace(step=None), state.params))


@jax.jit
def _stack_outputs(outs: tuple) -> Any:
  """Per-replicate outputs stacked on a last axis: scalars -> (replicates,),
  per-step losses (steps,) -> (steps, replicates)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=-1), *outs)


def _per_replicate(program: Callable, evaluates: bool) -> Callable:
  """`program`, compiled over a tuple of plain states (or, `evaluates`, of
  params and model states), called as the vmapped form is: with a stacked
  state, returning it stacked and its other outputs stacked on a last
  replicate axis. The splitting and stacking are programs of their own."""
  if evaluates:
    def call(params, model_state, *data):
      return _stack_outputs(program(_split_tree(params, params),
                                    _split_tree(model_state, params), *data))
    return call

  def call(state, *args):
    states = _split_state(state)
    # Donated, as the vmapped form's state is: freed once split, so that
    # the stacked and split states are not held together through the call.
    _delete(state)
    s, *outs = program(states, *args)
    return (stack_states(list(s)), *[_stack_outputs(o) for o in outs])
  return call


def _delete(tree) -> None:
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      leaf.delete()


def _unrolled(fn: Callable) -> Callable:
  """fn(state, batch, lr) of each of a tuple of plain states with its slice
  of the batch: (the tuple of new states, the tuple of their metrics)."""
  def each(states, batch, lr):
    outs = [fn(s, unstack(batch, i), lr) for i, s in enumerate(states)]
    return tuple(o[0] for o in outs), tuple(o[1] for o in outs)
  return each


def _unrolled_eval(eval_fn: Callable) -> Callable:
  """eval_fn(params, model_state, *data) of each of a tuple of params and
  model states: the tuple of their metrics."""
  def each(params, model_states, *data):
    return tuple(eval_fn(p, m, *data) for p, m in zip(params, model_states))
  return each


@jax.jit
def stack_states(states: list[TrainState]) -> TrainState:
  """Replicates' states stacked on a leading axis (they share the step)."""
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  return stacked.replace(step=states[0].step)


def unstack(tree, i: int):
  """Replicate i of a stacked pytree (None leaves kept)."""
  return jax.tree.map(lambda x: x[i], tree)


def chunk_bounds(start: int, stop: int, every: Iterable[int],
                 extra: Iterable[int] = ()) -> list[int]:
  """Chunk boundaries: start, stop, multiples of each `every`, and `extra`."""
  return list(iter_bounds(start, stop, every, extra))


def iter_bounds(start: int, stop: int, every: Iterable[int],
                extra: Iterable[int] = ()) -> Iterator[int]:
  """`chunk_bounds`, in increasing order, one at a time (none stored)."""
  extra = sorted({s for s in extra if start < s < stop})
  every = [e for e in set(every) if e]
  at, j = start, 0
  yield start
  while at < stop:
    nxt = min([stop] + [(at // e + 1) * e for e in every])
    while j < len(extra) and extra[j] <= at:
      j += 1
    if j < len(extra):
      nxt = min(nxt, extra[j])
    yield nxt
    at = nxt


def _check_loss(losses: np.ndarray, first: np.ndarray, start: int) -> None:
  """losses: (steps,) or (steps, replicates); first: () or (replicates,)."""
  _check_below(losses, first, "loss", lambda i: f"at step {start + i}",
               "its starting value")


def _check_test_loss(ev: dict, first: np.ndarray, step: int) -> None:
  """The test loss evaluated after `step`: it alone reflects a chunk's last
  update (each training loss is computed before its step's update)."""
  _check_below(np.reshape(np.asarray(ev["loss"], np.float64), (1, -1)),
               first, "test loss", lambda i: f"after step {step}",
               "the starting training loss")


def _check_below(losses: np.ndarray, first: np.ndarray, what: str,
                 when: Callable[[int], str], reference: str) -> None:
  """Raises Diverged for a loss that is not finite or is over DIVERGED times
  `first` (at least DIVERGED): losses (rows,) or (rows, replicates)."""
  losses = losses.reshape(len(losses), -1)
  first = np.broadcast_to(np.asarray(first, np.float64), losses.shape[1:])
  which = lambda j: int(j) if losses.shape[1] > 1 else None
  bad = ~np.isfinite(losses)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise Diverged(
        f"training.learning_rate: {what} became non-finite {when(int(i))}",
        "(try a lower learning rate or weight decay)", which(j))
  limit = DIVERGED * np.maximum(first, 1.0)
  high = losses > limit
  if high.any():
    i, j = np.argwhere(high)[0]
    raise Diverged(
        f"training.learning_rate: {what} diverged {when(int(i))}",
        f"({losses[i, j]:.3g}, over {DIVERGED:g} times {reference} "
        f"{first[j]:.3g}; try a lower learning rate or weight decay)",
        which(j))


def train(loop: Loop, state: TrainState, data: Data, *,
          stop: int, lr_fn: Callable[[int, int], np.ndarray], batch_size: int,
          data_seed: int | Sequence[int], eval_every: int,
          checkpoint_every: int = 0,
          capture: Iterable[int] = (),
          history: list[dict] | None = None,
          captured: dict[int, Any] | None = None,
          on_checkpoint: Callable[[TrainState, list, dict, list], None]
          | None = None,
          first_loss: Any = None,
          on_chunk: Callable[[int], None] | None = None,
          on_eval: Callable[[dict], None] | None = None,
          ) -> tuple[TrainState, list[dict], dict[int, Any]]:
  """Trains from `state.step` to `stop`, evaluating every `eval_every`.

  Args:
    loop: the experiment's compiled functions.
    state: train state (donated: do not reuse it); a stacked state (see
      `stack_states`) trains its replicates together.
    data: from `put_data`, or `stream_data` (each call's batches read from
      the records, the next call's while one runs).
    stop: the step to stop at (exclusive).
    lr_fn: (start, stop) -> learning rates of those steps.
    batch_size, data_seed: the batch order (see `batch_indices`); a stacked
      state takes one data seed per replicate. A chunk of more than
      `MAX_CALL_INDICES` indices (or, streamed, of `STREAM_CALL_BYTES` of
      examples) runs as several compiled calls, each computing only its own
      steps' indices (same batches, same results).
    eval_every: steps between evaluations of the test set (and after the
      last step).
    checkpoint_every: steps between calls of `on_checkpoint` (0: never).
    capture: steps at which to copy (params, model_state) to the host (the
      rewind point).
    history, captured: what a resumed run had recorded so far.
    on_checkpoint: called as (state, history, captured, first_loss) at
      checkpoints: first_loss (a float, or a list per replicate) is the
      divergence check's reference, the job's first training loss.
    first_loss: a resumed run's, as its checkpoint was given it (None: the
      first evaluation's mean training loss for a checkpoint that has none).
    on_chunk: called with the step reached after every compiled chunk (and
      after every call of a split chunk).
    on_eval: called with each new history record.

  Returns:
    (final state, history of {'step', 'loss', 'accuracy', 'train_loss'}
    (for a stacked state each metric a list over the replicates),
    {step: host copy of {'params', 'model_state'}} for the `capture` steps).

  Raises:
    Diverged: if a training loss, or the test loss of an evaluation (the
      only check of a chunk's last update; for models without running
      statistics), is not finite or has diverged.
  """
  history = list(history or [])
  captured = dict(captured or {})
  capture = set(capture)
  start = int(parallel.to_host(state.step))
  stacked = is_stacked(state)
  seeds = list(data_seed) if stacked else [data_seed]
  if stacked and len(seeds) != len(state.rng):
    raise ValueError(f"train: {len(state.rng)} replicates but "
                     f"{len(seeds)} data seeds")
  if start >= stop:
    raise LotteryError(f"training.steps: nothing to train from step {start} "
                       f"to {stop}")

  def grab(s):
    return parallel.to_host({"params": s.params, "model_state": s.model_state})

  if start in capture:
    captured[start] = grab(state)
  bounds = iter_bounds(start, stop, [eval_every, checkpoint_every], capture)
  # A chunk longer than this runs as several calls (see MAX_CALL_INDICES),
  # each with the indices of its own steps only.
  per_call = max(1, MAX_CALL_INDICES // (batch_size * len(seeds)))
  if data.stream is not None:  # Also at most STREAM_CALL_BYTES of batches.
    example = data.stream.dtype.itemsize * batch_size * len(seeds)
    per_call = min(per_call, max(1, STREAM_CALL_BYTES // example))
  n = data.num_train

  def calls():
    """(chunk start, chunk stop, call start, call stop, indices, rates) of
    every compiled call, in order."""
    a = next(bounds)
    for b in bounds:
      # The chunk's rates at once (4 bytes a step), sliced for its calls:
      # the values are those of one call whatever the split.
      lrs = lr_fn(a, b)
      for c in range(a, b, per_call):
        d = min(c + per_call, b)
        idx = [batch_indices(n, batch_size, s, c, d) for s in seeds]
        idx = np.stack(idx, axis=1) if stacked else idx[0]
        yield a, b, c, d, idx, lrs[c - a:d - a]
      a = b

  if data.stream is None:
    planned = ((call, None) for call in calls())
  else:  # The next call's batches are read while this one runs.
    from lottery import stream  # pylint: disable=g-import-not-at-top
    planned = stream.prefetch(calls(), lambda call: loop.batches(
        data, call[4], call[2], seeds))
  # The divergence check's reference: the job's first loss, kept with its
  # checkpoints so that a resumed run checks as the uninterrupted one (a
  # checkpoint written without it: the first evaluation's mean training
  # loss).
  first = (np.asarray(first_loss) if first_loss is not None else
           np.asarray(history[0]["train_loss"]) if history else None)
  # A model with running statistics (BatchNorm) evaluates with them, and
  # early in training they are far from the batches' own: its test loss
  # (1e17-1e32 after 5 steps of a ResNet-50 that trains well) is not
  # checked, only its training losses.
  stateless = not jax.tree.leaves(state.model_state)
  with contextlib.closing(planned):  # Ends the reading thread on errors.
    pieces = []
    for (a, b, c, d, idx, lrs), batches in planned:
      evaluate = b % eval_every == 0 or b == stop
      if evaluate and d == b:
        state, losses, ev = loop.run_and_evaluate(state, data, idx, lrs,
                                                  batches)
      else:
        state, losses = loop.run(state, data, idx, lrs, batches)
      del batches  # Its device buffers are freed before the next call.
      if first is None:
        first = np.where(np.isfinite(losses[0]), losses[0], 1.0)
      _check_loss(losses, first, c)
      pieces.append(losses)
      if d < b:
        if on_chunk:
          on_chunk(d)
        continue
      losses = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
      pieces = []
      if b in capture:
        captured[b] = grab(state)
      if evaluate:
        # Each replicate's mean over its own contiguous losses: numpy sums a
        # strided column in another order than the single run's 1-D array.
        mean = (np.ascontiguousarray(losses.T).mean(axis=1) if stacked
                else losses.mean())
        if stateless:
          _check_test_loss(ev, first, b)
        history.append({"step": b, "train_loss": mean.tolist() if stacked
                        else float(mean), **ev})
        if on_eval:
          on_eval(history[-1])
      if on_chunk:
        on_chunk(b)
      if on_checkpoint and checkpoint_every and b % checkpoint_every == 0 \
          and b != stop:
        on_checkpoint(state, history, captured, first.tolist())
  return state, history, captured
