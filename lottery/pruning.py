"""From scores + current mask + rate to a new mask, on the device.

How many weights go and which is `lottery.select`'s: the one rounding rule
(pruning a fraction p of n surviving weights removes round(p * n) of them,
halves up, p at its exact decimal value; `num_to_remove` here is
`select.num_to_remove`) and the exact top-k (ties broken by position: among
equal scores the weight earlier in tree order, leaf then row-major flat
index, is removed first). Only surviving weights are ranked, so a pruned
weight never comes back.

Everything runs in one compiled call, and `prune`, `keep_top` and
`random_like` also work inside a caller's `jax.jit` or `jax.vmap`, where the
mask and scores are tracers (rates, scope and `layer_fractions` stay static
Python values). The number of survivors is then a traced int32, and the
rounding rule is evaluated exactly on the device
(`select.counts_on_device`).

A structure (`lottery.structure`) changes what is ranked, not how: under
'neuron' (or 'head') the same exact count and ranking run on one entry per
unit (its weights' scores reduced; a set at its producers' `layer_fractions`
rate where one matches), and the unit mask is spread back over the
weights;
under 'N:M' every run of M weights along a leaf's input axis keeps its N
best survivors.

Non-finite scores of surviving weights: called on concrete arrays, `prune` and
`keep_top` raise LotteryError as before. Under a transformation nothing can be
raised, and the rule is: a NaN score counts as -inf (that weight is removed
first), +inf and -inf rank as themselves; the counts removed stay exact.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery import masks as masks_lib
from lottery import scores as scores_lib
from lottery import select
from lottery import structure as structure_lib
from lottery.errors import LotteryError
from lottery.select import keep_top_core
from lottery.select import num_to_remove  # noqa: F401  (public here too)

SCOPES = ("global", "layerwise", "module")


def parse_layer_fractions(spec: str | Mapping[str, float] | None,
                          *, field: str = "pruning.layer_fractions"
                          ) -> dict[str, float]:
  """Parses 'regex=rate,regex=rate' (or passes a mapping through, checked)."""
  if spec is None or (isinstance(spec, (str, Mapping)) and not spec):
    return {}
  if not isinstance(spec, (str, Mapping)):
    raise LotteryError(f"{field}: expected 'regex=rate,...' or a {{regex: "
                       f"rate}} mapping, got {spec!r}")
  if isinstance(spec, str):
    out = {}
    for item in spec.split(","):
      pattern, sep, value = item.strip().rpartition("=")
      try:
        if not sep or not pattern:
          raise ValueError
        out[pattern] = float(value)
      except ValueError:
        raise LotteryError(f"{field}: expected 'regex=rate,...', got "
                           f"{spec!r}") from None
    spec = out
  for pattern, rate in spec.items():
    masks_lib.compile_patterns([pattern], field)
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer,
                                                       np.floating)):
      raise LotteryError(f"{field}: rate for {pattern!r} must be a number in "
                         f"[0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
      raise LotteryError(f"{field}: rate for {pattern!r} must be in [0, 1), "
                         f"got {rate}")
  return dict(spec)


def _compile(overrides: Mapping[str, float], field: str):
  """[(compiled pattern, rate)] of parsed `layer_fractions`, in order."""
  return [(masks_lib.compile_patterns([p], field)[0], r)
          for p, r in overrides.items()]


def _override(compiled, name: str) -> float | None:
  """The rate of the first pattern that fully matches `name`, or None."""
  return next((r for rx, r in compiled if rx.fullmatch(name)), None)


def unit_set_fractions(sets: Sequence[str], overrides: Mapping[str, float],
                       *, structure: str = "neuron",
                       field: str = "pruning.layer_fractions",
                       whole: Sequence[str] = (),
                       streams_field: str = "residual_streams"
                       ) -> list[float | None]:
  """The `layer_fractions` rate of each unit set (None: `fraction`).

  A unit set takes the rate of its producers' kernels ('conv1/kernel' for
  the set 'conv1'; every producer of a set named 'a+b' must have the same).

  Args:
    sets: unit set names, producers joined with '+' (`structure.unit_plan`).
    overrides: parsed `layer_fractions` ({regex: rate}).
    structure: the structure's name, for messages.
    field: the config field (or argument) named in errors.
    whole: the producers of residual streams kept whole (`streams_field`
      False), which a pattern may not rate either; named in the error.
    streams_field: the residual-streams field, for messages.

  Raises:
    LotteryError: naming `field`, for a pattern that matches no unit set's
      producer kernel, or a set whose producers' rates differ.
  """
  compiled = _compile(overrides, field)
  kernels = {s: [f"{p}/kernel" for p in s.split("+")] for s in sets}
  for (rx, _), pattern in zip(compiled, overrides):
    if not any(rx.fullmatch(k) for ks in kernels.values() for k in ks):
      streams = [f"{p}/kernel" for p in whole
                 if rx.fullmatch(f"{p}/kernel")]
      if streams:
        raise LotteryError(
            f"{field}: {pattern!r} matches only residual-stream producers "
            f"({streams}), which {streams_field}=False keeps whole; set it "
            f"to True or leave them out of {field}")
      raise LotteryError(
          f"{field}: {pattern!r} matches the kernel of no unit set's producer "
          f"under structure {structure!r} (a set takes its producer's rate; "
          f"producers: {[k for ks in kernels.values() for k in ks]})")
  rates = []
  for s, ks in kernels.items():
    found = {k: _override(compiled, k) for k in ks}
    if len(set(found.values())) > 1:
      raise LotteryError(
          f"{field}: the units of {s} take one rate, but its producers' "
          f"kernels get {found} (None: the fraction); give them one rate")
    rates.append(found[ks[0]])
  return rates


def _rank_groups(rates: Sequence[float | None], fraction: float, scope: str,
                 modules: Sequence[str] = ()
                 ) -> tuple[tuple[tuple[int, ...], ...], list[float]]:
  """(groups of entry indices ranked together, each group's rate).

  An entry with a rate of its own (not None) is ranked alone at that rate;
  the others at `fraction`: all together under 'global', by `modules[j]`
  under 'module', each alone under 'layerwise'.
  """
  pooled = tuple(j for j, r in enumerate(rates) if r is None)
  groups, group_rates = [], []
  if scope == "global" and pooled:
    groups.append(pooled)
    group_rates.append(fraction)
  if scope == "module":
    by_module: dict[str, list[int]] = {}
    for j in pooled:
      by_module.setdefault(modules[j], []).append(j)
    groups.extend(tuple(g) for g in by_module.values())
    group_rates.extend(fraction for _ in by_module)
  for j, r in enumerate(rates):
    if r is not None or scope == "layerwise":
      groups.append((j,))
      group_rates.append(fraction if r is None else r)
  return tuple(groups), group_rates


def unit_groups(sizes: Mapping[str, int], fraction: float, scope: str,
                rates: Sequence[float | None] | None = None
                ) -> list[tuple[str, int, float, bool]]:
  """The unit counts that a 'neuron' or 'head' prune ranks together, as
  `prune` groups them (`_rank_groups`): (name, units, rate, own) per group.

  A set with a rate of its own (`rates[j]`, `unit_set_fractions`) is a
  group alone at that rate (own True); the others are at `fraction`, all
  in one group under 'global' (named 'its k unit set(s) together'), each
  alone under 'layerwise' and 'module'. `sizes`: {set name: units}
  (`structure.unit_counts`).
  """
  names, counts = list(sizes), list(sizes.values())
  rates = [None] * len(names) if rates is None else list(rates)
  unit_scope = "global" if scope == "global" else "layerwise"
  groups, group_rates = _rank_groups(rates, fraction, unit_scope)
  out = []
  for g, rate in zip(groups, group_rates):
    own = rates[g[0]] is not None
    name = (f"its {len(g)} unit set(s) together"
            if unit_scope == "global" and not own else names[g[0]])
    out.append((name, sum(counts[j] for j in g), rate, own))
  return out


def weight_groups(sizes: Mapping[str, int], fraction: float, scope: str,
                  layer_fractions: Mapping[str, float] | None = None
                  ) -> list[tuple[str, int, float, bool, tuple[str, ...]]]:
  """The weight counts that an unstructured `prune` ranks together: (name,
  weights, rate, own, member leaves) per group, as `unit_groups` for units.
  `sizes`: {prunable leaf path: its size}; a leaf that a `layer_fractions`
  pattern matches is a group alone at that rate (own True)."""
  names, counts = list(sizes), list(sizes.values())
  compiled = _compile(dict(layer_fractions or {}), "pruning.layer_fractions")
  rates = [_override(compiled, n) for n in names]
  modules = [n.rpartition("/")[0] for n in names]
  groups, group_rates = _rank_groups(rates, fraction, scope, modules)
  out = []
  for g, rate in zip(groups, group_rates):
    own = rates[g[0]] is not None
    name = (f"all {len(g)} prunable parameter arrays together"
            if scope == "global" and not own else f"module {modules[g[0]]}"
            if scope == "module" and not own else names[g[0]])
    out.append((name, sum(counts[j] for j in g), rate, own,
                tuple(names[j] for j in g)))
  return out


@functools.partial(jax.jit, static_argnames=("groups",))
def _prune_leaves(alive, scores, consts, *, groups):
  """Removes round(rate_g * survivors) from each group of prunable leaves.

  Args:
    alive: prunable mask leaves.
    scores: their scores.
    consts: `select.rate_constants` of the groups' rates (arrays: no
      recompile).
    groups: static tuple of tuples of leaf indices, each ranked together.

  Returns:
    (new mask leaves, whether all survivors' scores are finite).
  """
  layout, live, keys, finite = select.packed(alive, scores, groups)
  counts = select.counts_on_device(consts, layout.count(live))
  new = live & ~select.mark_lowest(layout, keys, counts)
  return layout.unpack(new, [np.shape(a) for a in alive]), finite


@functools.partial(jax.jit, static_argnames=("plan", "groups",
                                             "group_score"))
def _prune_units(alive, scores, consts, scales=None, *, plan, groups,
                 group_score):
  """`_prune_leaves` on the units of `plan` (`structure.unit_plan`), spread
  back over the weights: (new mask leaves, whether all scored units are
  finite). `scales`: the BatchNorm scales of 'bn_scale'."""
  units, unit_scores = structure_lib.reduce_units(plan, alive, scores,
                                                  group_score, scales)
  new_units, finite = _prune_leaves(units, unit_scores, consts, groups=groups)
  return structure_lib.spread_units(plan, alive, new_units), finite


_prune_n_m = jax.jit(structure_lib.n_m_leaves, static_argnums=0)
_keep_top_leaves = jax.jit(keep_top_core)


@jax.jit
def _random_like_leaves(alive, key):
  full = [jnp.ones(jnp.shape(a), bool) for a in alive]
  # Same draws as scores.random(full mask tree, key): one split per leaf.
  keep = jnp.stack([jnp.sum(jnp.asarray(a), dtype=jnp.int32) for a in alive])
  new, _, _ = keep_top_core(full, scores_lib.random(full, key), keep)
  return new


def _flatten(mask, scores, *, what: str = "scores"):
  """(treedef, [(path, mask leaf or None, score leaf)]) in tree order.

  Checks the arguments (structure, shapes and dtypes only, so also on
  tracers): `mask` is a mask pytree (bool arrays, None where not prunable),
  `scores` (named `what` in errors) has its structure and a leaf of the
  mask's shape for every prunable leaf.
  """
  if mask is None:
    raise LotteryError("mask: must be a mask pytree (bool arrays, None where "
                       "not prunable; from lottery.make_mask), got None")
  mleaves, treedef = jax.tree.flatten(mask, is_leaf=lambda x: x is None)
  names = masks_lib.named_leaves(mask)
  for name, m in names.items():
    if m is None:
      continue
    if not hasattr(m, "shape") or not hasattr(m, "dtype"):
      raise LotteryError(f"mask: leaf {name!r} must be a bool array or None, "
                         f"got {type(m).__name__} {m!r:.40}")
    if m.dtype != np.bool_:
      raise LotteryError(f"mask: leaf {name!r} has dtype {m.dtype}, must be "
                         f"bool")
  try:
    sleaves = treedef.flatten_up_to(scores)
  except (ValueError, TypeError):
    raise LotteryError(
        f"{what}: must have the mask's pytree structure (a score array per "
        f"prunable leaf: {[k for k, m in names.items() if m is not None]}), "
        f"got {type(scores).__name__} {scores!r:.60}") from None
  leaves = list(zip(names, mleaves, sleaves))
  for name, m, s in leaves:
    if m is None:
      continue
    if not hasattr(s, "shape") or not hasattr(s, "dtype"):
      raise LotteryError(f"{what}: leaf {name!r} must be an array of shape "
                         f"{np.shape(m)}, got {type(s).__name__} {s!r:.40}")
    if np.shape(s) != np.shape(m):
      raise LotteryError(f"{what}: leaf {name!r} has shape {np.shape(s)}, "
                         f"the mask has {np.shape(m)}")
  return treedef, leaves


def _unflatten(treedef, leaves, new):
  it = iter(new)
  return jax.tree.unflatten(
      treedef, [None if m is None else next(it) for _, m, _ in leaves])


def _is_false(flag: jax.Array) -> bool:
  """True if `flag` is concrete and False; a tracer cannot be checked."""
  try:
    return not bool(flag)
  except jax.errors.ConcretizationTypeError:
    return False


def _rate(name: str, value) -> float:
  """`value` as a float in [0, 1), or a LotteryError naming `name`."""
  if isinstance(value, (bool, str)) or value is None:
    ok = False
  else:
    try:
      value = float(value)
      ok = True
    except (TypeError, ValueError):  # A tracer, an array of several, ...
      ok = False
  if isinstance(value, jax.core.Tracer):
    raise LotteryError(f"{name}: must be a static Python number in [0, 1), "
                       f"not a traced value (got {value!r:.60})")
  if not ok:
    raise LotteryError(f"{name}: must be a number in [0, 1) (got "
                       f"{type(value).__name__} {value!r:.60})")
  if not 0.0 <= value < 1.0:
    raise LotteryError(f"{name}: must be in [0, 1) (got {value})")
  return value


def prune(mask: masks_lib.Mask, scores: Any, fraction: float, *,
          scope: str = "layerwise",
          layer_fractions: Mapping[str, float] | str | None = None,
          structure: str = "unstructured", group_score: str = "sum",
          coupling: Any = None,
          residual_streams: bool = True) -> masks_lib.Mask:
  """Removes the lowest-scoring surviving weights (or units, or keeps N:M).

  One compiled call; also works inside `jax.jit` / `jax.vmap` with traced
  `mask` and `scores` (the other arguments are static Python values).

  Args:
    mask: current mask (None leaves are not prunable).
    scores: pytree with the params' structure; higher = more important.
    fraction: fraction of the surviving prunable weights to remove, in [0, 1).
    scope: 'layerwise' removes `fraction` of each leaf's survivors;
      'global' ranks the survivors of all leaves together; 'module' ranks
      those of each module together (the leaves under one parent path, e.g.
      'fc1/kernel' with 'fc1/bias', as one vector per layer in the MNIST-1D
      authors' notebook).
    layer_fractions: {regex: rate} overrides, or the string
      'regex=rate,regex=rate' (e.g. {'out/kernel': 0.1} for Frankle &
      Carbin's half-rate output layer; a rate of 0 exempts a layer). A leaf
      whose path fully matches a pattern (first match wins) is pruned on its
      own at that rate, in any scope; the others follow `scope` at
      `fraction`. Under 'neuron' or 'head' a unit set takes the rate of its
      producers' kernels (the set 'conv1': 'conv1/kernel'; all producers of
      a set must get the same rate) and is then ranked on its own; not
      with an N:M structure.
    structure: 'unstructured' (default); 'neuron': removes `fraction` of
      the surviving units of each unit set of `coupling` ('layerwise',
      'module') or of all of them ('global'), whole units, by the same
      rounding rule; 'head': the same on its attention heads (the sets of
      kind 'head'); 'N:M' (e.g. '2:4'): keeps the N highest-scoring
      survivors of every M along each leaf's reduction axis, whatever
      `fraction` and `scope` (see `lottery.structure`).
    group_score: a unit's score under 'neuron' or 'head': 'sum', 'l1' or
      'l2' of its weights' scores, or a criterion (`lottery.structure`):
      'taylor' (|sum| of the scores, which are then the signed g * w of
      `scores.taylor_terms`) or 'bn_scale' (|gamma| of the unit's BatchNorm
      channels, read from the 'scale' leaves of `scores`, prunable or not:
      pass the params or `scores.magnitude(params)`).
    coupling: under 'neuron' or 'head', the model's units: a tuple of
      `structure.Units`, or the model itself (its `coupling()`).
    residual_streams: under 'neuron' or 'head', False keeps the residual
      streams of `coupling` whole (`structure.without_streams`: a ResNet
      then loses only its blocks' inner channels); True (default) prunes
      every unit set.

  Returns:
    The new mask (jnp.bool_ leaves); a subset of `mask`.

  Raises:
    LotteryError: naming the argument ('fraction: ...', 'scores: ...'): for
      an unknown scope, a fraction that is not a number in [0, 1), a bad
      `layer_fractions`, one whose pattern matches no prunable leaf (under
      'neuron' or 'head': no unit set's producer kernel), or one that gives
      a unit set's producers different rates, a
      mask that is not a bool mask pytree, scores not shaped like the mask,
      an unknown structure or group score, 'neuron' without a coupling,
      'head' without heads, an
      N:M whose M does not divide a leaf's reduction axis, or (concrete
      inputs only) non-finite scores of surviving weights.
  """
  if not isinstance(scope, str) or scope not in SCOPES:
    raise LotteryError(f"scope: unknown scope {scope!r} "
                       f"(known: {list(SCOPES)})")
  fraction = _rate("fraction", fraction)
  overrides = parse_layer_fractions(layer_fractions, field="layer_fractions")
  compiled = _compile(overrides, "layer_fractions")
  treedef, leaves = _flatten(mask, scores)
  live = [(name, m, s) for name, m, s in leaves if m is not None]
  prunable = [name for name, _, _ in live]
  for (rx, _), pattern in zip(compiled, overrides):
    if not any(rx.fullmatch(name) for name in prunable):
      raise LotteryError(f"layer_fractions: {pattern!r} matches no prunable "
                         f"parameter (prunable: {prunable})")
  if not live:
    return mask
  spec = structure_lib.parse(structure)
  structure_lib.check_streams(residual_streams, spec)
  if spec.kind not in structure_lib.UNIT_KINDS:
    structure_lib.check_criterion(group_score, spec, None, None, "")
  if spec.kind != structure_lib.UNSTRUCTURED:
    if overrides and spec.kind == "N:M":
      raise LotteryError(f"layer_fractions: not used with structure "
                         f"{str(spec)!r}, which keeps N of every M in every "
                         f"layer (got {layer_fractions!r})")
    return _unflatten(treedef, leaves, _prune_structured(
        spec, leaves, fraction, scope, group_score, coupling, overrides,
        residual_streams))
  rates = [_override(compiled, name) for name in prunable]
  groups, group_rates = _rank_groups(
      rates, fraction, scope, [name.rpartition("/")[0] for name in prunable])
  new, finite = _prune_leaves([m for _, m, _ in live], [s for _, _, s in live],
                              select.rate_constants(group_rates),
                              groups=groups)
  if _is_false(finite):
    raise LotteryError("scores: the scores of surviving weights are not all "
                       "finite")
  return _unflatten(treedef, leaves, new)


def _unit_plan(leaves, group_score, coupling, kind, residual_streams):
  """(the unit sets of kind `kind` of the live leaves under `coupling`
  (units, or a model that declares them; without its residual streams if
  `residual_streams` is False), the BatchNorm scales of each set under
  'bn_scale' (else None)), after checking `group_score`; `leaves` as
  `_flatten`'s."""
  structure_lib.check_group_score(group_score)
  model = None
  if coupling is not None and not isinstance(coupling, (tuple, list)):
    model = type(coupling).__name__  # A model: named if it has none.
    coupling = structure_lib.coupling_of(coupling)
  coupling = structure_lib.without_streams(coupling, residual_streams)
  structure_lib.check_modules(coupling, [name for name, _, _ in leaves],
                              model=model)
  live = [(name, m, s) for name, m, s in leaves if m is not None]
  shapes = [tuple(np.shape(m)) for _, m, _ in live]
  plan = structure_lib.unit_plan(coupling, [name for name, _, _ in live],
                                 shapes, kind=kind, model=model)
  if group_score != "bn_scale":
    return plan, None
  found = structure_lib.channel_scales(coupling, plan,
                                       [name for name, _, _ in leaves])
  sizes = structure_lib.set_sizes(plan, shapes)
  for (unit_set, _), js in zip(plan, found):
    for j in js:
      if np.shape(leaves[j][2]) != (sizes[unit_set],):
        raise LotteryError(
            f"scores: 'bn_scale' reads {leaves[j][0]} from the scores (the "
            f"BatchNorm scales of {unit_set}'s {sizes[unit_set]} units; pass "
            f"the params or their magnitudes), got {leaves[j][2]!r:.60}")
  return plan, [[leaves[j][2] for j in js] for js in found]


def _prune_structured(spec, leaves, fraction, scope, group_score, coupling,
                      overrides, residual_streams):
  """`prune`'s new mask leaves under an N:M, neuron or head structure;
  `overrides` the parsed `layer_fractions` (none under N:M)."""
  live = [(name, m, s) for name, m, s in leaves if m is not None]
  names = [name for name, _, _ in live]
  shapes = [tuple(np.shape(m)) for _, m, _ in live]
  alive, scores = [m for _, m, _ in live], [s for _, _, s in live]
  if spec.kind == "N:M":
    new, finite = _prune_n_m(structure_lib.n_m_plan(spec, names, shapes),
                             alive, scores)
  else:
    plan, scales = _unit_plan(leaves, group_score, coupling, spec.kind,
                              residual_streams)
    rates = unit_set_fractions(
        [name for name, _ in plan], overrides, structure=str(spec),
        field="layer_fractions",
        whole=(() if residual_streams else
               structure_lib.stream_producers(coupling)))
    # A unit set is one ranked entry: 'module' ranks each set on its own
    # (as `unit_groups` reports the groups).
    groups, group_rates = _rank_groups(
        rates, fraction, "global" if scope == "global" else "layerwise")
    new, finite = _prune_units(
        alive, scores, select.rate_constants(group_rates),
        scales, plan=plan, groups=groups, group_score=group_score)
  if _is_false(finite):
    raise LotteryError("scores: the scores of surviving weights are not all "
                       "finite")
  return new


def _keep_counts(sizes: Mapping[str, int], counts, what: str) -> list:
  """The whole counts of `counts` for every name of `sizes` (in order), each
  in [0, size] (a traced JAX integer scalar, computed in a compiled step,
  is clipped to it); `what` names the things counted
  ('weights', 'units')."""
  keep = []
  for name, size in sizes.items():
    if name not in counts:
      raise LotteryError(f"counts: no keep count for {name} (got counts for "
                         f"{sorted(counts)})")
    k = counts[name]
    if isinstance(k, jax.Array):
      if np.shape(k) or not jnp.issubdtype(k.dtype, jnp.integer):
        raise LotteryError(f"counts: the count of {name} must be a whole "
                           f"number (got an array of {k.dtype}"
                           f"{list(np.shape(k))})")
      if isinstance(k, jax.core.Tracer):  # Known when the step runs.
        keep.append(jnp.clip(k, 0, size))
        continue
      k = int(k)
    if isinstance(k, bool) or not isinstance(
        k, (int, float, np.integer, np.floating)) or k != int(k):
      raise LotteryError(f"counts: the count of {name} must be a whole "
                         f"number (got {k!r})")
    k = int(k)
    if not 0 <= k <= size:
      raise LotteryError(f"counts: cannot keep {k} {what} of {name}, which "
                         f"has {size}")
    keep.append(k)
  return keep


@functools.partial(jax.jit, static_argnames=("plan", "group_score"))
def _keep_top_units(alive, scores, keep, scales=None, *, plan, group_score):
  """`keep_top_core` on the units of `plan`, spread back over the weights:
  (new mask leaves, surviving units per set, whether unit scores are
  finite)."""
  units, unit_scores = structure_lib.reduce_units(plan, alive, scores,
                                                  group_score, scales)
  new_units, n, finite = keep_top_core(units, unit_scores, keep)
  return structure_lib.spread_units(plan, alive, new_units), n, finite


def keep_top(mask: masks_lib.Mask, scores: Any,
             counts: Mapping[str, int], *, structure: str = "unstructured",
             group_score: str = "sum", coupling: Any = None,
             residual_streams: bool = True) -> masks_lib.Mask:
  """Keeps exactly `counts[path]` highest-scoring survivors in each leaf.

  Ties as in `prune` (the earlier weight goes first). One compiled call for
  all counts of the same shapes; also works inside `jax.jit` / `jax.vmap`,
  with traced counts too (integer scalars computed in the step, which are
  clipped to [0, leaf size] where the checks below cannot run).

  Args:
    mask: current mask (None leaves are not prunable).
    scores: pytree with the params' structure; higher = more important.
    counts: {path: number of weights to keep (an int, or a JAX integer
      scalar)} for every prunable leaf; under
      'neuron' or 'head', {unit set: number of units to keep} for every
      unit set of the coupling, a set named by its producers joined with
      '+' ('fc1', 'fc1+fc2'; `structure.unit_plan`).
    structure: 'unstructured' (default), 'neuron' or 'head' (as in
      `prune`; an N:M structure fixes its own counts: use `prune`).
    group_score, coupling, residual_streams: under 'neuron' or 'head', as
      in `prune` (without the streams, `counts` names no stream).

  Returns:
    The new mask; a subset of `mask`.

  Raises:
    LotteryError: naming the argument ('counts: ...', 'mask: ...',
      'scores: ...'): for masks and scores as `prune`; if `counts` is not a
      mapping, a prunable leaf (unit set) has no count, a count is negative
      or larger than its leaf, or (concrete inputs only) more weights are
      asked for than survive or surviving scores are not finite. Under a
      transformation a leaf with fewer survivors than asked keeps them all.
  """
  treedef, leaves = _flatten(mask, scores)
  live = [(name, m, s) for name, m, s in leaves if m is not None]
  if not isinstance(counts, Mapping):
    raise LotteryError(f"counts: must be a {{path: count}} mapping for the "
                       f"prunable leaves {[name for name, _, _ in live]}, "
                       f"got {type(counts).__name__} {counts!r:.60}")
  if not live:
    return mask
  spec = structure_lib.parse(structure)
  structure_lib.check_streams(residual_streams, spec)
  alive, scores = [m for _, m, _ in live], [s for _, _, s in live]
  if spec.kind == "N:M":
    raise LotteryError(f"structure: keep_top takes 'unstructured', "
                       f"'neuron' or 'head'; {str(spec)!r} fixes its own "
                       f"counts (N of every M): use prune")
  if spec.kind in structure_lib.UNIT_KINDS:
    plan, scales = _unit_plan(leaves, group_score, coupling, spec.kind,
                              residual_streams)
    sizes = structure_lib.set_sizes(plan, [np.shape(a) for a in alive])
    what = "units"
    keep = _keep_counts(sizes, counts, what)
    new, n, finite = _keep_top_units(alive, scores,
                                     jnp.asarray(keep, jnp.int32), scales,
                                     plan=plan, group_score=group_score)
  else:
    sizes, what = {name: np.size(m) for name, m, _ in live}, "weights"
    keep = _keep_counts(sizes, counts, what)
    new, n, finite = _keep_top_leaves(alive, scores,
                                      jnp.asarray(keep, jnp.int32))
  if not isinstance(n, jax.core.Tracer):  # under a transformation: see above
    for name, k, left in zip(sizes, keep, np.asarray(n).tolist()):
      if k > left:
        raise LotteryError(f"counts: cannot keep {k} {what} of {name}, "
                           f"only {left} survive")
  if _is_false(finite):
    raise LotteryError("scores: the scores of surviving weights are not all "
                       "finite")
  return _unflatten(treedef, leaves, new)


prune_to_counts = keep_top  # the earlier name


def random_like(mask: masks_lib.Mask, key: jax.Array) -> masks_lib.Mask:
  """A mask with `mask`'s per-leaf kept counts at uniformly random positions.

  The random-pruning control: same per-layer densities, random positions.
  Each leaf keeps the top-k of uniform scores (`scores.random` over an
  all-kept mask, so the draws depend only on `key` and the leaf shapes), k
  being its kept count; k may be traced, so this works inside `jax.jit` and
  `jax.vmap` and gives the same mask there as eagerly.
  """
  treedef, leaves = _flatten(mask, mask, what="mask")
  live = [m for _, m, _ in leaves if m is not None]
  if not live:
    return mask
  return _unflatten(treedef, leaves, _random_like_leaves(live, key))
