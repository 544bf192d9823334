"""Importance scores: a registry of functions params -> score pytree.

Higher score = more important. Pruning removes the lowest-scoring surviving
weights (see `lottery.pruning`). A score function takes `(params, key)` and
returns a pytree of float arrays with the params' structure; scores of
non-prunable leaves are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lottery.errors import LotteryError

ScoreFn = Callable[[Any, jax.Array], Any]
_SCORES: dict[str, ScoreFn] = {}


def register(name: str):
  """Decorator registering a score function under `name`."""
  def deco(fn: ScoreFn) -> ScoreFn:
    _SCORES[name] = fn
    return fn
  return deco


def names() -> list[str]:
  return sorted(_SCORES)


def get(name: str, *, field: str = "pruning.score") -> ScoreFn:
  if name not in _SCORES:
    raise LotteryError(f"{field}: unknown score {name!r} (known: {names()})")
  return _SCORES[name]


@register("magnitude")
def magnitude(params, key=None):
  """|w|: the score of magnitude pruning (Frankle & Carbin 2019)."""
  del key
  return jax.tree.map(jnp.abs, params)


@register("random")
def random(params, key):
  """Uniform random scores: random pruning, seeded by `key`."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.uniform(k, jnp.shape(p)) for k, p in zip(keys, leaves)])
