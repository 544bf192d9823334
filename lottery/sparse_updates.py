"""Mask updates of sparse training, run inside the compiled train step.

Each factory returns a `step.MaskUpdate` hook, `hook(state, dense_grads, key)
-> new mask`, for `experiment.build(config, mask_update=hook,
update_every=dT)` (or `Experiment.with_mask_update`). The engine calls it at
steps s > 0 with s % dT == 0 under `lax.cond`, after that step's optimizer
update (the state it gets holds the updated params and optimizer state, the
step's mask and step number), starts the weights it adds at 0 with a fresh
optimizer state, and zeroes the weights it drops. Everything that depends on
the step is a host-computed table indexed on the device by j = s // dT, so
the hook compiles once per run and never again; the tables change nothing at
a due last step (no training would follow it, `schedules.num_updates`).

  set   (Mocanu et al. 2018) drop the d smallest-|w| active weights of each
        leaf, regrow d at random among the inactive ones.
  rigl  (Evci et al. 2020) drop as SET, regrow the d inactive weights of
        largest |dense gradient| (of the step's batch).
  gmp   (Zhu & Gupta 2017) keep the k_j largest-|w| active weights, k_j
        falling from dense to the target along the cubic schedule.
  nm    N:M sparse training: RigL whose growth refills each run of M
        weights along the reduction axis to exactly N (see `n_m_rigl`).
  sr_ste  (Zhou et al. 2021) N:M from dense weights every step, their
        gradient passed straight through (`lottery.straight_through`;
        not a hook: the step itself runs it).

Drop and grow, as in the RigL code (`SparseSETOptimizer._get_update_op`):
the d weights to drop are ranked among the active weights only; the grow
candidates are all weights not kept after the drop -- the inactive ones and
the d just dropped (the code scores the kept ones lowest, min - 1, so they are
never grown; a just-dropped weight may come straight back, and then keeps its
value and optimizer state, as it does there: the engine resets only weights
that were inactive before the update). Exactly d are grown, so every leaf
keeps exactly its count through training. Differences from the code, on
purpose: d = round(fraction x active) by the framework's one rounding rule
(the code truncates); no 1e-5 noise on the drop scores (the code's TF1
version adds it "for a slight bit of randomness"; its TF2 version does not);
ties go by position, the framework's rule (`lottery.select`: among equal
scores the earlier weight in tree order goes first), so equal inputs give
equal masks.

Drop fraction: fraction(s) = alpha / 2 (1 + cos(pi s / T_end)) for s < T_end
= end_fraction x T, and 0 after (RigL's cosine annealing, used for SET as
well, as the RigL paper does for every dynamic method; `lottery.schedules`,
like GMP's cubic); with fraction 0 the mask stays as it is.

The methods 'static', 'set', 'rigl', 'gmp', 'nm' and 'sr_ste' are a `Registry` (`register`,
`names`, `get`, `info`; info `dynamic`: whether the mask changes): an entry
builds a group's hook and counts its mask-changing updates, and
`lottery.sparse` calls the one its group names (see `static` for the form).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lottery import masks as masks_lib
from lottery import schedules
from lottery import scores as scores_lib
from lottery import select
from lottery import step as step_lib
from lottery import straight_through
from lottery import structure
from lottery.errors import LotteryError
from lottery.registry import Registry

# The schedule's update grid and RigL's cosine drop fractions live in
# `lottery.schedules`; these are their earlier names.
num_updates = schedules.num_updates
drop_fractions = schedules.drop_fractions


def _is_none(x) -> bool:
  return x is None


def drop_table(counts: Mapping[str, int], fractions: np.ndarray) -> np.ndarray:
  """int32 (J + 2, L): weights dropped (and grown) per leaf at update j:
  `select.num_to_remove(fraction_j, count)`."""
  return np.asarray([[select.num_to_remove(float(f), k)
                      for k in counts.values()] for f in fractions],
                    np.int32).reshape(len(fractions), len(counts))


def gmp_table(sizes: Mapping[str, int], counts: Mapping[str, int], *,
              steps: int, update_every: int, begin_step: int,
              end_step: int) -> np.ndarray:
  """int32 (J + 1, L): weights each leaf keeps after update j under the
  cubic schedule of Zhu & Gupta 2017.

  Leaf l's sparsity at step s is s_l (1 - (1 - p)^3) (`schedules.
  gmp_sparsity`) with s_l = 1 - count_l / size_l its final sparsity; it keeps
  size_l - round(size_l x that), halves up (`select.round_half_up`),
  computed exactly, so the last updates keep exactly `counts`.
  """
  rows = []
  for j in range(num_updates(steps, update_every) + 1):
    share = schedules.gmp_sparsity(j * update_every, begin_step, end_step)
    rows.append([sizes[k] - select.round_half_up((sizes[k] - counts[k]) *
                                                 share) for k in counts])
  return np.asarray(rows, np.int32).reshape(-1, len(counts))


def changes(table: np.ndarray, method: str) -> int:
  """The updates that change the mask's counts or positions: for set and
  rigl those with a drop count > 0 in some leaf, for gmp those whose keep
  counts fall."""
  if method == "gmp":
    return int(np.sum(np.any(table[1:] < table[:-1], axis=1)))
  return int(np.sum(np.any(table[1:] > 0, axis=1)))


def _keep_top(alive, scores, keep) -> list[jax.Array]:
  """`pruning.keep_top` for traced counts (its masks, its tie rule)."""
  return select.keep_top_core(alive, scores, keep)[0]


def _index(state, update_every: int, rows: int) -> jax.Array:
  return jnp.minimum(state.step // update_every, rows - 1)


def drop_and_grow(kind: str, mask: masks_lib.Mask, counts: Mapping[str, int],
                  table: np.ndarray, update_every: int
                  ) -> step_lib.MaskUpdate:
  """The SET ('set') or RigL ('rigl') hook.

  Args:
    kind: 'set' (random growth, from the hook's key) or 'rigl' (growth by
      |dense gradient|).
    mask: a mask of the model (its structure and prunable leaves).
    counts: {path: kept count} of every prunable leaf (constant in training).
    table: `drop_table(counts, ...)`.
    update_every: dT, the engine's update period.

  Returns:
    A `step.MaskUpdate`.
  """
  if kind not in ("set", "rigl"):
    raise ValueError(f"drop_and_grow: kind must be 'set' or 'rigl' (got "
                     f"{kind!r})")
  leaves, treedef = jax.tree.flatten(mask, is_leaf=_is_none)
  live = [i for i, m in enumerate(leaves) if m is not None]
  keep = np.asarray(list(counts.values()), np.int32)
  table = np.asarray(table, np.int32)

  def hook(state, grads, key):
    drop = jnp.asarray(table)[_index(state, update_every, len(table))]
    m = treedef.flatten_up_to(state.mask)
    alive = [m[i] for i in live]
    w = treedef.flatten_up_to(state.params)
    kept = _keep_top(alive, [jnp.abs(w[i]) for i in live], keep - drop)
    candidates = [~k for k in kept]
    if kind == "rigl":
      g = treedef.flatten_up_to(grads)
      score = [jnp.abs(g[i]) for i in live]
    else:
      score = scores_lib.random(candidates, key)
    grown = _keep_top(candidates, score, drop)
    new = list(m)
    for i, k, gr in zip(live, kept, grown):
      new[i] = k | gr
    return jax.tree.unflatten(treedef, new)

  return hook


def n_m_rigl(mask: masks_lib.Mask, table: np.ndarray, update_every: int,
             n_m: str) -> step_lib.MaskUpdate:
  """The N:M hook ('nm'): RigL under an N:M structure, exactly N of every M.

  At an update the d_l smallest-|w| active weights of leaf l are dropped, as
  RigL drops them (d_l = `table[j, l]`, the cosine-annealed drop count of
  `drop_table`); then every run of M consecutive weights along the leaf's
  reduction axis (`structure.reduction_axis`: a Dense kernel's axis 0, a
  conv kernel's input channels) grows back as many as it lost, the largest
  |dense gradient| among its weights not kept (`structure.n_m_fill`; a
  just-dropped weight may come straight back, keeping its value). So the
  mask holds exactly N of every M before and after every update; the run
  starts from a random N:M mask (`lottery.sparse`). Density N/M in every
  layer.

  How it differs from SR-STE ('sr_ste', `lottery.straight_through`): SR-STE
  keeps dense weights in the optimizer state, recomputes the N:M mask from
  their magnitudes every step and passes gradients straight through to the
  pruned ones. Here pruned weights are exactly 0 with no dense value behind
  them, so a pruned weight has no magnitude to come back by: the dense
  gradient chooses regrowth, as in RigL, and a grown weight starts at 0
  with a fresh optimizer state. For that reason the update period is the
  run's `sparse.update_every` (RigL's Delta T), not 1: updated every step, a
  weight grown at 0 would be the smallest of its run at the next update.

  Args:
    mask: a mask of the model (its structure and prunable leaves).
    table: `drop_table(counts, ...)` with counts N/M of every leaf.
    update_every: dT, the engine's update period.
    n_m: the pattern, e.g. '2:4'.

  Raises:
    LotteryError: ('sparse.n_m: ...') for an M that does not divide a
      prunable leaf's reduction axis.
  """
  spec = structure.parse(n_m, field="sparse.n_m")
  named = {k: np.shape(m) for k, m in masks_lib.named_leaves(mask).items()
           if m is not None}
  plan = structure.n_m_plan(spec, list(named), list(named.values()),
                            field="sparse.n_m")
  keep = np.asarray([np.prod(s, dtype=int) // spec.m * spec.n
                     for s in named.values()], np.int32)
  leaves, treedef = jax.tree.flatten(mask, is_leaf=_is_none)
  live = [i for i, m in enumerate(leaves) if m is not None]
  table = np.asarray(table, np.int32)

  def hook(state, grads, key):
    del key
    drop = jnp.asarray(table)[_index(state, update_every, len(table))]
    m = treedef.flatten_up_to(state.mask)
    w = treedef.flatten_up_to(state.params)
    g = treedef.flatten_up_to(grads)
    kept = _keep_top([m[i] for i in live], [jnp.abs(w[i]) for i in live],
                     keep - drop)
    grown = structure.n_m_fill(plan, kept, [jnp.abs(g[i]) for i in live])
    new = list(m)
    for i, k in zip(live, grown):
      new[i] = k
    return jax.tree.unflatten(treedef, new)

  return hook


def magnitude_schedule(mask: masks_lib.Mask, table: np.ndarray,
                       update_every: int) -> step_lib.MaskUpdate:
  """The GMP hook: keep the `table[j]` largest-|w| active weights per leaf.

  Args:
    mask: a mask of the model (its structure and prunable leaves).
    table: `gmp_table(...)`.
    update_every: dT, the engine's update period.
  """
  leaves, treedef = jax.tree.flatten(mask, is_leaf=_is_none)
  live = [i for i, m in enumerate(leaves) if m is not None]
  table = np.asarray(table, np.int32)

  def hook(state, grads, key):
    del grads, key
    keep = jnp.asarray(table)[_index(state, update_every, len(table))]
    m = treedef.flatten_up_to(state.mask)
    w = treedef.flatten_up_to(state.params)
    kept = _keep_top([m[i] for i in live], [jnp.abs(w[i]) for i in live],
                         keep)
    new = list(m)
    for i, k in zip(live, kept):
      new[i] = k
    return jax.tree.unflatten(treedef, new)

  return hook


# Sparse-training methods by name (config `sparse.methods`), with info
# `dynamic` (whether the mask changes in training). An entry is
#   fn(mask, counts, *, steps, update_every, drop_fraction, end_fraction,
#      begin_step, end_step) -> (hook or None, updates that change the mask)
# with `counts` the {path: kept count} of the target density and the rest
# the run's `training.steps` and `sparse.*` fields (end_step: GMP's resolved
# end step, `sparse.gmp_end`; n_m: the N:M pattern of 'nm' and 'sr_ste';
# sr_ste_decay: SR-STE's lambda_W). 'sr_ste' returns a
# `straight_through.StraightThrough` in the hook's place (info `every_step`:
# the mask is set every step, `sparse.update_every` is not read).
SparseMethod = Callable[..., tuple[step_lib.MaskUpdate | None, int]]
_METHODS = Registry("sparse method", "sparse.methods")
register = _METHODS.register
unregister = _METHODS.unregister
names = _METHODS.names
get = _METHODS.get
info = _METHODS.info


@register("static", dynamic=False)
def static(mask, counts, **schedule):
  """The mask stays as it is: no hook."""
  del mask, counts, schedule
  return None, 0


def _drop_and_grow_method(kind: str) -> SparseMethod:
  def build(mask, counts, *, steps, update_every, drop_fraction,
            end_fraction, **schedule):
    del schedule
    table = drop_table(counts, drop_fractions(steps, update_every,
                                              drop_fraction, end_fraction))
    return (drop_and_grow(kind, mask, counts, table, update_every),
            changes(table, kind))
  build.__name__ = build.__qualname__ = kind
  build.__doc__ = f"`drop_and_grow('{kind}', ...)` on the cosine drop table."
  return build


register("set", dynamic=True)(_drop_and_grow_method("set"))
register("rigl", dynamic=True)(_drop_and_grow_method("rigl"))


@register("gmp", dynamic=True)
def gmp(mask, counts, *, steps, update_every, begin_step, end_step,
        **schedule):
  """`magnitude_schedule` on the cubic keep table (`gmp_table`)."""
  del schedule
  sizes = {k: t for k, (_, t) in masks_lib.counts(mask).items()}
  table = gmp_table(sizes, counts, steps=steps, update_every=update_every,
                    begin_step=begin_step, end_step=end_step)
  return (magnitude_schedule(mask, table, update_every),
          changes(table, "gmp"))


def _check_n_m_counts(mask, counts, n_m: str, method: str) -> None:
  spec = structure.parse(n_m, field="sparse.n_m")
  for path, (_, size) in masks_lib.counts(mask).items():
    if counts[path] * spec.m != size * spec.n:
      raise LotteryError(
          f"sparse.densities: {method!r} keeps {spec.n} of every {spec.m}, "
          f"{size // spec.m * spec.n} of the {size} weights of {path} "
          f"(got a count of {counts[path]})")


@register("nm", dynamic=True)
def nm(mask, counts, *, steps, update_every, drop_fraction, end_fraction,
       n_m, **schedule):
  """`n_m_rigl` on RigL's cosine drop table; `counts` must be N/M of every
  leaf (`lottery.sparse` refuses other densities and distributions)."""
  del schedule
  _check_n_m_counts(mask, counts, n_m, "nm")
  table = drop_table(counts, drop_fractions(steps, update_every,
                                            drop_fraction, end_fraction))
  return n_m_rigl(mask, table, update_every, n_m), changes(table, "rigl")


@register("sr_ste", dynamic=True, every_step=True)
def sr_ste(mask, counts, *, steps, n_m, sr_ste_decay, **schedule):
  """SR-STE (`lottery.straight_through`): no hook but a `StraightThrough`,
  which the step runs every step (so `steps` updates); `counts` must be N/M
  of every leaf, as for 'nm'."""
  del schedule
  _check_n_m_counts(mask, counts, n_m, "sr_ste")
  return straight_through.sr_ste(mask, n_m, sr_ste_decay), steps


# The built-in methods whose mask changes in training (`names(dynamic=True)`
# also lists those registered later).
DYNAMIC = tuple(names(dynamic=True))


@jax.jit
def mask_stats(mask: masks_lib.Mask, initial: masks_lib.Mask
               ) -> dict[str, jax.Array]:
  """On the device: 'mask_change' = fraction of `mask`'s kept weights that
  `initial` does not keep, and 'mask_density' = kept / prunable."""
  ms, ins = jax.tree.leaves(mask), jax.tree.leaves(initial)
  kept = sum(jnp.sum(m, dtype=jnp.int32) for m in ms)
  new = sum(jnp.sum(m & ~i, dtype=jnp.int32) for m, i in zip(ms, ins))
  total = sum(m.size for m in ms)
  return {"mask_change": new / jnp.maximum(kept, 1),
          "mask_density": kept / total}
