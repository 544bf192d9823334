"""Random streams: one key per (seed, use, index), never shared.

Every random draw of an experiment beyond the init and data seeds (controls,
random scores, random masks, ...) takes its key from `stream(seed, use,
*index)`: the use's tag is folded in first and the indices after it, so two
different uses never share a key, and neither do two rounds of one use.

`flat(key)` is the same key for draws that compile fast: XLA on the CPU
compiles threefry over a rank-4 shape (a conv kernel's initializer) about ten
times slower than over a vector (ResNet-20's initializer: 11 s against 2 s),
so a flat key draws the vector and reshapes it -- the same bits, as
threefry's counters are the row-major flat index.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.extend.random
import numpy as np

# One tag per use; append new uses, never renumber.
USES = ("reinit", "random_prune", "random_score", "shuffle", "mask_init",
        "mask_update", "pai_batch", "pai_score", "imp_batch")


_THREEFRY = jax.extend.random.threefry_prng_impl


def _flat_bits(key_data, bit_width: int, shape: tuple[int, ...]):
  return _THREEFRY.random_bits(key_data, bit_width,
                               (math.prod(shape),)).reshape(shape)


# Threefry, but every draw is of a vector, reshaped: bit-identical draws to
# jax.random's default keys (tested), in either of JAX's threefry modes.
FLAT_THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=_THREEFRY.key_shape, seed=_THREEFRY.seed,
    split=_THREEFRY.split, random_bits=_flat_bits,
    fold_in=_THREEFRY.fold_in, name="threefry2x32_flat", tag="fryflat")


def flat(key: jax.Array) -> jax.Array:
  """A default (threefry) `key` as a `FLAT_THREEFRY` key: the same key data,
  splits, folds and draws, with programs that compile faster (see above).
  Works inside `jit`."""
  return jax.random.wrap_key_data(jax.random.key_data(key),
                                  impl=FLAT_THREEFRY)


def key(seed: int) -> jax.Array:
  """`jax.random.key(seed)`, compiled once (0 <= seed < 2**31)."""
  return _key(np.int32(seed))


_key = jax.jit(jax.random.key)


def stream(seed: int, use: str, *index: int | float | str) -> jax.Array:
  """The key of `use` at `index` (e.g. the round) under `seed`.

  seed: 0 <= seed < 2**31 (the config's seeds are). index: values that name
  the draw -- integers (a round) as themselves, strings and floats (a method,
  a density) by a hash of their value (`index_value`), so that a key never
  depends on where a value sits in a config's tuple. use: one of `USES` (by
  its position there) or any other name, e.g. a registered control's (by
  `index_value` of the name).
  """
  use_id = USES.index(use) if use in USES else index_value(use)
  return _stream(np.int32(seed), np.int32(use_id),
                 np.asarray([index_value(v) for v in index], np.int32))


def index_value(value: int | float | str) -> int:
  """An index of `stream` as an int32: an integer as itself, a string or a
  float as the CRC-32 of its repr (31 bits; floats as Python floats, so
  0.1 and np.float64(0.1) agree)."""
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
  elif not isinstance(value, str):
    raise TypeError(f"index: must be an int, float or str (got {value!r})")
  return zlib.crc32(repr(value).encode()) & 0x7FFFFFFF


@jax.jit
def _stream(seed, tag, index):
  # One compiled call per number of indices: op by op, the folds were a
  # handful of programs per draw.
  key = jax.random.fold_in(jax.random.key(seed), tag)
  for i in range(index.shape[0]):
    key = jax.random.fold_in(key, index[i])
  return key
