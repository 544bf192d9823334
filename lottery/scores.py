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

from lottery.registry import Registry

ScoreFn = Callable[[Any, jax.Array], Any]
_SCORES = Registry("score", "pruning.score")
register = _SCORES.register
names = _SCORES.names
get = _SCORES.get


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
