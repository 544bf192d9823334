"""How many weights a prune keeps, and which: the one rounding rule and the
exact top-k, on the host and on the device.

The one rounding rule. Removing a fraction p of n weights removes

  round(p * n), halves rounded up: floor(p * n + 1/2),

with p taken at its exact decimal value (`exact`: the float 0.2 is 1/5, not
0.2000000000000000111; an exact `Fraction` is taken as it is), so 0.2 *
235200 is exactly 47040. Keeping a density d of n weights keeps n - round((1
- d) * n) by the same rule on the sparsity 1 - d, taken exactly (density 0.1
of 1000 weights keeps exactly 100). Every count in the framework goes through
it: IMP's rounds and PaI's (`pruning.prune`, `num_to_remove`), the per-layer
counts of `distributions` (`num_to_keep`), the drop counts of SET/RigL and the
keep counts of GMP's cubic schedule (`sparse_updates`). After k rounds at rate
p a layer keeps the nearest whole number to (1 - p)^k of its weights, up to a
weight per round; this reproduces the weights-remaining figures Frankle &
Carbin 2019 report for LeNet (51.3% after 3 rounds ... 1.9% after 18), where
OpenLTH's rule drifts below them (1.8% after 18): it keeps the weights above
the (ceil(p n) + 1)-th smallest, removing ceil(p n) + 1 a round.

Host and device. `num_to_remove` computes the rule in exact rational
arithmetic on the host. `device_num_to_remove` (and `counts_on_device`, many
rates at once) computes the same integers for an int32 count that may be a
tracer, inside `jax.jit` / `jax.vmap`, with no float64 and no int64: integer
long division in 16-bit limbs against per-rate constants computed exactly on
the host (`rate_constants`). They agree for every rate and every n < 2**31.

Which weights (exact top-k). `mark_lowest` marks, per group of leaves laid out
as one array (`Layout`), a given number of the lowest-scoring survivors:
scores ranked as float32 (exact for float32, bfloat16 and float16 scores, and
for integers up to 2**24; -0.0 ties with 0.0; a NaN counts as -inf) through
order-preserving uint32 keys, a 32-step bisection for the threshold (32
passes over the weights, no sort), and ties at the threshold broken by
position: the weight earlier in tree order (leaf, then row-major flat index)
goes first. Weights already pruned are never among the lowest, so a pruned
weight never comes back. `keep_top_core` keeps exact counts per leaf with it,
counts that may be traced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_LIMB_BITS = 16  # limbs of 16 bits in int32 leave room for carries and signs
_DEAD = 0xFFFFFFFF  # sort key of a weight already pruned: above every survivor


def exact(x: float | Fraction) -> Fraction:
  """`x` at its exact decimal value: Fraction(repr(float(x))); a Fraction is
  returned as it is."""
  if isinstance(x, Fraction):
    return x
  return Fraction(repr(float(x)))


def round_half_up(x: Fraction | int) -> int:
  """The rule on an exact value: floor(x + 1/2)."""
  return math.floor(x + Fraction(1, 2))


def num_to_remove(fraction: float | Fraction, surviving: int) -> int:
  """How many of `surviving` weights a prune at rate `fraction` removes:
  round(exact(fraction) * surviving), halves up."""
  return round_half_up(exact(fraction) * surviving)


def num_to_keep(density: float | Fraction, n: int) -> int:
  """Weights kept of `n` at `density`: n - round((1 - density) n), halves
  up on the removed count, with 1 - density taken exactly."""
  return n - num_to_remove(1 - exact(density), n)


def _split_limbs(x: int, num: int) -> list[int]:
  """`x` as `num` little-endian 16-bit limbs."""
  mask = (1 << _LIMB_BITS) - 1
  return [(x >> (_LIMB_BITS * j)) & mask for j in range(num)]


def _limbs_sub(acc: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(acc - c mod base**L, acc >= c) for limb stacks acc (L, ...) and c (L,)."""
  borrow, out = 0, []
  for j in range(acc.shape[0]):
    t = acc[j] - c[j] - borrow
    borrow = (t < 0).astype(jnp.int32)
    out.append(t + (borrow << _LIMB_BITS))
  return jnp.stack(out), borrow == 0


def _limbs_add(acc: jax.Array, c: jax.Array) -> jax.Array:
  """acc + c for limb stacks, dropping a carry out of the top limb."""
  carry, out = 0, []
  for j in range(acc.shape[0]):
    t = acc[j] + c[j] + carry
    carry = t >> _LIMB_BITS
    out.append(t & ((1 << _LIMB_BITS) - 1))
  return jnp.stack(out)


class RateConstants(NamedTuple):
  """Per-rate constants of the exact count (see `device_num_to_remove`).

  For p = a / b and M = 2b: q[g, i], r[g, i] = divmod(2a 2^i, M), and in
  16-bit limbs r, d = M - r and b. Host numpy arrays passed to the compiled
  function as arguments, so a new rate does not recompile it.
  """
  q: np.ndarray  # (G, 31) int32
  r: np.ndarray  # (31, L, G) int32 limbs
  d: np.ndarray  # (31, L, G) int32 limbs
  b: np.ndarray  # (L, G) int32 limbs


