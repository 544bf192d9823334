"""SR-STE: N:M sparse training of dense weights through a straight-through
estimator (Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse
Neural Networks From Scratch", ICLR).

SR-STE keeps every weight, pruned ones included, as dense weights W. Every
step it recomputes the N:M mask from them, m = N:M(|W|) (N of every M
consecutive weights along each prunable leaf's reduction axis,
`lottery.structure`), runs the forward pass on W * m, and updates W with the
gradient g of the loss at W * m, passed straight through to every weight,
plus the sparse-refined term that decays the pruned ones:

  W <- W - lr * optimizer(g + lambda_W * (1 - m) * W),

lambda_W = 2e-4 in the paper and its code (`sparse.sr_ste_decay`). A pruned
weight keeps moving with the gradient and comes back when its magnitude
overtakes a kept one of its run.

In the framework the train state keeps its meaning: `TrainState.params` is
W * m (pruned entries exactly 0, what evaluation, tickets and checkpoints
read), `TrainState.mask` is m, and W lives in the optimizer state
(`DenseWeights`, checkpointed and resumed with it). `optimizer(tx)` wraps
the run's optimizer in that state and takes the place of `keep_pruned`;
`lottery.step.make_train_step(..., straight_through=st)` runs the update and
sets params and mask from the new W. The starting state is built by
`step.init_state` from the unmasked weights W0 and the mask
`st.mask(W0)`: its optimizer state holds W0 whole.

Differences from the paper's code, on purpose: ties in |W| go by position,
the framework's rule (among equal magnitudes the earlier weight is pruned
first; the code's argsort leaves ties to the sort); the mask's axis is the
framework's reduction axis, which for a conv kernel HWIO is the input
channels, as the code's NHWC variant groups them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lottery import config as config_lib
from lottery import masks as masks_lib
from lottery import structure
from lottery.errors import LotteryError

PyTree = Any


class DenseWeights(NamedTuple):
  """The optimizer state under SR-STE.

  Attributes:
    dense: W, every weight (pruned ones included), as the params pytree.
    inner: the wrapped optimizer's state, over W.
  """
  dense: PyTree
  inner: optax.OptState


def _is_none(x) -> bool:
  return x is None


def _top_n_of_m(w: jax.Array, n: int, m: int, axis: int) -> jax.Array:
  """The n largest |w| of every run of m along `axis`, in place: each run
  is an axis of its own (no transpose) and a weight's rank is how many of
  its run beat it, a pairwise comparison (about 4x faster on the CPU than
  ranking by `structure.n_m_leaves`' sort keys, which also handle weights
  already pruned; SR-STE has none)."""
  w = jnp.asarray(w)
  if w.ndim == 0:
    return jnp.ones((), bool)
  a = jnp.abs(w)
  a = jnp.where(jnp.isnan(a), -jnp.inf, a)
  shape = a.shape
  runs = a.reshape(shape[:axis] + (shape[axis] // m, m) + shape[axis + 1:])
  k = axis + 1  # The axis along a run.
  ai, aj = jnp.expand_dims(runs, k + 1), jnp.expand_dims(runs, k)
  pos = jnp.arange(m)
  later = (pos[None, :] > pos[:, None]).reshape(
      (m, m) + (1,) * (runs.ndim - k - 1))
  # beats[..., i, j, ...]: weight j of the run ranks above weight i.
  beats = (aj > ai) | ((aj == ai) & later)
  return (jnp.sum(beats, axis=k + 1) < n).reshape(shape)


@dataclasses.dataclass(frozen=True)
class StraightThrough:
  """SR-STE for one model: its prunable leaves, the N:M plan and lambda_W.

  Build it with `sr_ste`. Hashable (a static argument of compiled code).

  Attributes:
    treedef: the params' tree structure (of the model's dense mask).
    live: the positions, in that tree's leaves, of the prunable ones.
    plan: `structure.NMPlan` of the prunable leaves.
    decay: lambda_W.
  """
  treedef: Any
  live: tuple[int, ...]
  plan: structure.NMPlan
  decay: float

  def mask(self, params: PyTree) -> PyTree:
    """The N:M mask of |params|: N of every M along each prunable leaf's
    reduction axis, the largest magnitudes (NaN as -inf; ties: the later
    weight kept), which is `structure.n_m_leaves` of |params| from a dense
    mask (tested); None on the other leaves. Traceable."""
    leaves = self.treedef.flatten_up_to(params)
    out = [None] * len(leaves)
    for i, (n, m, axis) in zip(self.live, self.plan):
      out[i] = _top_n_of_m(leaves[i], n, m, axis)
    return jax.tree.unflatten(self.treedef, out)

  def optimizer(self, tx: optax.GradientTransformation
                ) -> optax.GradientTransformationExtraArgs:
    """`tx` over the dense weights W, with the sparse-refined gradient.

    `init(W0)` holds a copy of W0 and `tx.init(W0)` (`DenseWeights`).
    `update(grads, state, params, mask=m, **extra)` adds lambda_W * W to
    the gradients of the weights that `m` prunes, runs `tx` on W (extra
    arguments, e.g. `learning_rate=`, go to it) and returns W's updates
    and the state holding the new W; `params` is not read. The new params
    and mask are `apply_mask(st.mask(W), W)` and `st.mask(W)` of the new W
    (what `step.make_train_step` sets).
    """
    tx = optax.with_extra_args_support(tx)
    decay = self.decay

    def init(params):
      return DenseWeights(jax.tree.map(jnp.copy, params), tx.init(params))

    def update(grads, state, params=None, *, mask=None, **extra):
      del params
      dense = state.dense
      if mask is not None:
        masks_lib.check_mask(mask, dense)  # At trace time only.
        grads = jax.tree.map(
            lambda m, g, w: g if m is None else
            jnp.where(m, g, g + decay * w),
            mask, grads, dense, is_leaf=_is_none)
      updates, inner = tx.update(grads, state.inner, dense, **extra)
      return updates, DenseWeights(optax.apply_updates(dense, updates),
                                   inner)

    return optax.GradientTransformationExtraArgs(init, update)

  def step(self, tx: optax.GradientTransformationExtraArgs, grads: PyTree,
           opt_state: DenseWeights, mask: PyTree, **extra
           ) -> tuple[PyTree, DenseWeights, PyTree]:
    """One SR-STE update: (new params W * m, new optimizer state, new mask
    m = N:M(|W|)) from the gradient at the current params. `tx` is
    `optimizer(...)`'s wrapper.

    Raises:
      LotteryError: (when traced) if `opt_state` is not a `DenseWeights`:
        `tx` was not built by `optimizer`.
    """
    if not isinstance(opt_state, DenseWeights):
      raise LotteryError(
          f"tx: SR-STE's train step needs the optimizer of "
          f"StraightThrough.optimizer(tx), whose state holds the dense "
          f"weights (got a state of type {type(opt_state).__name__})")
    _, opt_state = tx.update(grads, opt_state, None, mask=mask, **extra)
    new_mask = self.mask(opt_state.dense)
    return (masks_lib.apply_mask(new_mask, opt_state.dense), opt_state,
            new_mask)


def sr_ste(mask: masks_lib.Mask, n_m: str, decay: float = 2e-4, *,
           field: str = "sparse.n_m") -> StraightThrough:
  """SR-STE over the prunable leaves of `mask` with pattern `n_m` ('2:4').

  Args:
    mask: a mask of the model (its structure and prunable leaves).
    n_m: the N:M pattern, e.g. '2:4'.
    decay: lambda_W, the decay of the pruned weights (>= 0).
    field: the config field named in errors.

  Raises:
    LotteryError: naming `field` for a pattern that is not N:M or an M that
      does not divide a prunable leaf's reduction axis.
  """
  # The config rule's check, so a call and a config give the same message.
  config_lib.check_real("sparse.sr_ste_decay", decay, 0, 1, lo_open=False,
                        hi_open=True)
  spec = structure.parse_n_m(n_m, field=field)
  leaves, treedef = jax.tree.flatten(mask, is_leaf=_is_none)
  live = tuple(i for i, m in enumerate(leaves) if m is not None)
  names = [n for n, m in masks_lib.named_leaves(mask).items() if m is not None]
  plan = structure.n_m_plan(spec, names,
                            [np.shape(leaves[i]) for i in live], field=field)
  return StraightThrough(treedef, live, plan, float(decay))
