"""Mask pytrees: which parameters are prunable, applying masks, densities.

A mask has the structure of the params it masks. A prunable leaf holds a boolean
array of the parameter's shape (True = kept); a leaf that is not prunable holds
None. Masks are always passed to compiled functions as arguments, never closed
over, so a new mask never recompiles anything.

Density = kept / total over prunable weights; sparsity = 1 - density.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery.errors import LotteryError

PyTree = Any
Mask = Any

DEFAULT_PRUNABLE = (".*kernel",)


def _is_none(x) -> bool:
  return x is None


def path_str(path) -> str:
  """'/'-joined names of a `jax.tree_util` key path, e.g. 'fc1/kernel'.

  The trailing '.value' of a Flax NNX variable (`nnx.state(model, nnx.Param)`)
  is dropped, so NNX and linen params have the same paths.
  """
  path = tuple(path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and \
      path[-1].name == "value":
    path = path[:-1]
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def named_leaves(tree: PyTree) -> dict[str, Any]:
  """Flat {path: leaf} of a pytree, in tree order (None leaves included)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
  return {path_str(p): leaf for p, leaf in flat}


def compile_patterns(patterns: Sequence[str], field: str) -> list[re.Pattern]:
  """Compiles regexes, naming `field` in the error if one is invalid."""
  if isinstance(patterns, str):
    patterns = (patterns,)
  compiled = []
  for p in patterns:
    if not isinstance(p, str):
      raise LotteryError(f"{field}: patterns must be regex strings (got "
                         f"{p!r})")
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise LotteryError(f"{field}: invalid regex {p!r} ({e})") from None
  return compiled


def make_mask(params: PyTree, prunable: Sequence[str] = DEFAULT_PRUNABLE,
              *, field: str = "pruning.prunable") -> Mask:
  """An all-kept mask over the leaves whose path fully matches a pattern.

  Args:
    params: parameter pytree (e.g. a Flax `variables['params']`).
    prunable: regexes over '/'-joined parameter paths ('fc1/kernel'); a leaf
      is prunable if any pattern matches its whole path (`re.fullmatch`).
    field: config field named in errors.

  Returns:
    A mask: numpy bool ones for prunable leaves, None elsewhere.

  Raises:
    LotteryError: if a pattern is invalid or no parameter matches any pattern.
  """
  # Host: no device op.
  return jax.tree.map(
      lambda p, hit: np.ones(np.shape(p), dtype=np.bool_) if hit else None,
      params, matching(params, prunable, field=field))


def matching(params: PyTree, patterns: Sequence[str], *, field: str
             ) -> PyTree:
  """{leaf: whether its '/'-joined path fully matches one of `patterns`}
  (Python bools, params' structure).

  Raises:
    LotteryError: naming `field` if a pattern is invalid or no parameter
      matches any pattern.
  """
  compiled = compile_patterns(patterns, field)
  hits = jax.tree_util.tree_map_with_path(
      lambda path, _: any(r.fullmatch(path_str(path)) for r in compiled),
      params)
  if not any(jax.tree.leaves(hits)):
    names = ", ".join(named_leaves(params))
    raise LotteryError(f"{field}: patterns {tuple(patterns)!r} match no "
                       f"parameter (parameters: {names})")
  return hits


def _describe(x) -> str:
  """A short description of a value that is not the pytree it should be."""
  if isinstance(x, (list, tuple)):
    return f"a {type(x).__name__} of {len(x)}"
  if isinstance(x, Mapping):
    return f"a {type(x).__name__} with keys {sorted(map(str, x))}"
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return f"an array of shape {tuple(x.shape)}"
  return f"{type(x).__name__} {x!r}"[:80]


def _dtype(x):
  dtype = getattr(x, "dtype", None)
  return np.asarray(x).dtype if dtype is None else dtype


