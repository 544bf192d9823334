"""Mask pytrees: which parameters are prunable, applying masks, densities.

A mask has the structure of the params it masks. A prunable leaf holds a boolean
array of the parameter's shape (True = kept); a leaf that is not prunable holds
None. Masks are always passed to compiled functions as arguments, never closed
over, so a new mask never recompiles anything.

Density = kept / total over prunable weights; sparsity = 1 - density.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
  patterns = compile_patterns(prunable, field)

  def leaf_mask(path, p):
    name = path_str(path)
    if any(r.fullmatch(name) for r in patterns):
      return np.ones(np.shape(p), dtype=np.bool_)  # Host: no device op.
    return None

  mask = jax.tree_util.tree_map_with_path(leaf_mask, params)
  if not any(m is not None for m in jax.tree.leaves(mask, is_leaf=_is_none)):
    names = ", ".join(named_leaves(params))
    raise LotteryError(f"{field}: patterns {tuple(prunable)!r} match no "
                       f"parameter (parameters: {names})")
  return mask


def apply_mask(mask: Mask | None, tree: PyTree) -> PyTree:
  """Zeroes the pruned entries of `tree` (params, gradients, updates).

  Works inside and outside `jit`. Leaves whose mask is None pass through; a
  mask of None returns `tree` unchanged.
  """
  if mask is None:
    return tree
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


def check_compatible(mask: Mask, params: PyTree, *, what: str = "mask") -> None:
  """Raises LotteryError unless `mask` fits `params` leaf for leaf."""
  ps = {k: np.shape(v) for k, v in named_leaves(params).items()}
  ms = named_leaves(mask)
  if set(ms) != set(ps):
    missing = sorted(set(ps) - set(ms))
    extra = sorted(set(ms) - set(ps))
    raise LotteryError(f"{what}: parameter paths differ from the model's "
                       f"(missing {missing}, unexpected {extra})")
  for k, m in ms.items():
    if m is not None and np.shape(m) != ps[k]:
      raise LotteryError(f"{what}: {k} has shape {np.shape(m)} but the "
                         f"model's is {ps[k]}")
