"""From scores + current mask + rate to a new mask.

The one rounding rule: pruning a fraction p of n surviving weights removes
round(p * n) of them, halves rounded up, with p taken at its exact decimal
value (so 0.2 * 235200 is exactly 47040). After k rounds at rate p a layer keeps
the nearest whole number to (1 - p)^k of its weights, up to one weight per
round; this reproduces the weights-remaining figures Frankle & Carbin 2019
report for LeNet (51.3% after 3 rounds ... 1.9% after 18), where OpenLTH's
ceil rule drifts below them (1.8% after 18).

Only surviving weights are ranked, so a pruned weight never comes back. Ties are
broken by position: among equal scores the weight earlier in tree order (leaf
order, then row-major flat index) is removed first. Ranking runs on the host in
float64 with a stable sort, so the same scores always give the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery import masks as masks_lib
from lottery import scores as scores_lib
from lottery.errors import LotteryError

SCOPES = ("global", "layerwise")


def num_to_remove(fraction: float, surviving: int) -> int:
  """How many of `surviving` weights a prune at rate `fraction` removes."""
  return math.floor(Fraction(repr(float(fraction))) * surviving
                    + Fraction(1, 2))


def parse_layer_fractions(spec: str | Mapping[str, float] | None,
                          *, field: str = "pruning.layer_fractions"
                          ) -> dict[str, float]:
  """Parses 'regex=rate,regex=rate' (or passes a mapping through, checked)."""
  if not spec:
    return {}
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
    if not 0.0 <= rate < 1.0:
      raise LotteryError(f"{field}: rate for {pattern!r} must be in [0, 1), "
                         f"got {rate}")
  return dict(spec)


def _flatten(mask, scores):
  """(treedef, [(path, mask leaf or None, score leaf)]) in tree order."""
  mleaves, treedef = jax.tree.flatten(mask, is_leaf=lambda x: x is None)
  names = masks_lib.named_leaves(mask)
  return treedef, list(zip(names, mleaves, treedef.flatten_up_to(scores)))


def _remove_lowest(alive: list[np.ndarray], scores: list[np.ndarray],
                   n: int) -> None:
  """Clears, in place, the `n` lowest-scoring True entries across `alive`."""
  if n <= 0:
    return
  idx = [np.flatnonzero(a) for a in alive]
  cand = np.concatenate([s[i] for s, i in zip(scores, idx)])
  if not np.all(np.isfinite(cand)):
    raise LotteryError("pruning.score: scores of surviving weights are not "
                       "all finite")
  # A stable sort keeps candidates in (leaf, flat index) order among ties.
  drop = np.argsort(cand, kind="stable")[:n]
  offsets = np.cumsum([0] + [len(i) for i in idx])
  for j, (a, i) in enumerate(zip(alive, idx)):
    sel = drop[(drop >= offsets[j]) & (drop < offsets[j + 1])] - offsets[j]
    a[i[sel]] = False


def prune(mask: masks_lib.Mask, scores: Any, fraction: float, *,
          scope: str = "layerwise",
          layer_fractions: Mapping[str, float] | str | None = None
          ) -> masks_lib.Mask:
  """Removes the lowest-scoring surviving weights.

  Args:
    mask: current mask (None leaves are not prunable).
    scores: pytree with the params' structure; higher = more important.
    fraction: fraction of the surviving prunable weights to remove, in [0, 1).
    scope: 'layerwise' removes `fraction` of each leaf's survivors;
      'global' ranks the survivors of all leaves together.
    layer_fractions: {regex: rate} overrides (e.g. {'out/kernel': 0.1} for
      Frankle & Carbin's half-rate output layer). A leaf whose path fully
      matches a pattern (first match wins) is pruned on its own at that rate,
      in either scope; the others follow `scope` at `fraction`.

  Returns:
    The new mask; a subset of `mask`.
  """
  if scope not in SCOPES:
    raise LotteryError(f"pruning.scope: unknown scope {scope!r} "
                       f"(known: {list(SCOPES)})")
  overrides = parse_layer_fractions(layer_fractions)
  compiled = [(masks_lib.compile_patterns([p], "pruning.layer_fractions")[0], r)
              for p, r in overrides.items()]
  treedef, leaves = _flatten(mask, scores)
  alive, score_list, rates = [], [], []
  for name, m, s in leaves:
    if m is None:
      continue
    alive.append(np.array(m, dtype=bool).reshape(-1))
    score_list.append(np.asarray(s, dtype=np.float64).reshape(-1))
    rate = next((r for rx, r in compiled if rx.fullmatch(name)), None)
    rates.append(rate)

  pooled = [j for j, r in enumerate(rates) if r is None]
  if scope == "global" and pooled:
    n = num_to_remove(fraction, sum(int(alive[j].sum()) for j in pooled))
    sub = [alive[j] for j in pooled]
    _remove_lowest(sub, [score_list[j] for j in pooled], n)
  for j, r in enumerate(rates):
    if r is None and scope == "global":
      continue
    rate = fraction if r is None else r
    _remove_lowest([alive[j]], [score_list[j]],
                   num_to_remove(rate, int(alive[j].sum())))

  it = iter(alive)
  new = [None if m is None else jnp.asarray(next(it).reshape(np.shape(m)))
         for _, m, _ in leaves]
  return jax.tree.unflatten(treedef, new)


def prune_to_counts(mask: masks_lib.Mask, scores: Any,
                    keep: Mapping[str, int]) -> masks_lib.Mask:
  """Keeps exactly `keep[path]` highest-scoring survivors in each leaf."""
  treedef, leaves = _flatten(mask, scores)
  new = []
  for name, m, s in leaves:
    if m is None:
      new.append(None)
      continue
    a = np.array(m, dtype=bool).reshape(-1)
    if keep[name] > a.sum():
      raise LotteryError(f"mask: cannot keep {keep[name]} weights of {name}, "
                         f"only {int(a.sum())} survive")
    _remove_lowest([a], [np.asarray(s, np.float64).reshape(-1)],
                   int(a.sum()) - keep[name])
    new.append(jnp.asarray(a.reshape(np.shape(m))))
  return jax.tree.unflatten(treedef, new)


def random_like(mask: masks_lib.Mask, key: jax.Array) -> masks_lib.Mask:
  """A mask with `mask`'s per-leaf kept counts at uniformly random positions.

  The random-pruning control: same per-layer densities, random positions.
  """
  keep = {k: kept for k, (kept, _) in masks_lib.counts(mask).items()}
  full = jax.tree.map(lambda m: None if m is None else jnp.ones_like(m), mask,
                      is_leaf=lambda x: x is None)
  return prune_to_counts(full, scores_lib.random(full, key), keep)