def check_mask(mask: Mask, params: PyTree, *, what: str = "mask",
               against: str = "params") -> None:
  """Raises LotteryError unless `mask` is a mask of `params`.

  A mask has the pytree structure of `params`; each of its leaves is a bool
  array of its parameter's shape, or None (not prunable; a None may also
  stand for a whole subtree of `params`). Only structure, shapes and dtypes
  are read, so this works on tracers at trace time and costs a compiled
  function nothing at run time.

  Args:
    mask: the mask to check (None: no mask, always fine).
    params: the pytree it masks (params, gradients, updates).
    what: the argument named in errors ('mask').
    against: what `params` is called in errors ('params').

  Raises:
    LotteryError: e.g. "mask: leaf 'fc1/kernel' has shape (1, 500), params
      have (40, 500)"; for a missing or extra leaf, a non-bool dtype, or a
      mask that is not a pytree like `params` (a list, a scalar).
  """
  if mask is None:
    return
  plural = against.endswith("s")
  have, are = ("have", "are") if plural else ("has", "is")
  flat, treedef = jax.tree_util.tree_flatten_with_path(mask, is_leaf=_is_none)

  def not_a_mask():
    return LotteryError(
        f"{what}: must have the pytree structure of {against} (a bool array "
        f"or None per leaf, e.g. from lottery.make_mask), got "
        f"{_describe(mask)} where {against} {are} {_describe(params)}")

  try:
    under = treedef.flatten_up_to(params)
  except (ValueError, TypeError):
    under = None
  if under is None:
    if (treedef.num_leaves == 1 and not flat[0][0]) or \
        type(mask) is not type(params):
      raise not_a_mask()
    mnames = {path_str(p): m for p, m in flat}
    pnames = list(named_leaves(params))
    covered = lambda q: q in mnames or any(
        m is None and q.startswith(k + "/") for k, m in mnames.items())
    missing = [q for q in pnames if not covered(q)]
    extra = [k for k in mnames if k not in pnames and not any(
        q.startswith(k + "/") for q in pnames)]
    if not (missing or extra):  # Same names, other containers.
      raise not_a_mask()
    raise LotteryError(f"{what}: leaves differ from those of {against} "
                       f"({differing(missing, extra)})")
  for (path, m), p in zip(flat, under):
    if m is None:
      continue
    name = path_str(path)
    if isinstance(p, (Mapping, list, tuple)) or p is None:
      if not name:
        raise not_a_mask()
      raise LotteryError(f"{what}: leaf {name!r} is not None where {against} "
                         f"{have} {_describe(p)}")
    if not hasattr(m, "shape") and not isinstance(m, (bool, np.bool_)):
      raise LotteryError(f"{what}: leaf {name!r} must be a bool array or "
                         f"None, got {_describe(m)}")
    if np.shape(m) != np.shape(p):
      raise LotteryError(f"{what}: leaf {name!r} has shape {np.shape(m)}, "
                         f"{against} {have} {np.shape(p)}")
    if _dtype(m) != np.bool_:
      raise LotteryError(f"{what}: leaf {name!r} has dtype {_dtype(m)}, "
                         f"must be bool")


def apply_mask(mask: Mask | None, tree: PyTree) -> PyTree:
  """Zeroes the pruned entries of `tree` (params, gradients, updates).

  Works inside and outside `jit`. Leaves whose mask is None pass through; a
  mask of None returns `tree` unchanged.

  Raises:
    LotteryError: if `mask` is not a mask of `tree` (`check_mask`: structure,
      shapes, bool dtype; checked when traced, at no run-time cost).
  """
  if mask is None:
    return tree
  check_mask(mask, tree, against="the tree")
  return jax.tree.map(
      lambda m, x: x if m is None else jnp.where(m, x, jnp.zeros_like(x)),
      mask, tree, is_leaf=_is_none)


def prunable_names(mask: Mask) -> list[str]:
  """Paths of the prunable leaves, in tree order."""
  return [k for k, m in named_leaves(mask).items() if m is not None]


def counts(mask: Mask) -> dict[str, tuple[int, int]]:
  """{path: (kept, total)} for every prunable leaf."""
  out = {}
  for name, m in named_leaves(mask).items():
    if m is not None:
      m = np.asarray(m)
      out[name] = (int(m.sum()), int(m.size))
  return out


def density(mask: Mask) -> float:
  """Fraction of prunable weights kept, over all prunable leaves."""
  c = counts(mask).values()
  return sum(k for k, _ in c) / sum(t for _, t in c)


def layer_densities(mask: Mask) -> dict[str, float]:
  """{path: fraction kept} for every prunable leaf."""
  return {k: kept / total for k, (kept, total) in counts(mask).items()}


def differing(missing: list, extra: list,
              words: tuple[str, str] = ("missing", "unexpected")) -> str:
  """'missing [...], unexpected [...]' for an error, each part only where
  it lists something."""
  return ", ".join(f"{w} {v}" for w, v in zip(words, (missing, extra)) if v)


def check_compatible(mask: Mask, params: PyTree, *, what: str = "mask") -> None:
  """Raises LotteryError unless `mask` fits `params` leaf for leaf."""
  ps = {k: np.shape(v) for k, v in named_leaves(params).items()}
  ms = named_leaves(mask)
  if set(ms) != set(ps):
    missing = sorted(set(ps) - set(ms))
    extra = sorted(set(ms) - set(ps))
    raise LotteryError(f"{what}: parameter paths differ from the model's "
                       f"({differing(missing, extra)})")
  for k, m in ms.items():
    if m is not None and np.shape(m) != ps[k]:
      raise LotteryError(f"{what}: {k} has shape {np.shape(m)} but the "
                         f"model's is {ps[k]}")
