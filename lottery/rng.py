"""Random streams: one key per (seed, use, index), never shared.

Every random draw of an experiment beyond the init and data seeds (controls,
random scores, random masks, ...) takes its key from `stream(seed, use,
*index)`: the use's tag is folded in first and the indices after it, so two
different uses never share a key, and neither do two rounds of one use.
"""

from __future__ import annotations

import jax

# One tag per use; append new uses, never renumber.
USES = ("reinit", "random_prune", "random_score", "shuffle", "mask_init",
        "mask_update", "pai_batch", "pai_score")


def stream(seed: int, use: str, *index: int) -> jax.Array:
  """The key of `use` at `index` (e.g. the round) under `seed`."""
  key = jax.random.fold_in(jax.random.key(seed), USES.index(use))
  for i in index:
    key = jax.random.fold_in(key, i)
  return key