def rate_constants(rates: Sequence[float]) -> RateConstants:
  """`RateConstants` of the exact rates `exact(rate)`."""
  fracs = [exact(rate) for rate in rates]
  # At least 4 limbs (any denominator below 2**63) so that the usual rates
  # share one compiled function; more only where a denominator needs them.
  num = max([4] + [-(-(2 * f.denominator).bit_length() // _LIMB_BITS)
                   for f in fracs])
  q, r, d, b = [], [], [], []
  for f in fracs:
    a, m = f.numerator, 2 * f.denominator
    qr = [divmod(a << (i + 1), m) for i in range(31)]
    q.append([qi for qi, _ in qr])
    r.append([_split_limbs(ri, num) for _, ri in qr])
    d.append([_split_limbs(m - ri, num) for _, ri in qr])
    b.append(_split_limbs(f.denominator, num))
  return RateConstants(
      np.asarray(q, np.int32), np.asarray(r, np.int32).transpose(1, 2, 0),
      np.asarray(d, np.int32).transpose(1, 2, 0),
      np.asarray(b, np.int32).T)


def counts_on_device(consts: RateConstants, n: jax.Array) -> jax.Array:
  """round(p_g * n[g]), halves up, exactly, for int32 n (G,) >= 0.

  With p = a / b exactly, the count is floor((2an + b) / 2b). Writing
  n = sum_i n_i 2^i (31 bits) and 2a 2^i = q_i 2b + r_i, the count is
  sum_i n_i q_i plus the whole multiples of 2b in sum_i n_i r_i + b. That
  sum is accumulated modulo 2b in 16-bit limbs and every wrap adds one; each
  limb stays below 2^17 and the integer part is at most p * n < 2^31, so
  int32 suffices for any n < 2^31 and any denominator.
  """
  xs = (jnp.arange(31, dtype=jnp.int32), jnp.asarray(consts.q).T,
        consts.r, consts.d)

  def step(carry, x):
    whole, acc = carry
    i, qi, ri, di = x
    bit = ((n >> i) & 1) == 1
    wrapped, wraps = _limbs_sub(acc, di)  # acc + r_i >= 2b  <=>  acc >= d_i
    new = jnp.where(wraps, wrapped, _limbs_add(acc, ri))
    acc = jnp.where(bit, new, acc)
    whole = whole + jnp.where(bit, qi + wraps.astype(jnp.int32), 0)
    return (whole, acc), None

  init = (jnp.zeros_like(n), jnp.zeros(consts.b.shape[:1] + n.shape, jnp.int32))
  (whole, acc), _ = lax.scan(step, init, xs)
  _, half_up = _limbs_sub(acc, consts.b)
  return whole + half_up.astype(jnp.int32)


def device_num_to_remove(fraction: float | Fraction,
                         surviving: jax.Array) -> jax.Array:
  """`num_to_remove(fraction, n)` elementwise for an int32 array, traced or not.

  Args:
    fraction: rate in [0, 1], a static Python number (or Fraction).
    surviving: int32 array of survivor counts n, 0 <= n < 2**31.

  Returns:
    int32 array of `surviving`'s shape: round(fraction * n), halves up.
  """
  n = jnp.asarray(surviving, jnp.int32)
  return counts_on_device(rate_constants([fraction]),
                          n.reshape(-1)).reshape(n.shape)


def _sort_keys(scores: jax.Array, alive: jax.Array) -> jax.Array:
  """uint32 keys (of `scores`' shape) whose unsigned order is the scores'.

  Survivors' NaN scores become -inf and -0.0 becomes 0.0; pruned weights get
  `_DEAD`, above the key of +inf, so they are never among the lowest.
  """
  s = jnp.asarray(scores).astype(jnp.float32)
  s = jnp.where(jnp.isnan(s), -jnp.inf, s)
  s = jnp.where(s == 0, jnp.float32(0), s)
  u = lax.bitcast_convert_type(s, jnp.uint32)
  key = jnp.where(u >= jnp.uint32(0x80000000), ~u, u | jnp.uint32(0x80000000))
  return jnp.where(alive, key, jnp.uint32(_DEAD))


# Chunk length of `Layout`.
_CHUNK = 2048


class Layout:
  """Groups of leaves laid out as one (chunks, _CHUNK) array.

  Each group's leaves, flattened, one after another (so the layout's order
  within a group is the tie order: leaf, then flat index), padded to whole
  chunks; a per-group total is a sum over each chunk and a segment sum over
  the few thousand chunks. Every step of the ranking is then a handful of
  operations whatever the number of leaves: with reductions per leaf,
  ResNet-50's `pruning.keep_top` took 17.8 s to compile and run once on the 2-core
  CPU, this way 3.6 s; a compiled call runs at about the same speed (a
  layerwise prune of its 25M weights 1.41 s against 1.15 s, global 1.26 s
  against 1.31 s).
  """

  def __init__(self, sizes: Sequence[int], groups: Sequence[Sequence[int]]):
    self.sizes, self.groups = list(sizes), [tuple(g) for g in groups]
    self.offsets, self.pads, chunk_group, at = {}, [], [], 0
    for g, group in enumerate(self.groups):
      n = 0
      for j in group:
        self.offsets[j] = at + n
        n += self.sizes[j]
      chunks = max(1, -(-n // _CHUNK))
      self.pads.append(chunks * _CHUNK - n)
      chunk_group += [g] * chunks
      at += chunks * _CHUNK
    self.chunk_group = np.asarray(chunk_group, np.int32)
    # Each group's first chunk.
    self.first = np.searchsorted(self.chunk_group, np.arange(len(groups)))

  def pack(self, leaves: Sequence[jax.Array], fill) -> jax.Array:
    pieces = []
    for group, pad in zip(self.groups, self.pads):
      pieces += [jnp.reshape(leaves[j], -1) for j in group]
      if pad:
        pieces.append(jnp.full((pad,), fill, jnp.asarray(leaves[0]).dtype))
    return jnp.concatenate(pieces).reshape(-1, _CHUNK)

  def unpack(self, packed: jax.Array, shapes) -> list[jax.Array]:
    flat = packed.reshape(-1)
    return [flat[self.offsets[j]:self.offsets[j] + self.sizes[j]].reshape(
        shapes[j]) for j in range(len(self.sizes))]

  def per_group(self, per_chunk: jax.Array) -> jax.Array:
    return jax.ops.segment_sum(per_chunk, self.chunk_group,
                               num_segments=len(self.groups),
                               indices_are_sorted=True)

  def spread(self, v: jax.Array) -> jax.Array:
    """(groups,) -> (chunks, 1): each chunk its group's value."""
    return v[self.chunk_group][:, None]

  def count(self, x: jax.Array) -> jax.Array:
    """Per group, the True entries of a packed bool array."""
    return self.per_group(jnp.sum(x, axis=1, dtype=jnp.int32))


def mark_lowest(layout: Layout, keys: jax.Array,
                counts: jax.Array) -> jax.Array:
  """Marks, per group of the packed `keys`, its `counts[g]` lowest keys.

  Ties go to the earlier position in group order (leaf, then flat index). A
  count <= 0 marks nothing. The threshold key t_g (the counts[g]-th lowest:
  the largest t with fewer than counts[g] keys below it) is found by
  bisection, 32 reductions over the keys; when only some of the keys equal
  to t_g go, a running count in group order picks the first ones.
  """
  spread = layout.spread

  def step(i, t):
    trial = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(layout.count(keys < spread(trial)) < counts, trial, t)

  t = lax.fori_loop(0, 32, step, jnp.zeros(len(layout.groups), jnp.uint32))
  need = counts - layout.count(keys < spread(t))  # keys equal to t_g to go
  eq = keys == spread(t)
  in_chunk = jnp.sum(eq, axis=1, dtype=jnp.int32)
  ties = layout.per_group(in_chunk)

  def first_ties():
    # Equal keys before each one in its group: those of the group's earlier
    # chunks, then those before it in its own chunk.
    before = jnp.cumsum(in_chunk) - in_chunk
    before = before - before[layout.first][layout.chunk_group]
    rank = before[:, None] + jnp.cumsum(eq, axis=1, dtype=jnp.int32) - eq
    return eq & (rank < spread(need))

  def all_ties():
    return eq & spread(need > 0)

  # Ties at the threshold rarely need splitting on real scores: skip the
  # running count unless some group needs it.
  take = lax.cond(jnp.any((need > 0) & (need < ties)), first_ties, all_ties)
  return (keys < spread(t)) | take


def packed(alive, scores, groups):
  """(layout, packed alive, packed keys, packed scores' finiteness)."""
  alive = [jnp.asarray(a).astype(bool) for a in alive]
  layout = Layout([int(np.size(a)) for a in alive], groups)
  live = layout.pack(alive, False)
  s = layout.pack([jnp.asarray(x).astype(jnp.float32) for x in scores], 0.0)
  return layout, live, _sort_keys(s, live), jnp.all(jnp.isfinite(s) | ~live)


def keep_top_core(alive: Sequence[jax.Array], scores: Sequence[jax.Array],
                  keep: jax.Array):
  """`pruning.keep_top` on lists of leaves, traceable with traced counts.

  Keeps keep[j] highest-scoring survivors of leaf j (ties as above);
  returns (new leaves, survivors per leaf, whether the survivors' scores are
  all finite). For code that runs inside a compiled step (sparse training's
  mask updates); `pruning.keep_top` checks its arguments and calls this.
  """
  groups = tuple((j,) for j in range(len(alive)))
  layout, live, keys, finite = packed(alive, scores, groups)
  n = layout.count(live)
  new = live & ~mark_lowest(layout, keys, n - keep)
  return layout.unpack(new, [np.shape(a) for a in alive]), n, finite
